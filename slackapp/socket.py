"""Socket Mode: the app dials out to Slack over a websocket; no public URL is needed.

The websocket URL comes from `apps.connections.open` on the configured API base URL (so
GovSlack works); requests arriving over it are authenticated by the app-level token rather
than by signatures.
"""

from __future__ import annotations

from pydantic import SecretStr
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient


def socket_mode_handler(bolt_app: AsyncApp, app_token: SecretStr | str) -> AsyncSocketModeHandler:
    token = app_token.get_secret_value() if isinstance(app_token, SecretStr) else app_token
    if not token.startswith("xapp-"):
        raise ValueError("Socket Mode needs an app-level token (xapp-...)")
    # apps.connections.open must go to the same API host as the bot's calls.
    web_client = AsyncWebClient(token=token, base_url=bolt_app.client.base_url)
    handler = AsyncSocketModeHandler(bolt_app, app_token=token, web_client=web_client)
    return handler


async def run_socket_mode(bolt_app: AsyncApp, app_token: SecretStr | str) -> None:
    """Connect and serve until cancelled; the websocket is closed on the way out."""
    handler = socket_mode_handler(bolt_app, app_token)
    try:
        await handler.start_async()
    finally:
        await handler.close_async()
