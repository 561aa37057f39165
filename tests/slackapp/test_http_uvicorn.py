"""HTTP mode under a real uvicorn: Slack's request over TCP, acked, then the vote and chat.update."""

from __future__ import annotations

import asyncio
import json

import httpx
import uvicorn
from fastapi import FastAPI

from slackapp.app import build_app
from slackapp.client import SlackPoster, make_web_client
from slackapp.http import mount
from slackapp.settings import SlackSettings
from tests.conftest import free_port
from tests.slack_double import SlackDouble
from tests.slack_signing import SlackSigner
from tests.slackapp.fakes import InMemoryApprovals, InMemoryLedger, make_approval


async def test_signed_click_through_uvicorn(
    slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals, signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    poster = SlackPoster(make_web_client(settings), ledger=InMemoryLedger())
    ts = (await poster.post_prompt(approval, settings.channel)).ts
    api = FastAPI()
    mount(api, build_app(settings, approvals))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           log_config=None))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        request = signer.block_actions(user_id="U_BOB", action_id="jitgate_approve", value=approval.id,
                                       channel="C_APPROVALS", message_ts=ts)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            response = await http.post("/slack/events", content=request.body, headers=request.headers)
            assert response.status_code == 200
            forged = await http.post("/slack/events", content=request.body.replace(b"U_BOB", b"U_EVE"),
                                     headers=request.headers)
            assert forged.status_code == 401
        (update,) = await slack.wait_for_async("chat.update")
        assert "Approved* by bob@example.com" in json.dumps(update.args["blocks"])
        assert approvals.votes == [(approval.id, "person:bob@example.com", "approve", None)]
    finally:
        server.should_exit = True
        await task
