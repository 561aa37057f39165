"""HTTP mode: Slack POSTs events, interactions and slash commands to `/slack/events`."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from slack_bolt.adapter.fastapi.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp

EVENTS_PATH = "/slack/events"


def mount(app: FastAPI, bolt_app: AsyncApp, *, path: str = EVENTS_PATH) -> None:
    """Add `POST {path}`; the bolt app verifies signatures, so the route needs no other auth."""
    handler = AsyncSlackRequestHandler(bolt_app)

    async def slack_events(request: Request) -> Response:
        return await handler.handle(request)

    app.add_api_route(path, slack_events, methods=["POST"], include_in_schema=False, name="slack_events")
