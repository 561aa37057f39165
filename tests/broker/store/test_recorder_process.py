"""The recorder's writer process: batches are written by a child with its own connection,
and nothing about recording changes (every statement stored and chained, failures retried,
backpressure as before)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.store import Grant, SessionStart, StatementRecord, Store
from broker.store.recorder import ProcessWriter, Recorder

GRANT = Grant(
    token_id=None, principal="agent:proc", groups=("ai-agents",), resource="demo", role="readwrite",
    expires_at=datetime(2031, 1, 1, tzinfo=UTC), reusable=True,
)


def rec(session_id: str, seq: int) -> StatementRecord:
    return StatementRecord(session_id=session_id, seq=seq, sql=f"select {seq}", decision="allow",
                           started_at=datetime.now(UTC), duration_ms=0.5, rows=1)


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
        recorder.record_statement(rec(sid, seq))
    await asyncio.wait_for(recorder.flush(), 60)
    detail = await store.sessions.get_session(sid)
    assert detail is not None and [s.seq for s in detail.statements] == list(range(1, 201))
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
