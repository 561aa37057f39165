"""`jitgate mcp` against a whole stack of real processes: `jitgate proxy` and `jitgate api`
on one store, Redis for decisions, a real OIDC issuer over HTTP. The agent starts with only
its OIDC token: it gets a grant with request_access, queries, has a DELETE parked, a DBA
approves it through the HTTP API, and approval_status returns the result; the intent is in
the API's audit export."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import yaml
from mcp import Client, StdioServerParameters

from broker.config import hash_api_token
from tests.conftest import free_port
from tests.e2e.test_mcp import JITGATE, call
from tests.e2e.test_scale_out import served_issuer
from tests.processes import stop, wait_port

pytestmark = pytest.mark.e2e

ADMIN = "jga_mcp-stack-admin"


@pytest.fixture
def stack(tmp_path, upstream, demo_roles, redis_url, request) -> Iterator[dict[str, object]]:
    review_wait = getattr(request, "param", 60)
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(served_issuer())
        proxy_port, api_port = free_port(), free_port()
        config = tmp_path / "jitgate.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / "data"),
            "broker_url": redis_url,
            "proxy": {"listen_port": proxy_port, "review_wait_seconds": review_wait},
            "api": {"host": "127.0.0.1", "port": api_port, "tokens": [hash_api_token(ADMIN)]},
            "oidc": {"issuers": [idp.settings(kind_claim="kind").model_dump(mode="json")]},
            "access": {"rules": [
                {"groups": ["ai-agents"], "resources": ["demo"], "roles": ["readwrite"], "approval": "auto",
                 "reusable": True, "max_ttl": "1h"},
                {"groups": ["ai-agents"], "resources": ["demo"], "roles": ["readonly"], "approval": "required",
                 "approvers": ["dba"], "reusable": True, "max_ttl": "1h"},
            ]},
            "approvals": {"rules": [{"approvers": ["dba"]}]},
            "resources": {"demo": {"description": "the demo shop", "upstream": {
                "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
                "username": demo_roles.rw_user, "password": demo_roles.rw_password,
            }}},
            "mcp": {"api_url": f"http://127.0.0.1:{api_port}", "sslmode": "disable", "max_rows": 50},
        }))
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for command, port in (("api", api_port), ("proxy", proxy_port)):
                log = tmp_path / f"{command}.log"
                proc = subprocess.Popen(
                    [JITGATE, command, "--config", str(config)], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                procs.append(proc)
                wait_port(port, proc, log)
            yield {"config": config, "api": f"http://127.0.0.1:{api_port}", "idp": idp}
        finally:
            stop(procs)


async def test_agent_with_only_an_oidc_token(stack, upstream):
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute("create table if not exists scratch_stack (id int)")
        admin.execute("delete from scratch_stack")
        admin.execute("insert into scratch_stack select generate_series(1, 3)")
        admin.execute("grant all on scratch_stack to public")
    idp = stack["idp"]
    agent_jwt = idp.mint(sub="ci-job-7", email=None, kind="agent", groups=["ai-agents"], exp=int(time.time()) + 3600)
    dana = idp.mint(sub="dana", email="dana@example.com", groups=["dba"], exp=int(time.time()) + 3600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    params = StdioServerParameters(
        command=JITGATE, args=["mcp", "--config", str(stack["config"])], env={**env, "JITGATE_TOKEN": agent_jwt}
    )
    async with Client(params, read_timeout_seconds=60) as client:
        listed = await call(client, "list_resources")
        assert listed["resources"] == [{"name": "demo", "description": "the demo shop", "has_token": False}]
        no_token = await call(client, "query", resource="demo", sql="select 1")
        assert no_token["status"] == "error" and "request_access" in no_token["message"]

        granted = await call(client, "request_access", resource="demo", role="readwrite",
                             reason="investigate ticket 7", ttl="30m")
        assert granted["status"] == "granted", granted
        assert "token" not in granted and "dsn" not in granted

        rows = await call(client, "query", resource="demo", sql="select email from customers order by id limit 2",
                          intent="ticket 7: who is affected")
        assert rows["status"] == "ok" and all("***" in r[0] for r in rows["rows"])

        parked = await call(client, "query", resource="demo", sql="delete from scratch_stack",
                            intent="ticket 7: clear scratch rows")
        assert parked["status"] == "awaiting_approval", parked
        approval_id = parked["approval_id"]
        pending = await call(client, "approval_status", approval_id=approval_id)
        assert pending["status"] == "awaiting_approval"
        assert pending["approval"]["status"] == "pending"
        assert pending["approval"]["reason"] == "ticket 7: clear scratch rows"  # the intent, for the approver

        async with httpx.AsyncClient(base_url=str(stack["api"]), timeout=15) as api:
            answer = await api.post(f"/v1/approvals/{approval_id}/approve", json={},
                                    headers={"Authorization": f"Bearer {dana}"})
            assert answer.status_code == 200, answer.text

            deadline = time.monotonic() + 20
            while True:
                status = await call(client, "approval_status", approval_id=approval_id)
                if status["status"] != "awaiting_approval" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert status["status"] == "ok" and status["command"] == "DELETE 3", status
            assert status["approval"]["status"] == "approved"
            assert status["approval"]["decided_by"] == ["person:dana@example.com"]

            # The intent is in the audit export (session.start of the MCP server's sessions);
            # the proxy's recorder writes statements in the background, so wait for the DELETE.
            deadline = time.monotonic() + 15
            while True:
                export = await api.get("/v1/audit/export", params={"format": "jsonl"},
                                       headers={"Authorization": f"Bearer {ADMIN}"})
                assert export.status_code == 200
                records = [json.loads(line) for line in export.text.splitlines()]
                if any(r["type"] == "statement" and r["data"]["rows"] == 3 for r in records):
                    break
                assert time.monotonic() < deadline, "the approved DELETE never reached the audit trail"
                await asyncio.sleep(0.2)
            intents = {r["data"].get("intent") for r in records if r["type"] == "session.start"}
            assert {"ticket 7: who is affected", "ticket 7: clear scratch rows"} <= intents
            deletes = [
                r for r in records if r["type"] == "statement" and r["data"]["sql"] == "delete from scratch_stack"
            ]
            assert deletes and deletes[-1]["data"]["decision"] == "review"
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        assert admin.execute("select count(*) from scratch_stack").fetchone() == (0,)


def _scratch(upstream, table: str, rows: int) -> None:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"create table if not exists {table} (id int)")
        admin.execute(f"delete from {table}")
        admin.execute(f"insert into {table} select generate_series(1, {rows})")
        admin.execute(f"grant all on {table} to public")


@pytest.mark.parametrize("stack", [2], indirect=True)
async def test_approval_after_the_gateway_stopped_waiting(stack, upstream):
    """The proxy holds a parked statement for review_wait_seconds (2 s here); a human takes
    longer. approval_status keeps the session, and runs the statement there once approved."""
    _scratch(upstream, "scratch_late", 5)
    idp = stack["idp"]
    agent_jwt = idp.mint(sub="ci-job-8", email=None, kind="agent", groups=["ai-agents"], exp=int(time.time()) + 3600)
    dana = idp.mint(sub="dana", email="dana@example.com", groups=["dba"], exp=int(time.time()) + 3600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    params = StdioServerParameters(
        command=JITGATE, args=["mcp", "--config", str(stack["config"])], env={**env, "JITGATE_TOKEN": agent_jwt}
    )
    async with Client(params, read_timeout_seconds=60) as client:
        granted = await call(client, "request_access", resource="demo", role="readwrite", reason="ticket 8")
        assert granted["status"] == "granted", granted
        parked = await call(client, "query", resource="demo", sql="delete from scratch_late", intent="ticket 8")
        assert parked["status"] == "awaiting_approval"
        approval_id = parked["approval_id"]
        await asyncio.sleep(3)  # the gateway stopped waiting; the approval stays open
        still = await call(client, "approval_status", approval_id=approval_id)
        assert still["status"] == "awaiting_approval" and still["approval"]["status"] == "pending", still
        async with httpx.AsyncClient(base_url=str(stack["api"]), timeout=15) as api:
            answer = await api.post(f"/v1/approvals/{approval_id}/approve", json={},
                                    headers={"Authorization": f"Bearer {dana}"})
            assert answer.status_code == 200, answer.text
        done = await call(client, "approval_status", approval_id=approval_id)
        assert done["status"] == "ok" and done["command"] == "DELETE 5", done
        again = await call(client, "approval_status", approval_id=approval_id)
        assert again["command"] == "DELETE 5"  # reported again, not run again
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        assert admin.execute("select count(*) from scratch_late").fetchone() == (0,)


async def test_access_request_approved_later(stack):
    idp = stack["idp"]
    agent_jwt = idp.mint(sub="ci-job-9", email=None, kind="agent", groups=["ai-agents"], exp=int(time.time()) + 3600)
    dana = idp.mint(sub="dana", email="dana@example.com", groups=["dba"], exp=int(time.time()) + 3600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    params = StdioServerParameters(
        command=JITGATE, args=["mcp", "--config", str(stack["config"])], env={**env, "JITGATE_TOKEN": agent_jwt}
    )
    async with Client(params, read_timeout_seconds=60) as client:
        pending = await call(client, "request_access", resource="demo", role="readonly", reason="read ticket 9")
        assert pending["status"] == "pending" and "approval_status" in pending["message"], pending
        request_id = pending["id"]
        waiting = await call(client, "approval_status", approval_id=request_id)
        assert waiting["status"] == "awaiting_approval" and waiting["kind"] == "access"
        async with httpx.AsyncClient(base_url=str(stack["api"]), timeout=15) as api:
            answer = await api.post(f"/v1/approvals/{request_id}/approve", json={},
                                    headers={"Authorization": f"Bearer {dana}"})
            assert answer.status_code == 200, answer.text
        granted = await call(client, "approval_status", approval_id=request_id)
        assert granted["status"] == "granted", granted
        assert "token" not in json.dumps(granted).replace("token_id", "")
        listed = await call(client, "list_resources")
        assert listed["resources"][0]["has_token"] is True
        rows = await call(client, "query", resource="demo", sql="select count(*) > 0 from customers")
        assert rows["rows"] == [[True]], rows
