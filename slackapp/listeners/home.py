"""The App Home tab: what waits for the viewer's approval (with buttons) and their own requests."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from slackapp.listeners.votes import VoteDesk


def register(app: AsyncApp, desk: VoteDesk) -> None:
    async def home_opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        # Events are acked by bolt before the listener runs.
        if event.get("tab", "home") != "home":
            return
        await desk.publish_home(client, str(event["user"]))

    app.event("app_home_opened")(home_opened)
