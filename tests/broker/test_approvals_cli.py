"""`jitgate approvals` against a real API over HTTP (uvicorn), at 80 columns: whole ids in
`list`, unique id prefixes everywhere an id is taken, and votes that change nothing exit
non-zero with what happened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from broker.api.app import create_app
from broker.approvals.model import Approval, Status
from broker.approvals.service import ApprovalService, Requester
from broker.cli.approvals_cmd import register
from broker.config import ResourceSettings, Settings, UpstreamSettings
from broker.store import Store
from tests.broker.identity.issuer import FakeIssuer
from tests.conftest import free_port


@dataclass
class Env:
    url: str
    idp: FakeIssuer
    service: ApprovalService

    async def jitgate(self, *args: str, who: str = "dana", groups: tuple[str, ...] = ("dba",)) -> tuple[int, str]:
        token = self.idp.mint(sub=who, email=f"{who}@example.com", groups=list(groups))
        app = typer.Typer()
        register(app)

        @app.command()
        def version() -> None:  # a second command, as the real CLI has many
            print("0")

        env = {"JITGATE_TOKEN": token, "JITGATE_API_URL": self.url, "COLUMNS": "80"}
        result = await asyncio.to_thread(CliRunner().invoke, app, ["approvals", *args], env=env)
        return result.exit_code, result.output

    async def park(self, sql: str) -> Approval:
        return await self.service.park_statement(
            session_id="s1", requester=Requester("agent:bot", ("ai-agents",)), resource="prod", sql=sql,
            rule="agent-safe/write-without-where", risk="no WHERE",
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    idp = FakeIssuer()
    settings = Settings(
        data_dir=tmp_path,
        resources={"prod": ResourceSettings(upstream=UpstreamSettings(host="127.0.0.1", dbname="demo", username="a"))},
        approvals={"default_approvers": ["dba"]},
    )
    store = await Store.open(settings.store_url.get_secret_value())
    app = create_app(settings, store, oidc=idp.verifier(idp.settings()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           log_config=None))
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        yield Env(f"http://127.0.0.1:{port}", idp, app.state.approvals)
    finally:
        server.should_exit = True
        await task
        await store.close()


async def test_list_prints_whole_ids_at_80_columns(env):
    parked = [await env.park(f"delete from orders_{i}") for i in range(2)]
    code, out = await env.jitgate("list")
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    for approval in parked:
        assert approval.id in out.split()  # whole, on a line of its own words


async def test_a_unique_prefix_is_accepted_by_every_command(env):
    first = await env.park("delete from orders")
    code, out = await env.jitgate("show", first.id[:8])
    assert code == 0 and first.id in out, out
    code, out = await env.jitgate("approve", first.id[:8])
    assert code == 0 and f"{first.id}: approved" in out, out
    second = await env.park("delete from customers")
    code, out = await env.jitgate("deny", second.id[:10], "--reason", "not now")
    assert code == 0 and f"{second.id}: denied" in out, out
    third = await env.park("delete from items")
    code, out = await env.jitgate("cancel", third.id[:8])  # resolved, then refused by the API's rule
    assert code == 3 and "only the requester cancels a request" in out, out
    assert (await env.service.get(third.id)).status is Status.PENDING


async def test_short_unknown_and_ambiguous_prefixes_are_clear_errors(env):
    first = await env.park("delete from orders")
    code, out = await env.jitgate("approve", first.id[:7])
    assert code == 2 and "at least its first 8 characters" in out
    code, out = await env.jitgate("approve", "00000000")
    assert code == 1 and "no approval request you may see has an id starting with 00000000" in out
    # Two requests sharing a prefix (made to collide here; uuid4 ids hardly ever do).
    twin = await env.service.approvals.create_approval(
        replace(first, id=first.id[:8] + "-0000-4000-8000-000000000000", sql="delete from twins")
    )
    code, out = await env.jitgate("approve", first.id[:8])
    assert code == 2 and "ambiguous" in out and first.id in out and twin.id in out
    assert (await env.service.get(first.id)).status is Status.PENDING


async def test_approving_a_decided_request_exits_non_zero_and_says_so(env):
    parked = await env.park("delete from orders")
    assert (await env.jitgate("approve", parked.id))[0] == 0
    code, out = await env.jitgate("approve", parked.id)
    assert code == 3 and "already approved by person:dana@example.com at " in out, out
    code, out = await env.jitgate("deny", parked.id, "--reason", "late", who="sam")
    assert code == 3 and "already approved by person:dana@example.com" in out, out
