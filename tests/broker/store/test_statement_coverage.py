"""Everything shown of a statement is covered by the audit chain (issue 16, part 2).

The `statements` table is what replay, `sessions show`, the API and the console read; the
chain is what `audit verify` checks. Each statement's chained record carries what is shown
(SQL, decision, rule, rows, a digest of the recorded results, ...), and every read compares
the row with it: an edit made directly in the table (on each backend), a deleted row and a
row added without a chained record are each reported on the statement they concern.
"""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from broker.api import create_app
from broker.config import Settings, hash_api_token
from broker.store import Grant, SessionStart, StatementRecord, Store
from tests.broker.store.cli_helpers import cli_config, run_cli  # noqa: F401
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401

API_TOKEN = "jga_coverage-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
RESULTS = [{"columns": ["email"], "rows": [["a***@example.com"], ["b***@example.com"]], "truncated": False}]
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _grant() -> Grant:
    return Grant(None, "agent:demo", ("ai-agents",), "demo", "readwrite", datetime(2031, 1, 1, tzinfo=UTC), True)


async def _seed(store: Store) -> str:
    """A session with three statements: an allowed read with recorded (masked) results, a
    block, and a statement that ran after an approval."""
    sid = await store.sessions.start_session(
        SessionStart(_grant(), client_addr="10.0.0.7:5000", application_name="psql", intent="triage")
    )
    await store.sessions.record_statements([
        StatementRecord(session_id=sid, seq=1, sql="select email from customers", decision="allow",
                        started_at=T0 + timedelta(seconds=1), rows=2, masked_values=2, duration_ms=1.25,
                        results=RESULTS),
        StatementRecord(session_id=sid, seq=2, sql="drop table customers", decision="block",
                        started_at=T0 + timedelta(seconds=2), rule="agent-safe/ddl", reason="no DDL",
                        error_sqlstate="42501"),
        StatementRecord(session_id=sid, seq=3, sql="delete from orders where id = 7", decision="review",
                        started_at=T0 + timedelta(seconds=3), rule="agent-safe/write", reason="writes need review",
                        rows=1, duration_ms=2.0, approval_id="5b3c1f0e-0000-4000-8000-000000000001"),
    ])
    return sid


async def _sql(store: Store, statement: str, **params: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def test_untouched_statements_are_verified(store: Store) -> None:
    sid = await _seed(store)
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    assert [(s.seq, s.verified, s.tampered) for s in detail.statements] == [(1, True, ()), (2, True, ()), (3, True, ())]
    assert detail.statements[2].approval_id == "5b3c1f0e-0000-4000-8000-000000000001"
    assert detail.statements[0].results == RESULTS


# (column, a new value as the table holds it, the field reported)
EDITS = [
    ("sql", "select 42", "sql"),
    ("decision", "allow", "decision"),
    ("rule", "agent-safe/other", "rule"),
    ("rows", 999, "rows"),
    ("masked_values", 0, "masked_values"),
    ("results", json.dumps([{"columns": ["email"], "rows": [["alice@example.com"]], "truncated": False}]), "results"),
    ("reason", "fine", "reason"),
    ("error_sqlstate", None, "error_sqlstate"),
    ("approval_id", None, "approval_id"),
]


@pytest.mark.parametrize(("column", "value", "field"), EDITS, ids=[e[0] for e in EDITS])
async def test_each_shown_field_edited_in_the_table_is_tampering(
    store: Store, column: str, value: Any, field: str
) -> None:
    sid = await _seed(store)
    # The statement that holds a non-null value for the column (results: 1, approval: 3, ...).
    seq = {"results": 1, "masked_values": 1, "approval_id": 3, "rows": 1}.get(column, 2)
    if store.dialect == "postgresql" and column == "results":
        await _sql(store, "UPDATE statements SET results = CAST(:v AS json) WHERE session_id = :s AND seq = :q",
                   v=value, s=sid, q=seq)
    else:
        await _sql(store, f"UPDATE statements SET {column} = :v WHERE session_id = :s AND seq = :q",
                   v=value, s=sid, q=seq)
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    by_seq = {s.seq: s for s in detail.statements}
    assert by_seq[seq].verified is False
    assert field in by_seq[seq].tampered
    assert all(s.verified for s in detail.statements if s.seq != seq)


async def test_a_deleted_row_is_shown_from_its_chained_record_as_tampering(store: Store) -> None:
    sid = await _seed(store)
    await _sql(store, "DELETE FROM statements WHERE session_id = :s AND seq = 2", s=sid)
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    st = {s.seq: s for s in detail.statements}[2]
    assert (st.verified, st.tampered) == (False, ("row_deleted",))
    assert (st.sql, st.decision, st.rule) == ("drop table customers", "block", "agent-safe/ddl")


async def test_an_inserted_row_without_a_chained_record_is_tampering(store: Store) -> None:
    sid = await _seed(store)
    if store.dialect == "sqlite":
        started: Any = "2030-01-01 12:00:04.000000"
    else:
        started = T0 + timedelta(seconds=4)
    await _sql(
        store,
        "INSERT INTO statements (session_id, seq, sql, decision, started_at, masked_values)"
        " VALUES (:s, 4, 'select 1', 'allow', :t, 0)",
        s=sid, t=started,
    )
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    st = {s.seq: s for s in detail.statements}[4]
    assert (st.verified, st.tampered) == (False, ("no_audit_record",))


async def test_an_edited_chained_record_is_not_trusted(store: Store) -> None:
    """Editing the row and the chained record alike (without rehashing) is still caught."""
    sid = await _seed(store)
    await _sql(store, "UPDATE statements SET sql = 'select 42' WHERE session_id = :s AND seq = 1", s=sid)
    async with store.engine.begin() as conn:
        rows = (await conn.execute(
            text("SELECT seq, data FROM audit_events WHERE session_id = :s AND type = 'statement'"), {"s": sid}
        )).all()
        for audit_seq, data in rows:
            data = json.loads(data) if isinstance(data, str) else data
            if data["seq"] == 1:
                data["sql"] = "select 42"
                cast = ":d" if store.dialect == "sqlite" else "CAST(:d AS json)"
                await conn.execute(
                    text(f"UPDATE audit_events SET data = {cast} WHERE seq = :q"),
                    {"d": json.dumps(data), "q": audit_seq},
                )
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    st = {s.seq: s for s in detail.statements}[1]
    assert st.verified is False and "audit_record_altered" in st.tampered


# -- what the API and the CLI show ------------------------------------------------------------


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(api={"tokens": [hash_api_token(API_TOKEN)]}, resources={})
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test") as c:
        yield c


async def test_api_marks_tampered_statements(store: Store, api: httpx.AsyncClient) -> None:
    sid = await _seed(store)
    clean = (await api.get(f"/v1/sessions/{sid}", headers=AUTH)).json()
    assert clean["verified"] is True
    assert [(s["verified"], s["tampered"]) for s in clean["statements"]] == [(True, [])] * 3
    assert clean["statements"][2]["approval_id"] == "5b3c1f0e-0000-4000-8000-000000000001"

    await _sql(store, "UPDATE statements SET sql = 'select 42' WHERE session_id = :s AND seq = 2", s=sid)
    await _sql(store, "DELETE FROM statements WHERE session_id = :s AND seq = 3", s=sid)
    body = (await api.get(f"/v1/sessions/{sid}", headers=AUTH)).json()
    assert body["verified"] is False
    by_seq = {s["seq"]: s for s in body["statements"]}
    assert (by_seq[2]["verified"], by_seq[2]["tampered"]) == (False, ["sql"])
    assert (by_seq[3]["verified"], by_seq[3]["tampered"]) == (False, ["row_deleted"])
    assert by_seq[3]["sql"] == "delete from orders where id = 7"  # as recorded in the chain
    assert by_seq[1]["verified"] is True
    spec = (await api.get("/openapi.json")).json()
    assert "tampered" in spec["components"]["schemas"]["StatementOut"]["properties"]


async def test_replay_and_show_exit_non_zero_naming_the_tampered_statement(store: Store, cli_config: Path) -> None:
    sid = await _seed(store)
    for command in ("replay", "show"):
        ok = await _in_thread(run_cli, cli_config, "sessions", command, sid)
        assert ok.exit_code == 0, ok.output
        assert "TAMPERED" not in ok.output
    await _sql(store, "UPDATE statements SET rows = 0 WHERE session_id = :s AND seq = 1", s=sid)
    for command in ("replay", "show"):
        bad = await _in_thread(run_cli, cli_config, "sessions", command, sid)
        assert bad.exit_code == 3, bad.output
        assert "TAMPERED" in bad.output and "#1" in bad.output and "rows" in bad.output
    lines = [json.loads(line) for line in (await _in_thread(run_cli, cli_config, "sessions", "replay", sid, "--json"))
             .stdout.splitlines()]
    statements = {line["seq"]: line for line in lines if line["event"] == "statement"}
    assert statements[1]["tampered"] == ["rows"] and statements[1]["verified"] is False
    assert statements[2]["verified"] is True


async def _in_thread(fn: Any, *args: Any) -> Any:
    # The CLI runs its own event loop (asyncio.run): not from inside this test's loop.
    import asyncio

    return await asyncio.to_thread(fn, *args)


async def test_statement_records_carry_event_time_and_resource(store: Store, clock: FakeClock) -> None:
    """`ts` is when the statement started, not when its batch was written; `resource` and
    `approval_id` are on the record itself."""
    clock.advance(timedelta(hours=1))  # the batch is written an hour after the statements ran
    sid = await _seed(store)
    records = [r async for r in store.audit.iter_audit() if r.session_id == sid]
    statements = [r for r in records if r.type == "statement"]
    assert [r.ts for r in statements] == [T0 + timedelta(seconds=n) for n in (1, 2, 3)]
    assert all(r.data["resource"] == "demo" for r in statements)
    assert statements[2].data["approval_id"] == "5b3c1f0e-0000-4000-8000-000000000001"
    assert statements[0].data["results_digest"] is not None and statements[1].data["results_digest"] is None
    await store.sessions.end_session(sid, reason="client terminated")
    end = [r async for r in store.audit.iter_audit() if r.type == "session.end" and r.session_id == sid]
    assert end[0].data["resource"] == "demo"
    assert (await store.audit.verify_audit()).ok
