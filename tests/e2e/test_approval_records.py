"""Records that join and order (issue 16, part 3), through the real proxy and psql.

A statement approved (or denied) through the approvals service carries the approval's id on
its chained record and on its `statements` row; the approval request shows the requester's
stated intent, never the client's application_name; and records of concurrent sessions
carry each statement's own time as `ts`, so they are in event order per session.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.approvals.model import Voter
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from broker.audit.chain import AuditRecord
from broker.config import ProxySettings
from broker.mcp.gateway import intent_option
from broker.store import SessionDetail
from tests.conftest import require_binary
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.e2e.conftest import approval_service as _service
from tests.e2e.conftest import wait_pending as _pending

pytestmark = pytest.mark.e2e

DBA = Voter("person:dana@example.com", ("dba",), "api")
APP_NAME = "etl-runner-7"


@pytest.fixture(scope="module")
def gw(upstream, demo_roles) -> Iterator[Gateway]:
    approvals = ApprovalSettings(rules=[ApprovalRuleSettings(approvers=["dba"])])
    with tempfile.TemporaryDirectory(prefix="jitgate-approval-records-") as tmp:
        gateway = start_gateway(
            upstream, demo_roles, Path(tmp), approvals=approvals,
            proxy=ProxySettings(listen_port=0, review_wait_seconds=20),
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _psql(gw: Gateway, sql: str, *, intent: str | None = None) -> subprocess.Popen[str]:
    require_binary("psql")
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": APP_NAME}
    if intent is not None:
        env["PGOPTIONS"] = intent_option(intent)
    return subprocess.Popen(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, gw.dsn()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _ended_session_with(gw: Gateway, sql: str, timeout: float = 15) -> SessionDetail:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in gw.call(gw.store.sessions.list_sessions(limit=200)):
            if s.ended_at is None:
                continue
            detail = gw.call(gw.store.sessions.get_session(s.id))
            if detail is not None and any(st.sql == sql for st in detail.statements):
                return detail
        time.sleep(0.1)
    raise AssertionError(f"no ended session ran {sql!r}")


def _records(gw: Gateway, session_id: str) -> list[AuditRecord]:
    async def collect() -> list[AuditRecord]:
        return [r async for r in gw.store.audit.iter_audit() if r.session_id == session_id]

    records: list[AuditRecord] = gw.call(collect())
    return records


def _scratch(upstream, table: str, rows: int) -> None:  # type: ignore[no-untyped-def]
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"create table if not exists {table} (id int)")
        admin.execute(f"delete from {table}")
        admin.execute(f"insert into {table} select generate_series(1, {rows})")
        admin.execute(f"grant all on {table} to public")


def test_approved_statement_carries_its_approval_and_no_intent_is_not_the_app_name(gw, upstream):
    _scratch(upstream, "scratch_rec_a", 3)
    sql = "delete from scratch_rec_a"
    proc = _psql(gw, sql)
    approval = _pending(gw, sql)
    # No intent stated: the request says so; the client's program name is labelled as such.
    assert approval.reason is None
    assert approval.details["application_name"] == APP_NAME
    assert APP_NAME not in (approval.reason or "")
    gw.call(_service(gw).vote(approval.id, DBA, "approve"))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err

    detail = _ended_session_with(gw, sql)
    st = next(st for st in detail.statements if st.sql == sql)
    assert (st.approval_id, st.rows, st.verified) == (approval.id, 3, True)
    (record,) = [r for r in _records(gw, detail.session.id) if r.type == "statement" and r.data["sql"] == sql]
    assert record.data["approval_id"] == approval.id
    assert record.data["resource"] == "demo"


def test_denied_statement_carries_its_approval_and_the_stated_intent(gw, upstream):
    _scratch(upstream, "scratch_rec_b", 2)
    sql = "delete from scratch_rec_b"
    proc = _psql(gw, sql, intent="clean up ticket 4711")
    approval = _pending(gw, sql)
    assert approval.reason == "clean up ticket 4711"  # the stated intent, not application_name
    assert approval.details["application_name"] == APP_NAME
    gw.call(_service(gw).vote(approval.id, DBA, "deny", reason="not during the freeze"))
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "not during the freeze" in err

    detail = _ended_session_with(gw, sql)
    st = next(st for st in detail.statements if st.sql == sql)
    assert (st.approval_id, st.error_sqlstate, st.verified) == (approval.id, "42501", True)
    (record,) = [r for r in _records(gw, detail.session.id) if r.type == "statement" and r.data["sql"] == sql]
    assert record.data["approval_id"] == approval.id and record.data["decision"] == "review"


def test_concurrent_sessions_records_have_event_time_in_order(gw):
    """Two sessions run statements at once; each statement's record has its own start as
    `ts` (not its batch's write time), so per session records are in event order."""
    tag = f"conc_{time.monotonic_ns()}"
    barrier = threading.Barrier(2)

    def run(n: int) -> None:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            barrier.wait()
            for i in range(8):
                conn.execute(f"select {i} as {tag}_{n}")
                time.sleep(0.01)

    threads = [threading.Thread(target=run, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for n in (1, 2):
        detail = _ended_session_with(gw, f"select 0 as {tag}_{n}")
        records = _records(gw, detail.session.id)
        statements = [r for r in records if r.type == "statement"]
        assert len(statements) == 8
        # ts is the statement's own start, as the row has it ...
        started = {st.seq: st.started_at for st in detail.statements}
        assert [r.ts for r in statements] == [started[r.data["seq"]] for r in statements]
        # ... so the session's records, in seq order, are in event order.
        times = [r.ts for r in records]
        assert times == sorted(times)
        assert records[0].type == "session.start" and records[-1].type == "session.end"
        assert records[-1].data["resource"] == "demo"
