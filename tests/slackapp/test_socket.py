"""Socket Mode against a local websocket endpoint: the URL comes from the double's apps.connections.open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from slackapp.app import build_app
from slackapp.client import SlackPoster, make_web_client
from slackapp.settings import SlackSettings
from slackapp.socket import run_socket_mode, socket_mode_handler
from tests.conftest import free_port
from tests.slack_double import APP_TOKEN, SlackDouble
from tests.slack_signing import trigger_id
from tests.slackapp.fakes import InMemoryApprovals, InMemoryLedger, make_approval


class SocketEndpoint:
    """Plays Slack's side of a Socket Mode websocket: sends envelopes, collects the app's acks."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.url = ""

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1, "debug_info": {"host": "double"}})
        for envelope in self.envelopes:
            await ws.send_json(envelope)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await self.acks.put(json.loads(message.data))
        return ws


@pytest.fixture
async def endpoint(slack: SlackDouble) -> AsyncIterator[SocketEndpoint]:
    end = SocketEndpoint()
    app = web.Application()
    app.router.add_get("/link/", end.handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    slack.socket_url = f"ws://127.0.0.1:{port}/link/"
    yield end
    await runner.cleanup()


async def test_handler_uses_the_configured_api_url(slack: SlackDouble, settings: SlackSettings) -> None:
    handler = socket_mode_handler(build_app(settings, InMemoryApprovals({})), settings.model_copy(
        update={"app_token": APP_TOKEN}).app_token or "")
    try:
        assert handler.client.web_client.base_url == slack.base_url
        assert await handler.client.issue_new_wss_url() == f"ws://127.0.0.1:{slack.port}/link/?ticket=double"
        assert slack.last("apps.connections.open").headers["authorization"] == f"Bearer {APP_TOKEN}"
    finally:
        await handler.close_async()
    with pytest.raises(ValueError, match="app-level token"):
        socket_mode_handler(build_app(settings, InMemoryApprovals({})), "xoxb-not-an-app-token")


async def test_a_click_over_socket_mode_is_acked_and_votes(
    slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals, endpoint: SocketEndpoint,
) -> None:
    approval = approvals.add(make_approval())
    poster = SlackPoster(make_web_client(settings), ledger=InMemoryLedger())
    ts = (await poster.post_prompt(approval, settings.channel)).ts
    endpoint.envelopes.append({
        "envelope_id": "env-1", "type": "interactive", "accepts_response_payload": False,
        "payload": {
            "type": "block_actions", "team": {"id": "T0JITGATE"}, "api_app_id": "AJITGATE",
            "user": {"id": "U_ALICE"}, "trigger_id": trigger_id(),
            "container": {"type": "message", "message_ts": ts, "channel_id": "C_APPROVALS"},
            "channel": {"id": "C_APPROVALS"},
            "actions": [{"type": "button", "action_id": "jitgate_approve", "block_id": "jitgate_actions",
                         "value": approval.id, "action_ts": "1.1"}],
        },
    })
    task = asyncio.create_task(run_socket_mode(build_app(settings, approvals), APP_TOKEN))
    try:
        ack = await asyncio.wait_for(endpoint.acks.get(), 5)
        assert ack["envelope_id"] == "env-1"
        (update,) = await slack.wait_for_async("chat.update")
        assert update.args["ts"] == ts and "Approved* by alice@example.com" in json.dumps(update.args["blocks"])
        assert approvals.votes == [(approval.id, "person:alice@example.com", "approve", None)]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
