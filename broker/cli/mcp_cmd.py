"""`jitgate mcp`: serve the MCP tools to an agent (stdio, or streamable HTTP with --http).

    jitgate mcp --config jitgate.yaml [--http 127.0.0.1:8765] [--token-file FILE]
                [--gateway HOST:PORT] [--resource NAME ...] [--api-url URL] [--intent TEXT]

The server is a client of the jitgate proxy: it connects with the agent's gateway token, so
everything it runs is judged, masked, parked and recorded like any wire client's statement.
The token comes from JITGATE_GATEWAY_TOKEN (every resource), JITGATE_GATEWAY_TOKEN_<RESOURCE>
or `--token-file` (one token, or a JSON object {resource: token}); never from argv. The broker
API bearer for `request_access` and approval details is JITGATE_TOKEN. Settings: the `mcp:`
section of the config (see `broker.mcp.settings`). With stdio, stdout carries the protocol:
logs go to stderr. Streamable HTTP listens on loopback only: the server has no authentication of
its own, and whoever reaches it acts with the agent's grant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from broker.config import Settings, is_loopback, load_settings
from broker.exceptions import ConfigError
from broker.logging import configure_logging


def register(app: typer.Typer) -> None:
    app.command("mcp")(mcp)


def _hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        typer.echo(f"{what}: expected HOST:PORT, got {value!r}", err=True)
        raise typer.Exit(2)
    return host or "127.0.0.1", int(port)


def read_tokens(token_file: Path | None, resources: list[str]) -> tuple[dict[str, str], str | None]:
    """Per-resource tokens and a default one, from the environment and the token file."""
    tokens: dict[str, str] = {}
    default = os.environ.get("JITGATE_GATEWAY_TOKEN") or None
    for name in resources:
        value = os.environ.get(f"JITGATE_GATEWAY_TOKEN_{name.upper().replace('-', '_')}")
        if value:
            tokens[name] = value
    if token_file is not None:
        text = token_file.read_text().strip()
        if text.startswith("{"):
            data = json.loads(text)
            tokens.update({str(k): str(v) for k, v in data.items() if v})
        elif text:
            default = text
    return tokens, default


def mcp(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)")
    ] = None,
    http: Annotated[
        str | None, typer.Option(help="Serve streamable HTTP on HOST:PORT (path /mcp) instead of stdio")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="File with the gateway token, or a JSON object {resource: token}")
    ] = None,
    gateway: Annotated[str | None, typer.Option(help="The proxy's HOST:PORT (default: mcp.gateway_*)")] = None,
    resource: Annotated[
        list[str] | None, typer.Option(help="Offer this resource (repeatable; default: mcp.resources)")
    ] = None,
    api_url: Annotated[str | None, typer.Option(help="Broker API URL (default: mcp.api_url)")] = None,
    intent: Annotated[str | None, typer.Option(help="Intent for tool calls that state none")] = None,
) -> None:
    """Serve MCP tools (list_resources, describe_schema, query, request_access, approval_status)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, json=settings.log_json)  # stderr: stdout is the protocol
    from broker.mcp.gateway import GatewayClient
    from broker.mcp.server import build_server

    opts = settings.mcp
    if api_url is not None:
        opts.api_url = api_url
    if intent is not None:
        opts.intent = intent
    host, port = _gateway_address(settings, gateway)
    names = list(resource or opts.resources or settings.resources)
    if not names:
        typer.echo("no resources: configure resources (or mcp.resources) or pass --resource", err=True)
        raise typer.Exit(2)
    descriptions = {
        n: (settings.resources[n].description if n in settings.resources else "") for n in names
    }
    try:
        tokens, default = read_tokens(token_file, names)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot read the token file: {type(exc).__name__}", err=True)
        raise typer.Exit(2) from None
    client = GatewayClient(
        opts, host=host, port=port, resources=descriptions, tokens=tokens, default_token=default,
        api_bearer=os.environ.get("JITGATE_TOKEN") or None,
    )
    server = build_server(client)
    if http is None:
        server.run("stdio")
    else:
        http_host, http_port = _hostport(http, "--http")
        if not is_loopback(http_host):
            # Whoever reaches the port queries with the agent's grant: loopback only.
            typer.echo(f"--http: {http_host} is not a loopback address; the MCP server acts with the agent's "
                       "grant and has no authentication of its own, so it listens on loopback only", err=True)
            raise typer.Exit(2)
        server.run("streamable-http", host=http_host, port=http_port)


def _gateway_address(settings: Settings, gateway: str | None) -> tuple[str, int]:
    if gateway is not None:
        return _hostport(gateway, "--gateway")
    host = settings.mcp.gateway_host or settings.proxy.listen_host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a listen address, connected to as loopback
        host = "127.0.0.1"
    return host, settings.mcp.gateway_port or settings.proxy.listen_port
