"""The audit chain in the store, on SQLite and PostgreSQL: what gets appended, and every kind
of tampering with the table found at the right record."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from broker.audit import events
from broker.audit.chain import seal
from broker.exceptions import StoreIntegrityError
from broker.store import Grant, SessionStart, SessionStats, StatementRecord, Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


def grant(token_id: str | None = None) -> Grant:
    return Grant(token_id, "agent:demo", ("ai-agents",), "demo", "readwrite", datetime(2031, 1, 1, tzinfo=UTC), True)


def rec(sid: str, seq: int, **kw: object) -> StatementRecord:
    return StatementRecord(
        session_id=sid, seq=seq, sql=f"select {seq}", decision="allow",
        started_at=datetime(2030, 1, 1, 12, 0, seq % 60, tzinfo=UTC), rows=seq, masked_values=1, duration_ms=0.5,
        **kw,  # type: ignore[arg-type]
    )


async def populate(store: Store, statements: int = 6) -> str:
    issued = await store.tokens.issue_token("agent:demo", ["ai-agents"], "demo", "readwrite", timedelta(hours=1), True)
    g = await store.tokens.verify_token(issued.token, "demo")
    sid = await store.sessions.start_session(
        SessionStart(g, client_addr="10.0.0.7:5555", application_name="psql", intent="inspect")
    )
    await store.sessions.record_statements([rec(sid, i) for i in range(1, statements + 1)])
    await store.sessions.end_session(sid, reason="client terminated", stats=SessionStats(statements, 10, 20))
    await store.tokens.revoke_token(issued.token_id)
    return issued.token


async def sql(store: Store, stmt: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(stmt), params)


async def test_flows_append_one_chain_without_secrets(store: Store) -> None:
    token = await populate(store)
    records = [r async for r in store.audit.iter_audit()]
    assert [r.type for r in records] == [
        "token.issue", "session.start", *["statement"] * 6, "session.end", "token.revoke",
    ]
    assert [r.seq for r in records] == list(range(1, 11))
    start = records[1]
    assert start.data["client_addr"] == "10.0.0.7:5555" and start.data["application_name"] == "psql"
    stmt = records[2]
    assert stmt.data["decision"] == "allow" and stmt.data["rows"] == 1 and stmt.data["masked_values"] == 1
    dumped = json.dumps([r.to_json() for r in records])
    assert token not in dumped and token[4:20] not in dumped
    report = await store.audit.verify_audit()
    assert report.ok and report.checked == 10 and report.last_seq == 10


async def test_retried_batch_is_audited_once(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    batch = [rec(sid, 1), rec(sid, 2)]
    await store.sessions.record_statements(batch)
    await store.sessions.record_statements([*batch, rec(sid, 3)])
    types = [r.type async for r in store.audit.iter_audit()]
    assert types == ["session.start", "statement", "statement", "statement"]


async def test_failed_batch_leaves_no_audit_record(store: Store) -> None:
    with pytest.raises(StoreIntegrityError):
        await store.sessions.record_statements([rec("no-such-session", 1)])
    assert [r async for r in store.audit.iter_audit()] == []
    assert (await store.audit.verify_audit()).ok


async def test_edit_is_detected(store: Store) -> None:
    await populate(store)
    await sql(store, "UPDATE audit_events SET data = :d WHERE seq = 4", d=json.dumps({"sql": "select 1"}))
    report = await store.audit.verify_audit()
    assert not report.ok and report.broken is not None
    assert (report.broken.seq, report.broken.kind) == (4, "altered")
    assert report.broken.id is not None


async def test_delete_is_detected(store: Store) -> None:
    await populate(store)
    await sql(store, "DELETE FROM audit_events WHERE seq = 5")
    b = (await store.audit.verify_audit()).broken
    assert b is not None and (b.seq, b.kind) == (6, "missing")


async def test_insert_is_detected(store: Store) -> None:
    await populate(store)
    # Make room at seq 5 (top down, so the primary key holds at every step), then forge a
    # record that links correctly to seq 4.
    for seq in range(10, 4, -1):
        await sql(store, "UPDATE audit_events SET seq = :n WHERE seq = :o", n=seq + 1, o=seq)
    prev = await store.audit.audit_record(4)
    assert prev is not None
    forged = seal(seq=5, id="forged", ts=prev.ts, type="statement", actor=None, session_id=None, data={},
                  prev_hash=prev.hash)
    await sql(
        store,
        "INSERT INTO audit_events (seq, id, ts, type, data, prev_hash, hash) "
        "VALUES (5, 'forged', :ts, 'statement', '{}', :p, :h)",
        ts=prev.ts if store.dialect == "postgresql" else prev.ts.replace(tzinfo=None),
        p=forged.prev_hash, h=forged.hash,
    )
    b = (await store.audit.verify_audit()).broken
    assert b is not None and (b.seq, b.kind) == (6, "altered")


async def test_swap_is_detected(store: Store) -> None:
    await populate(store)
    # Swap two records' places: move 4 aside, 5 -> 4, then the old 4 -> 5.
    await sql(store, "UPDATE audit_events SET seq = 1000 WHERE seq = 4")
    await sql(store, "UPDATE audit_events SET seq = 4 WHERE seq = 5")
    await sql(store, "UPDATE audit_events SET seq = 5 WHERE seq = 1000")
    b = (await store.audit.verify_audit()).broken
    assert b is not None and (b.seq, b.kind) == (4, "altered")


async def test_truncated_tail_is_detected(store: Store) -> None:
    await populate(store)
    await sql(store, "DELETE FROM audit_events WHERE seq > 7")
    b = (await store.audit.verify_audit()).broken
    assert b is not None and (b.seq, b.kind) == (8, "truncated")


async def test_appended_forgery_is_detected(store: Store) -> None:
    await populate(store)
    last = await store.audit.audit_record(10)
    assert last is not None
    forged = seal(seq=11, id="x", ts=last.ts, type="t", actor=None, session_id=None, data={}, prev_hash=last.hash)
    await sql(
        store,
        "INSERT INTO audit_events (seq, id, ts, type, data, prev_hash, hash) VALUES (11, 'x', :ts, 't', '{}', :p, :h)",
        ts=last.ts if store.dialect == "postgresql" else last.ts.replace(tzinfo=None),
        p=forged.prev_hash, h=forged.hash,
    )
    b = (await store.audit.verify_audit()).broken
    assert b is not None and (b.seq, b.kind) == (11, "unexpected_tail")


async def test_range_verification(store: Store) -> None:
    await populate(store)
    assert (await store.audit.verify_audit(from_seq=3, to_seq=6)).checked == 4
    await sql(store, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 8")
    assert (await store.audit.verify_audit(from_seq=3, to_seq=6)).ok
    b = (await store.audit.verify_audit(from_seq=5)).broken
    assert b is not None and b.seq == 8


async def test_two_stores_appending_concurrently_make_one_chain(store: Store, backend_url: str) -> None:
    other = await Store.open(backend_url)
    try:
        async def burst(s: Store, who: str) -> None:
            for i in range(15):
                await s.audit.append_audit(events.config_changed(actor=who, what=f"k{i}"))

        await asyncio.gather(burst(store, "a"), burst(other, "b"), burst(store, "c"), burst(other, "d"))
    finally:
        await other.close()
    report = await store.audit.verify_audit()
    assert report.ok and report.checked == 60
