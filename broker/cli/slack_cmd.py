"""`jitgate slack --socket-mode`: the Slack app over Socket Mode (no public URL needed).

In HTTP mode there is nothing to run: `jitgate api` serves POST /slack/events when `slack`
is configured.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("slack")(slack)


def slack(
    socket_mode: Annotated[bool, typer.Option("--socket-mode", help="Connect to Slack over Socket Mode")] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False)
    ] = None,
) -> None:
    """Run the Slack app in Socket Mode (HTTP mode is served by `jitgate api` at /slack/events)."""
    from broker.config import load_settings
    from broker.exceptions import ConfigError

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if not socket_mode:
        typer.echo("HTTP mode is served by `jitgate api` at POST /slack/events; use --socket-mode here", err=True)
        raise typer.Exit(2)
    if settings.slack is None or settings.slack.app_token is None:
        typer.echo("slack.app_token: Socket Mode needs an app-level token (xapp-...)", err=True)
        raise typer.Exit(2)
    try:
        asyncio.run(_serve(settings))
    except KeyboardInterrupt:
        pass


async def _serve(settings: object) -> None:
    from broker.cli.approvals_runtime import open_approvals
    from broker.config import Settings
    from broker.store import Store
    from slackapp.actions import BrokerActions
    from slackapp.app import build_app
    from slackapp.socket import run_socket_mode

    assert isinstance(settings, Settings) and settings.slack is not None and settings.slack.app_token is not None
    store = await Store.open(settings.store_url.get_secret_value())
    approvals, close_bus = await open_approvals(settings, store.approvals)
    try:
        actions = BrokerActions(approvals, settings, tokens=store.tokens, access=store.access)
        await run_socket_mode(build_app(settings.slack, actions), settings.slack.app_token)
    finally:
        await close_bus()
        await store.close()
