"""The recorder's writer process: batches are written by a child with its own connection,
and nothing about recording changes (every statement stored and chained, failures retried,
backpressure as before)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker import metrics
from broker.exceptions import StoreError, StoreIntegrityError
from broker.policy.model import Decision, Verdict
from broker.store import Grant, SessionStart, StatementRecord, Store
from broker.store import records as records_mod
from broker.store.recorder import ProcessWriter, Recorder
from broker.store.records import StatementRow, record_fields, statement_record
from proxy.records import StatementEvent
from proxy.wiring import RecorderSink

GRANT = Grant(
    token_id=None, principal="agent:proc", groups=("ai-agents",), resource="demo", role="readwrite",
    expires_at=datetime(2031, 1, 1, tzinfo=UTC), reusable=True,
)


def rec(session_id: str, seq: int) -> StatementRecord:
    return StatementRecord(session_id=session_id, seq=seq, sql=f"select {seq}", decision="allow",
                           started_at=datetime.now(UTC), duration_ms=0.5, rows=1)


def row(session_id: str, seq: int) -> StatementRow:
    """`rec` in the form the proxy hands over (`RecorderSink.statement`)."""
    fields = record_fields(rec(session_id, seq))
    return (*fields[:4], time.time(), *fields[5:])  # type: ignore[return-value]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/proc.db")
    yield s
    await s.close()


async def ready(writer: ProcessWriter) -> None:
    writer.start()
    assert writer._ready is not None
    await asyncio.wait_for(asyncio.wrap_future(writer._ready), 60)


def child_pids(writer: ProcessWriter) -> list[int]:
    assert writer._pool is not None
    return list(writer._pool._processes)  # type: ignore[attr-defined]


async def test_a_file_store_gets_a_writer_process_and_a_memory_one_does_not(store: Store) -> None:
    assert Recorder(store.sessions)._writer is not None
    assert Recorder(store.sessions, writer_process=False)._writer is None
    memory = await Store.open("sqlite+aiosqlite://")
    try:
        assert Recorder(memory.sessions)._writer is None
    finally:
        await memory.close()


async def test_batches_are_written_by_the_child_and_chained(store: Store) -> None:
    forwarded: list[Any] = []
    store.audit_listeners.append(forwarded.extend)
    recorder = Recorder(store.sessions, flush_interval=0.05, batch_size=100)
    recorder.start()
    writer = recorder._writer
    assert writer is not None
    await ready(writer)
    (child,) = child_pids(writer)
    assert child != os.getpid()
    sid = await recorder.start_session(SessionStart(GRANT))
    for seq in range(1, 351):
        recorder.record_statement(rec(sid, seq))
    await recorder.flush()
    detail = await store.sessions.get_session(sid)
    assert detail is not None and [s.seq for s in detail.statements] == list(range(1, 351))
    statements = [r async for r in store.audit.iter_audit() if r.type == "statement"]
    assert [r.data["seq"] for r in statements] == list(range(1, 351))
    assert all(r.actor == "agent:proc" for r in statements)
    # The SIEM forwarder in this process still sees every statement record, after its commit.
    assert [r.hash for r in forwarded if r.type == "statement"] == [r.hash for r in statements]
    report = await store.audit.verify_audit()
    assert report.ok and report.checked == 351
    await recorder.aclose()
    assert writer._pool is None


async def test_the_child_writes_a_sqlite_file_on_a_plain_connection_with_the_stores_errors(store: Store) -> None:
    writer = ProcessWriter(store.sessions)
    try:
        await ready(writer)
        assert writer._ready is not None and writer._ready.result() == "sqlite3"
        sid = await store.sessions.start_session(SessionStart(GRANT))
        await writer.record_statements([row(sid, 1), rec(sid, 2)])
        # Refused by the store as the engine's path refuses them, and nothing of the batch is written.
        with pytest.raises(StoreIntegrityError):
            await writer.record_statements([row(sid, 3), row("no-such-session", 1)])
        naive = dataclasses.replace(rec(sid, 4), started_at=datetime(2030, 1, 1))
        with pytest.raises(StoreError, match="naive"):
            await writer.record_statements([record_fields(naive)])
        with pytest.raises(StoreError, match="JSON"):
            await writer.record_statements([dataclasses.replace(rec(sid, 5), duration_ms=float("nan"))])
        # A retried batch is not duplicated.
        await writer.record_statements([row(sid, 2), row(sid, 3)])
        detail = await store.sessions.get_session(sid)
        assert detail is not None
        assert [(s.seq, s.verified) for s in detail.statements] == [(1, True), (2, True), (3, True)]
        assert (await store.audit.verify_audit()).ok
    finally:
        await writer.aclose()


async def test_a_batch_retried_after_the_child_committed_reaches_the_listeners(store: Store) -> None:
    # The child can die after its commit and before its answer: the retry finds the batch
    # stored, and its records, which never reached the SIEM forwarder, are handed over then.
    got: list[Any] = []
    store.audit_listeners.append(got.extend)
    writer = ProcessWriter(store.sessions)
    try:
        await ready(writer)
        sid = await store.sessions.start_session(SessionStart(GRANT))
        batch = [row(sid, seq) for seq in range(1, 5)]
        await writer.record_statements(batch)
        first = [r for r in got if r.type == "statement"]
        got.clear()
        await writer.record_statements(batch)
        assert [r for r in got if r.type == "statement"] == first
        assert [r.data["seq"] for r in first] == [1, 2, 3, 4]
    finally:
        await writer.aclose()


async def test_a_dead_child_is_a_transient_failure_and_nothing_is_lost(store: Store) -> None:
    recorder = Recorder(store.sessions, flush_interval=0.05, batch_size=50)
    recorder.start()
    writer = recorder._writer
    assert writer is not None
    await ready(writer)
    sid = await recorder.start_session(SessionStart(GRANT))
    for seq in range(1, 101):
        recorder.record_statement(rec(sid, seq))
    await recorder.flush()
    (child,) = child_pids(writer)
    os.kill(child, signal.SIGKILL)
    await asyncio.sleep(0.2)
    for seq in range(101, 201):
        # As the proxy hands them over: rows, written from here while a new child starts.
        recorder.record_row(row(sid, seq))
    await asyncio.wait_for(recorder.flush(), 60)
    detail = await store.sessions.get_session(sid)
    assert detail is not None and [s.seq for s in detail.statements] == list(range(1, 201))
    assert all(s.sql == f"select {s.seq}" and s.started_at.tzinfo is not None for s in detail.statements)
    assert (await store.audit.verify_audit()).ok
    await recorder.aclose()


async def test_backlog_still_makes_the_recorder_unhealthy(store: Store) -> None:
    # Failing closed does not depend on where batches are written: past high_water the
    # proxy refuses statements (57P03) until the writer catches up.
    recorder = Recorder(store.sessions, flush_interval=10, batch_size=10, high_water=20, hard_limit=40)
    recorder.start()
    assert recorder._writer is not None
    sid = await recorder.start_session(SessionStart(GRANT))
    for seq in range(1, 20):
        recorder.record_statement(rec(sid, seq))
    assert recorder.healthy
    recorder.record_statement(rec(sid, 20))
    assert not recorder.healthy
    await recorder.flush()
    assert recorder.healthy
    await recorder.aclose()


async def test_backlog_slows_clients_before_failing_closed(store: Store) -> None:
    recorder = Recorder(store.sessions, flush_interval=10, batch_size=10, high_water=40, hard_limit=80, soft_limit=20,
                        writer_process=False)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    for seq in range(1, 20):
        recorder.record_statement(rec(sid, seq))
    assert not recorder.backlogged
    recorder.record_statement(rec(sid, 20))
    assert recorder.backlogged and recorder.healthy  # slowed down, not refused
    await asyncio.wait_for(recorder.caught_up(), 10)
    assert not recorder.backlogged and recorder.pending < 10
    await recorder.aclose()


async def test_caught_up_returns_when_the_recorder_turns_unhealthy(tmp_path: Path) -> None:
    class DownStore:
        async def record_statements(self, records: Any) -> None:
            from broker.exceptions import StoreUnavailable

            raise StoreUnavailable("down")

    recorder = Recorder(DownStore(), flush_interval=0.01, batch_size=2, high_water=10, hard_limit=20,  # type: ignore[arg-type]
                        soft_limit=4, unhealthy_after=0.2)
    recorder.start()
    for seq in range(1, 5):
        recorder.record_statement(rec("s", seq))
    assert recorder.backlogged
    # Held clients are let go once the store has been failing long enough: their statements
    # are then refused (57P03) instead of waiting forever.
    await asyncio.wait_for(recorder.caught_up(), 5)
    assert not recorder.healthy
    recorder.close_timeout = 0.1
    await recorder.aclose()


@pytest.mark.parametrize("writer_process", [True, False], ids=["child", "in-process"])
async def test_the_proxys_rows_are_stored_as_the_records_they_stand_for(store: Store, writer_process: bool) -> None:
    """The relay hands statements over as rows (`RecorderSink.statement` -> `record_row`):
    stored through the writer process or from this one, mixed with records in a batch, each
    is the `StatementRecord` the event describes: every field, the wall-clock start to the
    microsecond, the decisions as strings, and its counts in the metrics."""
    sink = RecorderSink(Recorder(store.sessions, flush_interval=0.05, writer_process=writer_process))
    recorder = sink._recorder
    recorder.start()
    if recorder._writer is not None:
        await ready(recorder._writer)
    assert (recorder._writer is not None) == writer_process
    sid = await sink.session_started(SessionStart(GRANT))
    started = time.monotonic()
    events = [
        StatementEvent(sql="select 1", verdict=Verdict(Decision.ALLOW, "r/allow", "read"), started=started,
                       duration=0.0123456, rows=3, masked=2, error_sqlstate=None),
        StatementEvent(sql="delete from t", verdict=Verdict(Decision.BLOCK, "r/block", "write", Decision.REVIEW),
                       started=started + 0.5, duration=0.0, rows=None, masked=0, error_sqlstate="42501",
                       results=[{"columns": ["a"], "rows": [["x"]], "truncated": False}], approval_id="ap-1"),
    ]
    before = {d: metrics.REGISTRY.get_sample_value("jitgate_statements_total", {"decision": d}) or 0
              for d in ("allow", "block")}
    masked_before = metrics.REGISTRY.get_sample_value("jitgate_masked_values_total") or 0
    sink.statement(sid, events[0])
    recorder.record_statement(rec(sid, 2))  # a record between rows, in one batch
    sink._seq[sid] = 2
    sink.statement(sid, events[1])
    await recorder.flush()
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    one, two, three = detail.statements
    wall = sink._offset + started
    assert (one.seq, one.sql, one.decision, one.rule, one.reason, one.shadow_decision) == (
        1, "select 1", "allow", "r/allow", "read", None)
    assert one.started_at == datetime.fromtimestamp(wall, UTC)
    assert (one.duration_ms, one.rows, one.masked_values, one.error_sqlstate, one.approval_id) == (
        12.346, 3, 2, None, None)
    assert (two.seq, two.sql) == (2, "select 2")
    assert (three.seq, three.decision, three.shadow_decision, three.duration_ms, three.rows) == (
        3, "block", "review", None, None)
    assert three.started_at == datetime.fromtimestamp(wall + 0.5, UTC)
    assert (three.error_sqlstate, three.approval_id, three.results) == ("42501", "ap-1", events[1].results)
    chained = [r async for r in store.audit.iter_audit() if r.type == "statement" and r.session_id == sid]
    assert [(r.data["seq"], r.data["decision"]) for r in chained] == [(1, "allow"), (2, "allow"), (3, "block")]
    assert (metrics.REGISTRY.get_sample_value("jitgate_statements_total", {"decision": "allow"}) or 0) == before[
        "allow"] + 2
    assert (metrics.REGISTRY.get_sample_value("jitgate_statements_total", {"decision": "block"}) or 0) == before[
        "block"] + 1
    assert (metrics.REGISTRY.get_sample_value("jitgate_masked_values_total") or 0) == masked_before + 2
    await recorder.aclose()


def test_a_rows_counted_fields_are_where_the_record_has_them() -> None:
    """`record_row` reads decision, masked values and duration by position: the positions are
    the dataclass's, and a row turns into the record with the same fields."""
    names = [f.name for f in dataclasses.fields(StatementRecord)]
    assert names[records_mod.ROW_DECISION] == "decision"
    assert names[records_mod.ROW_MASKED_VALUES] == "masked_values"
    assert names[records_mod.ROW_DURATION_MS] == "duration_ms"
    assert names[records_mod.ROW_STARTED_AT] == "started_at"
    record = rec("s", 7)
    row = (*record_fields(record)[:4], record.started_at.timestamp(),
           *record_fields(record)[5:])
    assert statement_record(row) == record
    assert statement_record(record_fields(record)) == record
    assert statement_record(record) is record
