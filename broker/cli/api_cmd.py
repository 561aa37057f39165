"""`jitgate api`: serve the broker's HTTP API (uvicorn) from a config file.

The process owns the store: it opens it before the first request and closes it after the
last, on SIGINT/SIGTERM. Deployments run it beside `jitgate proxy` (and `jitgate worker`),
each as its own process, all pointed at the same store.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from broker.config import Settings, load_settings
from broker.exceptions import ConfigError, StoreError
from broker.logging import configure_logging


def register(app: typer.Typer) -> None:
    app.command("api")(api)


def api(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Override api.host")] = None,
    port: Annotated[int | None, typer.Option(help="Override api.port")] = None,
) -> None:
    """Serve the broker API: access requests, approvals, sessions, audit, /healthz, /readyz, /metrics."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if host is not None:
        settings.api.host = host
    if port is not None:
        settings.api.port = port
    configure_logging(settings.log_level, json=settings.log_json)
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:  # e.g. a configured Redis that does not answer
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except StoreError as exc:
        typer.echo(f"store unavailable: {exc}", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        pass


async def serve(settings: Settings) -> None:
    """Open the store, serve until SIGINT/SIGTERM, close the store."""
    import uvicorn

    from broker.api.app import create_app
    from broker.audit.forward import attach_forwarder
    from broker.cli.approvals_runtime import attach_slack, open_approvals
    from broker.store import Store

    store = await Store.open(settings.store_url.get_secret_value())
    # Records this process appends (logins, access requests, approvals) reach the SIEM too.
    forwarder = attach_forwarder(store, settings.audit.sink)
    close_bus = close_slack = None
    try:
        # Decisions taken here must reach the proxy that parked the statement (Redis bus),
        # and new requests must reach Slack (Celery dispatcher), as in `jitgate proxy`.
        approvals, close_bus = await open_approvals(settings, store.approvals)
        app = create_app(settings, store, approvals_service=approvals)
        # POST /slack/events when `slack` is configured
        close_slack = attach_slack(app, settings, approvals, tokens=store.tokens, access=store.access)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.api.host,
                port=settings.api.port,
                lifespan="off",
                log_config=None,  # configure_logging already routes uvicorn's loggers
                proxy_headers=True,
            )
        )
        # uvicorn handles SIGINT/SIGTERM while it serves, then re-raises the signal: these
        # handlers receive it, so the store is closed and the exit status is 0. Installed
        # before serve(), they also stop a server that is still starting.
        def stop(_signum: int, _frame: object) -> None:
            server.should_exit = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop)
        await server.serve()
    finally:
        if close_slack is not None:
            await close_slack()
        if close_bus is not None:
            await close_bus()
        if forwarder is not None:
            await forwarder.aclose()
        await store.close()
