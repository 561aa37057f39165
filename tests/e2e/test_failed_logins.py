"""Refused logins through the real proxy, with real clients: each is one chained audit record
(the user the client claimed, the resource, its address, the check that failed), moves
jitgate_auth_failures_total by exactly one, and leaves the token nowhere: not in the audit
store (nor any file of the store), not in the logs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import structlog

from broker import metrics
from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from broker.store.tokens import new_token
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway


@pytest.fixture(scope="module")
def gw(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Gateway]:
    # A gateway of its own: its store holds only what these tests do.
    with tempfile.TemporaryDirectory(prefix="jitgate-failed-logins-") as tmp:
        g = start_gateway(upstream, demo_roles, Path(tmp))
        try:
            yield g
        finally:
            stop_gateway(g)


def failures(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("jitgate_auth_failures_total", {"reason": reason}) or 0.0


def audit(gw: Gateway) -> list[Any]:
    async def read() -> list[Any]:
        await gw.server.ctx.recorder.logins.flush()  # type: ignore[attr-defined]
        return [r async for r in gw.store.audit.iter_audit()]

    return gw.call(read())


def psycopg_login(gw: Gateway, resource: str, token: str, user: str) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(resource, token=token, user=user), connect_timeout=10).close()


def asyncpg_login(gw: Gateway, resource: str, token: str, user: str) -> None:
    async def go() -> None:
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError)):
            conn = await asyncpg.connect(host="127.0.0.1", port=gw.port, user=user, password=token,
                                         database=resource, ssl=False, timeout=10)
            await conn.close()

    asyncio.run(go())


def psql_login(gw: Gateway, resource: str, token: str, user: str) -> None:
    env = {**os.environ, "PGPASSWORD": token, "PGCONNECT_TIMEOUT": "10"}
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(gw.port), "-U", user, "-d", resource, "-w", "-c", "select 1"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode != 0, out.stdout
    assert token not in out.stderr


def expired(gw: Gateway) -> str:
    token = gw.issue(ttl=timedelta(milliseconds=50))
    time.sleep(0.2)
    return token


def revoked(gw: Gateway) -> str:
    token = gw.issue()
    token_id = gw.call(gw.store.tokens.verify_token(token, "demo")).token_id
    assert gw.call(gw.store.tokens.revoke_token(token_id))
    return token


CASES: list[tuple[str, Callable[..., None], str, Callable[[Gateway], str], str, bool]] = [
    # (id, client, resource, token maker, reason, the token is known so its id is recorded)
    ("unknown-token/psycopg", psycopg_login, "demo", lambda gw: new_token(), "unknown", False),
    ("malformed/psql", psql_login, "demo", lambda gw: "hunter2-not-a-token", "malformed", False),
    ("expired/asyncpg", asyncpg_login, "demo", expired, "expired", True),
    ("revoked/psycopg", psycopg_login, "demo", revoked, "revoked", True),
    ("revoked/psql", psql_login, "demo", revoked, "revoked", True),
    # A token for another resource: another agent's grant, or the wrong database.
    ("wrong-resource/asyncpg", asyncpg_login, "demo_md5", lambda gw: gw.issue("demo"), "wrong_resource", True),
    ("unknown-database/psycopg", psycopg_login, "nosuchdb", lambda gw: gw.token("demo"), "unknown_resource", False),
]


@pytest.mark.parametrize(("client", "resource", "make_token", "reason", "known"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_refused_login_is_one_audit_record(
    gw: Gateway, client: Callable[..., None], resource: str, make_token: Callable[[Gateway], str], reason: str,
    known: bool,
) -> None:
    token = make_token(gw)
    user = f"claimed-{reason}"
    existing = audit(gw)
    before_records = len(existing)
    # A known token was issued by its maker just now: the last token.issue names it.
    last_issued = [r.data["token_id"] for r in existing if r.type == "token.issue"][-1:]
    before_count = failures(reason)
    with structlog.testing.capture_logs() as logs:
        client(gw, resource, token, user)
        records = audit(gw)[before_records:]

    failed = [r for r in records if r.type == "auth.login_failed"]
    assert len(failed) == 1, [(r.type, r.data) for r in records]
    data = failed[0].data
    assert data["reason"] == reason and data["user"] == user and data["resource"] == resource
    host, _, port = data["client_addr"].rpartition(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    if known:
        assert [data["token_id"]] == last_issued
    else:
        assert data.get("token_id") is None
    assert failures(reason) == before_count + 1
    # The token, or any part of it worth the name, is in no record and no log line.
    for text in (repr([(r.type, r.data) for r in audit(gw)]), repr(logs)):
        assert token not in text and token[4:20] not in text
    assert gw.call(gw.store.audit.verify_audit()).ok


def test_the_token_is_in_no_file_of_the_store(gw: Gateway) -> None:
    token = revoked(gw)
    psycopg_login(gw, "demo", token, "agent")
    audit(gw)
    for path in Path(gw.settings.data_dir).rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_a_failed_login_exports_as_an_ocsf_authentication_failure(gw: Gateway) -> None:
    from broker.audit.ocsf import to_ocsf
    from tests.broker.audit.ocsf_schema import errors

    psycopg_login(gw, "demo", new_token(), "mallory")
    record = [r for r in audit(gw) if r.type == "auth.login_failed"][-1]
    event = to_ocsf(record)
    assert errors(event) == []
    assert (event["class_uid"], event["status_id"], event["status_detail"]) == (3002, 2, "unknown")
    assert event["user"]["name"] == "mallory" and event["src_endpoint"]["ip"] == "127.0.0.1"


def test_a_token_in_application_name_or_intent_is_not_kept(gw: Gateway) -> None:
    """A successful login's start-up text is stored in the session, its `session.start` record
    and every statement record, and exported: a gateway token or a password pasted into
    application_name or jitgate.intent must be in none of them (issue 16)."""
    leaked = gw.issue(principal="agent:other")  # another agent's token, pasted by mistake
    with structlog.testing.capture_logs() as logs:
        for params in (
            {"application_name": f"deploy {leaked}"},
            {"options": f"-c jitgate.intent=retry-with-{leaked}"},
            {"application_name": "etl", "options": "-c jitgate.intent=rotate-db_password=hunter22-secret"},
        ):
            with psycopg.connect(gw.dsn("demo", **params), connect_timeout=10) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            gw.flush()
    assert sum(e["event"] == "session_started" for e in logs) >= 3  # the logs were captured
    assert leaked not in repr(logs) and "hunter22-secret" not in repr(logs)
    records = audit(gw)
    starts = [r.data for r in records if r.type == "session.start"][-3:]
    assert starts[0]["application_name"] == "(not recorded: looks like a gateway token)"
    assert starts[1]["intent"] == "(not recorded: looks like a gateway token)"
    assert (starts[2]["application_name"], starts[2]["intent"]) == ("etl", "rotate-db_password=****")
    text = repr([(r.type, r.data) for r in records])
    for secret in (leaked, leaked[4:20], "hunter22-secret"):
        assert secret not in text
    sessions = gw.call(gw.store.sessions.list_sessions(limit=10))
    assert not any(leaked in repr(s) or "hunter22" in repr(s) for s in sessions)
    for path in Path(gw.settings.data_dir).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert leaked.encode() not in data and b"hunter22-secret" not in data, path
