"""MCP client (the official SDK's) ↔ `jitgate mcp` (a real subprocess) ↔ the real proxy ↔
the real PostgreSQL: masking, an actionable block, a parked statement approved and fetched
with approval_status, result caps, and the agent's intent in the audit export."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from mcp import Client, StdioServerParameters

from broker.approvals.model import Status, Voter
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from broker.audit.export import render
from broker.config import ProxySettings
from tests.conftest import free_port
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.e2e.conftest import approval_service as service

pytestmark = pytest.mark.e2e

JITGATE = str(Path(sys.executable).with_name("jitgate"))
DBA = Voter("person:dana@example.com", ("dba",), "api")


@pytest.fixture(scope="module")
def gw(upstream, demo_roles) -> Iterator[Gateway]:
    approvals = ApprovalSettings(rules=[ApprovalRuleSettings(approvers=["dba"])])
    with tempfile.TemporaryDirectory(prefix="jitgate-mcp-") as tmp:
        gateway = start_gateway(
            upstream, demo_roles, Path(tmp), approvals=approvals,
            proxy=ProxySettings(listen_port=0, review_wait_seconds=30),
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


@pytest.fixture(scope="module")
def mcp_config(gw, tmp_path_factory) -> Path:
    # The agent's side needs no gateway configuration: where the proxy is, and which resources.
    config = {
        "data_dir": str(tmp_path_factory.mktemp("mcp-data")),
        "mcp": {
            "gateway_host": "127.0.0.1", "gateway_port": gw.port, "resources": ["demo"],
            "max_rows": 5, "max_bytes": 4096, "sslmode": "disable", "query_timeout_seconds": 20,
        },
        "log_level": "warning",
    }
    path = tmp_path_factory.mktemp("mcp") / "jitgate.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env(token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
    return {**env, "JITGATE_GATEWAY_TOKEN": token}


@asynccontextmanager
async def stdio_client(gw: Gateway, config: Path, *args: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=JITGATE, args=["mcp", "--config", str(config), *args], env=_env(gw.token())
    )
    async with Client(params, read_timeout_seconds=60) as client:
        yield client


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    assert result.structured_content is not None
    return result.structured_content


async def test_tools_over_stdio(gw, mcp_config, upstream):
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute("create table if not exists scratch_mcp (id int)")
        admin.execute("delete from scratch_mcp")
        admin.execute("insert into scratch_mcp select generate_series(1, 4)")
        admin.execute("grant all on scratch_mcp to public")

    async with stdio_client(gw, mcp_config) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"list_resources", "describe_schema", "query", "request_access", "approval_status"}

        listed = await call(client, "list_resources")
        assert listed["resources"] == [{"name": "demo", "description": "", "has_token": True}]

        schema = await call(client, "describe_schema", resource="demo")
        tables = {t["table"]: t for t in schema["tables"]}
        assert "email" in {c["name"] for c in tables["customers"]["columns"]}

        # Masked: the same masking as on the wire.
        masked = await call(
            client, "query", resource="demo", sql="select email, card_number from customers order by id limit 3",
            intent="check masking for ticket 42",
        )
        assert masked["status"] == "ok" and masked["columns"] == ["email", "card_number"]
        assert len(masked["rows"]) == 3
        for email, card in masked["rows"]:
            assert "***" in email and card.startswith("****")

        # Capped: 5 rows at most, and said so.
        capped = await call(client, "query", resource="demo", sql="select g from generate_series(1, 50) g")
        assert capped["truncated"] is True and capped["row_count"] == 50 and len(capped["rows"]) == 5
        assert "narrow the query" in capped["message"]

        # Blocked, with an error the agent can act on.
        blocked = await call(client, "query", resource="demo", sql="select pg_read_file('/etc/passwd')")
        assert blocked["status"] == "error" and blocked["sqlstate"] == "42501"
        assert "blocked by policy" in blocked["message"]
        assert blocked["refused_by"] == "jitgate"
        assert "rule" in blocked["detail"] and "request_access" in blocked["hint"]

        # Parked: the tool call returns at once with the approval id ...
        started = time.monotonic()
        parked = await call(client, "query", resource="demo", sql="delete from scratch_mcp",
                            intent="clean up scratch rows")
        assert parked["status"] == "awaiting_approval", parked
        assert time.monotonic() - started < 10
        approval_id = parked["approval_id"]
        pending = await call(client, "approval_status", approval_id=approval_id)
        assert pending["status"] == "awaiting_approval"
        # ... other queries still run meanwhile ...
        other = await call(client, "query", resource="demo", sql="select count(*) from scratch_mcp")
        assert other["rows"] == [[4]]
        # ... the approval carries the intent, and an approver decides it (as the API does) ...
        approval = gw.call(service(gw).get(approval_id))
        assert approval.status is Status.PENDING and approval.reason == "clean up scratch rows"
        gw.call(service(gw).vote(approval_id, DBA, "approve"))
        # ... and approval_status returns the statement's result.
        deadline = time.monotonic() + 20
        while True:
            status = await call(client, "approval_status", approval_id=approval_id)
            if status["status"] != "awaiting_approval" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "ok" and status["command"] == "DELETE 4", status
        after = await call(client, "query", resource="demo", sql="select count(*) from scratch_mcp")
        assert after["rows"] == [[0]]

        # Several statements in one string run over the simple protocol; parked as one.
        several = await call(client, "query", resource="demo",
                             sql="begin; update orders set status = status where id = -1; commit")
        assert several["status"] == "ok" and several["command"] == "COMMIT", several
        mixed = await call(client, "query", resource="demo", sql="select 1; drop table if exists no_such_mixed")
        assert mixed["status"] == "awaiting_approval"
        gw.call(service(gw).vote(mixed["approval_id"], DBA, "approve"))
        deadline = time.monotonic() + 20
        while True:
            status = await call(client, "approval_status", approval_id=mixed["approval_id"])
            if status["status"] != "awaiting_approval" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "ok" and status["command"] == "DROP TABLE", status

        unknown = await call(client, "query", resource="nope", sql="select 1")
        assert unknown["status"] == "error" and "list_resources" in unknown["message"]

    # The intent is on the session and in the audit export; the token never is.
    gw.flush()

    async def export() -> str:
        return "".join([chunk async for chunk in render(gw.store.audit.iter_audit(), "jsonl")])

    text = gw.call(export())
    records = [json.loads(line) for line in text.splitlines()]
    starts = [r for r in records if r["type"] == "session.start" and r["data"].get("application_name") == "jitgate-mcp"]
    assert {r["data"].get("intent") for r in starts} >= {"check masking for ticket 42", "clean up scratch rows"}
    assert gw.token() not in text


async def test_denied_statement_returns_the_reason(gw, mcp_config):
    async with stdio_client(gw, mcp_config) as client:
        parked = await call(client, "query", resource="demo", sql="delete from orders", intent="tidy orders")
        assert parked["status"] == "awaiting_approval"
        gw.call(service(gw).vote(parked["approval_id"], DBA, "deny", reason="not during the audit"))
        deadline = time.monotonic() + 20
        while True:
            status = await call(client, "approval_status", approval_id=parked["approval_id"])
            if status["status"] != "awaiting_approval" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert status["status"] == "error" and status["sqlstate"] == "42501"
        assert "not during the audit" in status["message"]


async def test_bad_token_says_how_to_get_access(gw, mcp_config):
    params = StdioServerParameters(command=JITGATE, args=["mcp", "--config", str(mcp_config)], env=_env("nope"))
    async with Client(params, read_timeout_seconds=60) as client:
        out = await call(client, "query", resource="demo", sql="select 1")
        assert out["status"] == "error" and out["sqlstate"] == "28P01"
        assert "request_access" in out["hint"]
        assert "nope" not in json.dumps(out)


async def test_streamable_http(gw, mcp_config):
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        JITGATE, "mcp", "--config", str(mcp_config), "--http", f"127.0.0.1:{port}",
        env=_env(gw.token()), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    await http.get(f"http://127.0.0.1:{port}/mcp")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.1)
        async with Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=60) as client:
            out = await call(client, "query", resource="demo", sql="select email from customers order by id limit 1")
            assert out["status"] == "ok" and "***" in out["rows"][0][0]
            parked = await call(client, "query", resource="demo", sql="drop table if exists no_such_table_mcp")
            assert parked["status"] == "awaiting_approval"
            gw.call(service(gw).vote(parked["approval_id"], DBA, "approve"))
            deadline = time.monotonic() + 20
            while True:
                status = await call(client, "approval_status", approval_id=parked["approval_id"])
                if status["status"] != "awaiting_approval" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert status["status"] == "ok" and status["command"] == "DROP TABLE", status
        async with httpx.AsyncClient(timeout=5) as http:
            metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        assert 'jitgate_mcp_rows_returned_total{resource="demo"} 1.0' in metrics
        assert 'jitgate_mcp_queries_total{resource="demo",status="awaiting_approval"} 1.0' in metrics
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def test_refusals_on_the_wire_say_what_to_do(gw):
    """psycopg (any wire client) gets the rule, what would be allowed instead, and how to ask."""
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as blocked:
            conn.execute("copy customers to program 'curl example.com'")
        diag = blocked.value.diag
        assert "agent-safe/server-copy" in diag.message_primary
        assert diag.message_detail.startswith("rule: agent-safe/server-copy; instead: use COPY ... TO STDOUT")
        assert "jitgate connect" in diag.message_hint and "request_access" in diag.message_hint
        # The connection stays usable.
        assert conn.execute("select 1").fetchone() == (1,)


async def test_session_egress_limit(gw, tmp_path):
    config = tmp_path / "egress.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "mcp": {"gateway_port": gw.port, "resources": ["demo"], "sslmode": "disable", "max_rows": 5,
                "max_session_rows": 7},
    }))
    async with stdio_client(gw, config) as client:
        first = await call(client, "query", resource="demo", sql="select g from generate_series(1, 5) g")
        assert first["rows"] == [[1], [2], [3], [4], [5]] and not first["truncated"]
        second = await call(client, "query", resource="demo", sql="select g from generate_series(1, 50) g")
        assert second["rows"] == [[1], [2]] and second["truncated"] and second["egress_limit"]
        assert "egress limit" in second["message"]
        third = await call(client, "query", resource="demo", sql="select 1")
        assert third["status"] == "error" and third["egress_limit"] and "max_session_rows" in third["message"]


async def test_one_session_per_intent_within_the_connection_limit(gw, tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "mcp": {"gateway_port": gw.port, "resources": ["demo"], "sslmode": "disable", "connections_per_resource": 1,
                "query_timeout_seconds": 1},
    }))
    async with stdio_client(gw, config) as client:
        for intent in ("first look", "second look", "first look"):
            out = await call(client, "query", resource="demo", sql="select 1 as one", intent=intent)
            assert out["rows"] == [[1]], out
        slow = await call(client, "query", resource="demo", sql="select pg_sleep(5)")
        assert slow["status"] == "error" and "did not finish within 1 s" in slow["message"]
        # The timed-out session was dropped, and its slot is free again.
        out = await call(client, "query", resource="demo", sql="select 2")
        assert out["rows"] == [[2]], out


async def test_vault_credentials_behind_mcp(upstream, demo_roles, openbao, tmp_path):
    """The statement an agent runs over MCP logs in upstream with an OpenBao dynamic role that
    neither the agent nor the MCP server ever sees, revoked when the server's sessions end."""
    from broker.config import ResourceSettings, UpstreamSettings
    from broker.credentials.settings import CredentialSettings
    from tests.openbao_fixture import role_exists

    extra = {"vault_demo": ResourceSettings(
        upstream=UpstreamSettings(host=upstream.host, port=upstream.port, dbname="demo", sslmode="disable"),
        credentials=CredentialSettings(provider="vault"),
    )}
    vgw = start_gateway(
        upstream, demo_roles, tmp_path / "gw", extra=extra, vault=openbao.settings(),
        approvals=ApprovalSettings(rules=[ApprovalRuleSettings(approvers=["dba"])]),
        proxy=ProxySettings(listen_port=0, review_wait_seconds=30),
    )
    try:
        config = tmp_path / "vault.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(tmp_path / "data"),
            "mcp": {"gateway_port": vgw.port, "resources": ["vault_demo"], "sslmode": "disable"},
        }))
        params = StdioServerParameters(
            command=JITGATE, args=["mcp", "--config", str(config)], env=_env(vgw.token("vault_demo"))
        )
        async with Client(params, read_timeout_seconds=60) as client:
            who = await call(client, "query", resource="vault_demo", sql="select session_user", intent="who am i")
            role = who["rows"][0][0]
            assert role.startswith("v-"), who  # an OpenBao-generated login
            masked = await call(client, "query", resource="vault_demo",
                                sql="select email from customers order by id limit 1")
            assert "***" in masked["rows"][0][0]
            parked = await call(client, "query", resource="vault_demo", sql="drop table if exists no_such_vault_t")
            assert parked["status"] == "awaiting_approval"
            vgw.call(service(vgw).vote(parked["approval_id"], DBA, "approve"))
            deadline = time.monotonic() + 20
            while True:
                status = await call(client, "approval_status", approval_id=parked["approval_id"])
                if status["status"] != "awaiting_approval" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert status["command"] == "DROP TABLE", status
            assert await role_exists(upstream, role)
        deadline = time.monotonic() + 10
        while await role_exists(upstream, role):  # the server exited: sessions end, leases are revoked
            assert time.monotonic() < deadline, f"{role} still exists"
            await asyncio.sleep(0.2)
    finally:
        stop_gateway(vgw)
