"""`jitgate token ...`: mint and revoke gateway tokens, make API bearer tokens.

    jitgate token issue --resource demo --role readwrite --principal agent:demo \
        --group ai-agents --ttl 8h [--reusable] [--json]
    jitgate token revoke TOKEN_ID
    jitgate token new-api

`issue` prints the token on stdout exactly once (nothing else goes to stdout without
`--json`), so `TOKEN=$(jitgate token issue ...)` works; details go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path
from typing import Annotated

import typer

from broker.config import Settings, hash_api_token, load_settings
from broker.durations import parse_duration
from broker.exceptions import ConfigError, StoreError
from broker.store import IssuedToken, Store

token_app = typer.Typer(help="Gateway tokens and API tokens.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@token_app.command("issue")
def issue(
    resource: Annotated[str, typer.Option(help="Resource the token is valid for")],
    role: Annotated[str, typer.Option(help="Database role granted")],
    principal: Annotated[str, typer.Option(help="Who holds the token, e.g. agent:ci-bot")],
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="Group of the holder (repeatable)")
    ] = None,
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 8h, 1d")] = "1h",
    reusable: Annotated[
        bool, typer.Option(help="Valid for any number of sessions (default: one session)")
    ] = False,
    owner: Annotated[
        str | None, typer.Option(help="For an agent: the person it acts for, e.g. person:dave@example.com")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object")] = False,
    config: ConfigOption = None,
) -> None:
    """Mint a gateway token and print it once."""
    settings = _settings(config)
    if resource not in settings.resources:
        known = ", ".join(sorted(settings.resources)) or "none configured"
        typer.echo(f"unknown resource {resource!r} (known: {known})", err=True)
        raise typer.Exit(2)
    try:
        lifetime = parse_duration(ttl)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    async def run() -> IssuedToken:
        store = await Store.open(settings.store_url.get_secret_value())
        try:
            return await store.tokens.issue_token(
                principal, group or [], resource, role, lifetime, reusable, owner=owner
            )
        finally:
            await store.close()

    try:
        issued = asyncio.run(run())
    except StoreError as exc:
        typer.echo(f"store error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "token_id": issued.token_id,
                    "token": issued.token,
                    "expires_at": issued.expires_at.isoformat(),
                    "resource": resource,
                    "role": role,
                    "principal": principal,
                    "owner": owner,
                    "groups": group or [],
                    "reusable": reusable,
                }
            )
        )
        return
    typer.echo(
        f"token {issued.token_id} for {principal}{f' acting for {owner}' if owner else ''} on {resource} as {role}, "
        f"expires {issued.expires_at.isoformat()}; it is shown only now:",
        err=True,
    )
    typer.echo(issued.token)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="Token id printed by `issue`")],
    config: ConfigOption = None,
) -> None:
    """Revoke a gateway token (sessions already open are not cut)."""
    settings = _settings(config)

    async def run() -> bool:
        store = await Store.open(settings.store_url.get_secret_value())
        try:
            return await store.tokens.revoke_token(token_id)
        finally:
            await store.close()

    try:
        revoked = asyncio.run(run())
    except StoreError as exc:
        typer.echo(f"store error: {exc}", err=True)
        raise typer.Exit(1) from None
    if not revoked:
        typer.echo(f"no live token {token_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {token_id}", err=True)


@token_app.command("new-api")
def new_api() -> None:
    """Make an API bearer token: prints the token, and its digest for `api.tokens`."""
    token = "jga_" + secrets.token_urlsafe(32)
    typer.echo(f"token:  {token}")
    typer.echo(f"digest: {hash_api_token(token)}   # add to api.tokens")
