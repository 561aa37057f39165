from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker import metrics
from broker.exceptions import RecorderClosed, StoreUnavailable
from broker.store import Grant, SessionStats, StatementRecord, Store
from broker.store.recorder import Recorder
from broker.store.records import SessionEnd, SessionStart, StatementRow

GRANT = Grant(
    token_id=None,
    principal="agent:rec",
    groups=("ai-agents",),
    resource="demo",
    role="readwrite",
    expires_at=datetime(2031, 1, 1, tzinfo=UTC),
    reusable=True,
)


class FlakyStore:
    """The real store behind a switch that makes `record_statements` fail like an outage."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.batches: list[int] = []
        self.failures = 0

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        if self.down:
            self.failures += 1
            raise StoreUnavailable("record statements: store unavailable (ConnectionRefused)")
        self.batches.append(len(records))
        await self.store.sessions.record_statements(records)

    async def start_session(self, start: SessionStart) -> str:
        return await self.store.sessions.start_session(start)

    async def end_session(
        self, session_id: str, *, reason: str, stats: SessionStats | None = None
    ) -> bool:
        return await self.store.sessions.end_session(session_id, reason=reason, stats=stats)

    async def start_sessions(self, starts: Sequence[SessionStart]) -> list[str]:
        if self.down:
            raise StoreUnavailable("start session: store unavailable (ConnectionRefused)")
        return await self.store.sessions.start_sessions(starts)

    async def end_sessions(self, ends: Sequence[SessionEnd]) -> list[bool]:
        return await self.store.sessions.end_sessions(ends)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/rec.db")
    yield s
    await s.close()


@pytest.fixture
def flaky(store: Store) -> FlakyStore:
    return FlakyStore(store)


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def rec(session_id: str, seq: int, **kw: object) -> StatementRecord:
    return StatementRecord(
        session_id=session_id,
        seq=seq,
        sql=f"select {seq}",
        decision=kw.pop("decision", "allow"),  # type: ignore[arg-type]
        started_at=datetime.now(UTC),
        **kw,  # type: ignore[arg-type]
    )


async def recorded(store: Store, session_id: str) -> list[int]:
    detail = await store.sessions.get_session(session_id)
    assert detail is not None
    return [s.seq for s in detail.statements]


async def test_records_are_batched_and_written_in_background(
    store: Store, flaky: FlakyStore
) -> None:
    recorder = Recorder(flaky, flush_interval=0.05, batch_size=100, high_water=1000)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT, application_name="psql"))
    started = time.perf_counter()
    for seq in range(1, 251):
        recorder.record_statement(rec(sid, seq))
    # The hot path only appends: 250 records take well under a millisecond each.
    assert time.perf_counter() - started < 0.25
    assert recorder.pending == 250 and flaky.batches == []

    await recorder.flush()
    assert recorder.pending == 0
    assert flaky.batches == [100, 100, 50]
    assert await recorded(store, sid) == list(range(1, 251))
    await recorder.aclose()


async def test_a_lone_record_is_written_after_the_flush_interval(
    store: Store, flaky: FlakyStore
) -> None:
    recorder = Recorder(flaky, flush_interval=0.05, batch_size=100, high_water=1000)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    recorder.record_statement(rec(sid, 1))
    for _ in range(100):
        if flaky.batches:
            break
        await asyncio.sleep(0.01)
    assert flaky.batches == [1]
    assert await recorded(store, sid) == [1]
    await recorder.aclose()


async def test_records_arriving_during_a_write_wait_for_the_next_interval(
    store: Store, flaky: FlakyStore
) -> None:
    # A steady trickle (one client): each write takes a while, and what arrives meanwhile
    # must not go out at once in a batch of a few (a batch costs ~0.5 ms of CPU however
    # small): it waits for the interval, or for a full batch.
    recorder = Recorder(flaky, flush_interval=0.1, batch_size=1000, high_water=5000, writer_process=False)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    slow = flaky.record_statements

    async def write_slowly(records: Sequence[StatementRecord]) -> None:
        await asyncio.sleep(0.02)
        await slow(records)

    flaky.record_statements = write_slowly  # type: ignore[method-assign]
    seq = 0
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        seq += 1
        recorder.record_statement(rec(sid, seq))
        await asyncio.sleep(0.002)
    await recorder.flush()
    # About one write per interval: 0.5 s / 0.1 s, and the flush. Back to back it was ~20.
    assert len(flaky.batches) <= 8, flaky.batches
    assert sum(flaky.batches) == seq
    assert await recorded(store, sid) == list(range(1, seq + 1))
    await recorder.aclose()


async def test_store_outage_loses_nothing_and_turns_unhealthy(
    store: Store, flaky: FlakyStore
) -> None:
    recorder = Recorder(
        flaky,
        flush_interval=0.01,
        batch_size=10,
        high_water=50,
        unhealthy_after=0.1,
        max_backoff=0.02,
    )
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    assert recorder.healthy
    failures_before = sample("jitgate_recorder_flush_failures_total")

    flaky.down = True
    for seq in range(1, 21):
        recorder.record_statement(rec(sid, seq))
    await asyncio.sleep(0.25)
    assert flaky.failures >= 2  # retried
    assert sample("jitgate_recorder_flush_failures_total") >= failures_before + 2
    assert recorder.pending == 20
    assert not recorder.healthy  # failing longer than unhealthy_after: refuse statements
    assert not recorder.overloaded

    flaky.down = False
    await asyncio.wait_for(recorder.flush(), 2)
    assert recorder.healthy
    assert await recorded(store, sid) == list(range(1, 21))
    assert recorder.dropped == 0
    await recorder.aclose()


async def test_backlog_over_high_water_is_overloaded_but_kept(
    store: Store, flaky: FlakyStore
) -> None:
    recorder = Recorder(flaky, flush_interval=0.01, batch_size=5, high_water=10, hard_limit=15)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    flaky.down = True
    for seq in range(1, 11):
        recorder.record_statement(rec(sid, seq))
    assert recorder.overloaded and not recorder.healthy
    # Past the hard limit new records are dropped and counted: memory stays bounded.
    for seq in range(11, 21):
        recorder.record_statement(rec(sid, seq))
    assert recorder.pending == 15 and recorder.dropped == 5
    await asyncio.sleep(0.05)  # the writer keeps failing meanwhile, and keeps the records
    assert flaky.failures >= 1
    assert recorder.pending == 15 and recorder.dropped == 5

    flaky.down = False
    await asyncio.wait_for(recorder.flush(), 2)
    assert not recorder.overloaded and recorder.healthy
    assert await recorded(store, sid) == list(range(1, 16))
    await recorder.aclose()


async def test_a_bad_record_is_dropped_without_blocking_the_others(store: Store) -> None:
    recorder = Recorder(store.sessions, flush_interval=0.01, batch_size=10, high_water=100)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    recorder.record_statement(rec(sid, 1))
    recorder.record_statement(rec("no-such-session", 1))  # the store refuses this one
    recorder.record_statement(rec(sid, 2))
    await asyncio.wait_for(recorder.flush(), 2)
    assert recorder.dropped == 1
    assert await recorded(store, sid) == [1, 2]
    assert recorder.healthy
    await recorder.aclose()


@pytest.mark.parametrize("writer_process", [False, True], ids=["in-process", "writer-process"])
async def test_a_row_that_is_no_statement_is_dropped_without_stopping_the_writer(
    store: Store, writer_process: bool
) -> None:
    # Rows come from the proxy, but one that cannot be made a record (a start that is no time)
    # must cost that row only: not the writer task, which would leave recording stopped.
    recorder = Recorder(
        store.sessions, flush_interval=0.01, batch_size=10, high_water=100, writer_process=writer_process
    )
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))

    def row(seq: int, started: float) -> StatementRow:
        return (sid, seq, f"select {seq}", "allow", started, None, None, None, None, 0.5, 1, 0, None, None, None)

    recorder.record_row(row(1, time.time()))
    recorder.record_row(row(2, float("nan")))
    recorder.record_row(row(3, time.time()))
    await asyncio.wait_for(recorder.flush(), 30)
    assert recorder.dropped == 1 and recorder.healthy
    recorder.record_row(row(4, time.time()))
    await asyncio.wait_for(recorder.flush(), 30)
    assert await recorded(store, sid) == [1, 3, 4]
    assert (await store.audit.verify_audit()).ok
    await recorder.aclose()


async def test_end_session_writes_statements_first(store: Store) -> None:
    recorder = Recorder(store.sessions, flush_interval=10, batch_size=100, high_water=1000)
    recorder.start()
    active_before = sample("jitgate_sessions_active")
    sid = await recorder.start_session(SessionStart(GRANT))
    assert sample("jitgate_sessions_active") == active_before + 1
    recorder.record_statement(rec(sid, 1))
    recorder.record_statement(rec(sid, 2))

    ended = await recorder.end_session(
        sid, reason="client closed", stats=SessionStats(statements=2, bytes_in=5, bytes_out=9)
    )
    assert ended
    assert sample("jitgate_sessions_active") == active_before
    detail = await store.sessions.get_session(sid)
    assert detail is not None and detail.session.end_reason == "client closed"
    assert [s.seq for s in detail.statements] == [1, 2]
    await recorder.aclose()


async def test_end_session_does_not_raise_when_the_store_fails(flaky: FlakyStore) -> None:
    recorder = Recorder(flaky, flush_interval=0.01, batch_size=10, high_water=100)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))

    async def down(*_a: object, **_k: object) -> bool:
        raise StoreUnavailable("end session: store unavailable (OSError)")

    flaky.end_sessions = down  # type: ignore[method-assign,assignment]
    assert await recorder.end_session(sid, reason="x") is False
    await recorder.aclose()


async def test_a_connect_burst_shares_transactions_and_every_session_is_recorded(store: Store) -> None:
    recorder = Recorder(store.sessions, writer_process=False)
    recorder.start()
    active_before = sample("jitgate_sessions_active")
    ids = await asyncio.gather(*(recorder.start_session(SessionStart(GRANT, client_addr=f"c{i}")) for i in range(100)))
    assert len(set(ids)) == 100
    assert recorder._starts.batches < 10  # not one transaction per session
    assert sample("jitgate_sessions_active") == active_before + 100
    assert len(await store.sessions.list_sessions(active_only=True, limit=1000)) == 100
    ended = await asyncio.gather(*(recorder.end_session(sid, reason="bye") for sid in ids))
    assert all(ended) and recorder._ends.batches < 10
    assert await store.sessions.list_sessions(active_only=True, limit=1000) == []
    assert (await store.audit.verify_audit()).ok
    await recorder.aclose()


class SlowStarts(FlakyStore):
    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.writing = asyncio.Event()

    async def start_sessions(self, starts: Sequence[SessionStart]) -> list[str]:
        self.writing.set()
        ids = await self.store.sessions.start_sessions(starts)
        await asyncio.sleep(0.05)  # committed; the answer is on its way back
        return ids


async def test_a_start_recorded_after_its_connection_gave_up_is_ended(store: Store) -> None:
    slow = SlowStarts(store)
    recorder = Recorder(slow, writer_process=False)
    recorder.start()
    gone = asyncio.ensure_future(recorder.start_session(SessionStart(GRANT, client_addr="gone")))
    await slow.writing.wait()
    gone.cancel()  # the client went away while its start was being written
    for _ in range(100):
        (orphan,) = await store.sessions.list_sessions(limit=10)
        if orphan.ended_at is not None:
            break
        await asyncio.sleep(0.02)
    assert orphan.client_addr == "gone" and orphan.end_reason == "client disconnected during connect"
    await recorder.aclose()


async def test_a_start_cancelled_while_queued_is_not_recorded(store: Store) -> None:
    slow = SlowStarts(store)
    recorder = Recorder(slow, writer_process=False)
    recorder.start()
    first = asyncio.ensure_future(recorder.start_session(SessionStart(GRANT, client_addr="first")))
    await slow.writing.wait()
    gone = asyncio.ensure_future(recorder.start_session(SessionStart(GRANT, client_addr="gone")))
    await asyncio.sleep(0)
    gone.cancel()
    sid = await first
    await asyncio.sleep(0.1)
    assert [s.client_addr for s in await store.sessions.list_sessions(limit=10)] == ["first"]
    await recorder.end_session(sid, reason="bye")
    await recorder.aclose()


async def test_aclose_writes_everything_then_refuses(store: Store) -> None:
    recorder = Recorder(store.sessions, flush_interval=10, batch_size=500, high_water=1000)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    for seq in range(1, 8):
        recorder.record_statement(rec(sid, seq))
    await recorder.aclose()
    assert await recorded(store, sid) == list(range(1, 8))
    assert not recorder.healthy
    with pytest.raises(RecorderClosed):
        recorder.record_statement(rec(sid, 8))


async def test_aclose_gives_up_after_close_timeout(flaky: FlakyStore) -> None:
    recorder = Recorder(
        flaky, flush_interval=0.01, batch_size=10, high_water=100, close_timeout=0.2
    )
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    flaky.down = True
    recorder.record_statement(rec(sid, 1))
    started = time.perf_counter()
    await recorder.aclose()
    assert time.perf_counter() - started < 1.5
    assert recorder.dropped == 1 and recorder.pending == 0


async def test_metrics_count_decisions_masking_and_durations(store: Store) -> None:
    recorder = Recorder(store.sessions)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    blocked = sample("jitgate_statements_total", decision="block")
    masked = sample("jitgate_masked_values_total")
    observed = sample("jitgate_statement_seconds_count")

    class Decision(str, enum.Enum):  # noqa: UP042 - shaped like broker.policy.Decision
        BLOCK = "block"

    recorder.record_statement(rec(sid, 1, decision=Decision.BLOCK, error_sqlstate="42501"))
    recorder.record_statement(rec(sid, 2, masked_values=3, duration_ms=12.0))
    assert sample("jitgate_statements_total", decision="block") == blocked + 1
    assert sample("jitgate_masked_values_total") == masked + 3
    assert sample("jitgate_statement_seconds_count") == observed + 1
    await recorder.aclose()


async def test_naive_started_at_is_refused_on_the_hot_path(store: Store) -> None:
    recorder = Recorder(store.sessions)
    with pytest.raises(ValueError, match="aware"):
        recorder.record_statement(
            StatementRecord(
                session_id="s", seq=1, sql="x", decision="allow", started_at=datetime(2030, 1, 1)
            )
        )
    await recorder.aclose()


def test_limits_must_be_ordered(store: Store) -> None:
    with pytest.raises(ValueError):
        Recorder(store.sessions, batch_size=100, high_water=10)


async def test_records_before_start_are_written_by_aclose(store: Store) -> None:
    recorder = Recorder(store.sessions)
    sid = await store.sessions.start_session(SessionStart(GRANT))
    recorder.record_statement(rec(sid, 1))
    await recorder.aclose()
    assert await recorded(store, sid) == [1]
