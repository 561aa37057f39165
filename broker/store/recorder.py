"""The proxy's recording sink: statements go to a buffer, a background task writes them.

The hot path (`record_row`, or `record_statement`) never awaits the store: it appends to an
in-memory deque and returns. A task started by `start()` writes batches with
`Store.sessions.record_statements` every `flush_interval` seconds, or as soon as `batch_size`
records wait. Session start and end are rare and awaited directly.

When the store fails, the batch stays at the head of the buffer and is retried with
exponential backoff (`0.05 s` doubling to `max_backoff`), logged each time; records are not
dropped for a transient failure, and a retried batch is not duplicated (the store ignores a
`(session_id, seq)` it already has). A batch that fails for another reason than the store
being unreachable (`StoreIntegrityError` for an unknown session, say) is retried record by
record and only the offending records are dropped, logged and counted: one bad record must
not stall recording for every session.

Backpressure, first by slowing clients down: `backlogged` turns true when `pending` reaches
`soft_limit` (half of `high_water` by default) and false again once the writer has brought it
under half of that; meanwhile the proxy stops reading from its clients (`caught_up()` says
when to resume), so statements are delayed rather than refused while the writer catches up.

Then failing closed: `healthy` turns false when `pending` reaches
`high_water`, or when the store has been failing for `unhealthy_after` seconds. The proxy
checks `healthy` before forwarding a statement and refuses it (SQLSTATE 57P03) while false:
what cannot be recorded is not run. Records keep being accepted past `high_water` (the
statements already ran); only past `hard_limit`, which a proxy honouring `healthy` never
reaches, are new records dropped and counted (`jitgate_recorder_dropped_total{cause=
"overflow"}`), bounding memory.

`aclose()` writes everything still buffered, waiting up to `close_timeout` seconds while the
store is failing; what is still unwritten then is logged as lost.

Where the writing runs: for a store on a file or a server (not an in-memory SQLite), batches
are written by a child process (`ProcessWriter`) with its own connection to the same store,
so that serialising, hashing the audit chain and the database work use another core instead
of the relay's event loop (under the GIL, a writer thread in the proxy's process stalls the
relay, and the relay stalls it). The buffer, `pending`, `healthy` and the retry logic stay
here, so backpressure and failing closed are unchanged: a batch counts as written only when
the child has committed it, and a child that dies is a transient store failure (the batch is
retried in a new child). Session start and end stay in this process. `writer_process=False`
(or JITGATE_RECORDER_PROCESS=0 in the environment) writes from this process instead.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import signal
import sqlite3
import time
import weakref
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from broker import metrics
from broker.backoff import Backoff
from broker.exceptions import RecorderClosed, StoreError, StoreUnavailable
from broker.store.base import enum_value, utcnow
from broker.store.group_commit import GroupCommit
from broker.store.records import (
    ROW_DECISION,
    ROW_DURATION_MS,
    ROW_MASKED_VALUES,
    SessionEnd,
    SessionStart,
    SessionStats,
    StatementRecord,
    StatementRow,
    record_fields,
    statement_record,
)

if TYPE_CHECKING:
    from broker.store import Store
    from broker.store.sessions import SessionRepository

log = structlog.get_logger("jitgate.recorder")

# Failures that say the store is away, not that a record is bad: retry, never drop.
_TRANSIENT = (StoreUnavailable, OSError, TimeoutError)


class RecordingStore(Protocol):
    """What the recorder writes through: `Store.sessions` (`SessionRepository`)."""

    async def record_statements(self, records: Sequence[StatementRecord | StatementRow]) -> None: ...

    async def start_session(self, start: SessionStart) -> str: ...

    async def end_session(
        self, session_id: str, *, reason: str, stats: SessionStats | None = None
    ) -> bool: ...

    async def start_sessions(self, starts: Sequence[SessionStart]) -> Sequence[str]: ...

    async def end_sessions(self, ends: Sequence[SessionEnd]) -> Sequence[bool]: ...


class ProcessWriter:
    """`record_statements` of a `SessionRepository`, run in a child process on the same store URL.

    The child opens its own `Store` (no migration: this process did it) and writes each batch
    with `Store.sessions.record_statements`, or, on a SQLite file, a plain sqlite3 connection
    set up as the store's are and `sessions.write_statements_sqlite` (what that method runs on
    aiosqlite's thread); so idempotence, the audit chain (appends serialised by the store's
    lock, across processes) and the errors are the store's own; they come back here as
    raised. The audit records the child appended are sent back only when this store has
    `audit_listeners` (the SIEM forwarder), which are then called here as after any commit.
    Session start and end go to this process's store directly.
    """

    def __init__(self, sessions: SessionRepository) -> None:
        self._store = sessions
        self._url = sessions.core.engine.url.render_as_string(hide_password=False)
        self._pool: ProcessPoolExecutor | None = None
        # Resolves, once the child is ready, to how it writes: "sqlite3" (a plain connection
        # to a SQLite file) or "store" (a `Store` of its own).
        self._ready: Future[str] | None = None

    @property
    def store(self) -> SessionRepository:
        return self._store

    def start(self, wait: float = 0.0) -> bool:
        """Start the child (it imports and connects in the background) unless it runs; with
        `wait`, block up to that many seconds until it is ready. True once it is ready."""
        if self._pool is None:
            # spawn: forking a process that runs an event loop and threads is not safe.
            self._pool = ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_open, initargs=(self._url,)
            )
            self._ready = self._pool.submit(_child_ping)
        assert self._ready is not None
        if wait > 0:
            with suppress(Exception):
                self._ready.result(timeout=wait)
        return self._ready.done() and self._ready.exception() is None

    def stop_now(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def record_statements(self, records: Sequence[StatementRecord | StatementRow]) -> None:
        self.start()
        assert self._pool is not None and self._ready is not None
        if not self._ready.done():
            # A new child (after one died) is starting; meanwhile write from here.
            await self._store.record_statements(records)
            return
        keep = bool(self._store.core.audit_listeners)
        try:
            # As plain tuples (the proxy's rows already are): pickling dataclass instances
            # costs three times as much, and it happens in this process, under the GIL the
            # relay needs.
            rows = [r if r.__class__ is tuple else record_fields(r) for r in records]
            appended = await asyncio.wrap_future(self._pool.submit(_child_record, rows, keep))
        except BrokenProcessPool as exc:
            # The child died (killed, out of memory, failed to connect): a transient failure;
            # the recorder retries the batch, in a new child.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            raise StoreUnavailable("the recorder's writer process exited") from exc
        if appended:
            for listener in self._store.core.audit_listeners:
                listener(appended)

    async def start_session(self, start: SessionStart) -> str:
        return await self._store.start_session(start)

    async def end_session(self, session_id: str, *, reason: str, stats: SessionStats | None = None) -> bool:
        return await self._store.end_session(session_id, reason=reason, stats=stats)

    async def start_sessions(self, starts: Sequence[SessionStart]) -> list[str]:
        return await self._store.start_sessions(starts)

    async def end_sessions(self, ends: Sequence[SessionEnd]) -> list[bool]:
        return await self._store.end_sessions(ends)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


# -- the writer process's side ----------------------------------------------------------------

_child: dict[str, Any] = {}


def _child_open(url: str) -> None:
    # Ctrl-C (or a service manager's SIGTERM) reaches the whole process group; the parent
    # decides when writing stops, after its last batch. If the parent dies, the child's end
    # of the pipe closes and it exits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not parsed.query:
        # A SQLite file: written on this thread through a plain connection, set up as the
        # store's are. An engine would add an event loop, a pool checkout and a hop to
        # aiosqlite's thread to every batch (~1.5 µs a statement at full batches).
        from broker.store.db import configure_sqlite

        db = sqlite3.connect(parsed.database, check_same_thread=False)
        configure_sqlite(db, in_memory=False)
        _child["db"] = db
        return
    from broker.store import Store

    loop = asyncio.new_event_loop()
    _child["loop"] = loop
    _child["store"] = loop.run_until_complete(Store.open(url, migrate=False))


def _child_ping() -> str:
    return "sqlite3" if "db" in _child else "store"


def _child_record(rows: list[tuple[Any, ...]], keep: bool) -> list[Any]:
    db: sqlite3.Connection | None = _child.get("db")
    if db is not None:
        from broker.store.sessions import write_statements_sqlite

        return write_statements_sqlite(db, rows, utcnow(), keep)
    loop: asyncio.AbstractEventLoop = _child["loop"]
    store: Store = _child["store"]
    appended: list[Any] = []
    store.audit_listeners[:] = [appended.extend] if keep else []
    # As they came: the SQLite store writes rows without making records of them first.
    loop.run_until_complete(store.sessions.record_statements(rows))
    return appended


def _not_transient(exc: Exception) -> bool:
    return not isinstance(exc, _TRANSIENT)


def _use_process(store: object) -> bool:
    """A child process can reach the same store: a `SessionRepository` on a file or a server,
    with the real clock (a test's fake clock would not follow it into the child)."""
    from broker.store.sessions import SessionRepository

    if not isinstance(store, SessionRepository) or store.core.clock is not utcnow:
        return False
    if os.environ.get("JITGATE_RECORDER_PROCESS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    url = store.core.engine.url
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        return database not in ("", ":memory:") and url.query.get("mode") != "memory"
    return True


class Recorder:
    def __init__(
        self,
        store: RecordingStore,
        *,
        flush_interval: float = 0.2,
        batch_size: int = 500,
        high_water: int = 10_000,
        hard_limit: int = 100_000,
        unhealthy_after: float = 5.0,
        max_backoff: float = 5.0,
        close_timeout: float = 10.0,
        writer_process: bool | None = None,
        writer_start_timeout: float = 30.0,
        soft_limit: int | None = None,
    ) -> None:
        """`writer_process`: write batches from a child process (see the module docstring);
        None decides by the store (yes for `Store.sessions` on a file or a server)."""
        if not 0 < batch_size <= high_water <= hard_limit:
            raise ValueError("need 0 < batch_size <= high_water <= hard_limit")
        self.soft_limit = soft_limit if soft_limit is not None else max(1, high_water // 2)
        if not 0 < self.soft_limit <= high_water:
            raise ValueError("need 0 < soft_limit <= high_water")
        self._resume_below = max(1, self.soft_limit // 2)
        if writer_process is None:
            writer_process = _use_process(store)
        self.writer_start_timeout = writer_start_timeout
        self._writer: ProcessWriter | None = None
        if writer_process:
            self._writer = ProcessWriter(store)  # type: ignore[arg-type]
            store = self._writer
        self._store = store
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.high_water = high_water
        self.hard_limit = hard_limit
        self.unhealthy_after = unhealthy_after
        self.max_backoff = max_backoff
        self.close_timeout = close_timeout

        # Records and rows as they came (`record_statement`, `record_row`): a batch goes to the
        # writer process as they are, to any other store as records.
        self._buffer: deque[StatementRecord | StatementRow] = deque()
        self._accepted = 0  # records ever accepted into the buffer
        self._settled = 0  # of those, written or dropped as invalid
        self._flush_to = 0  # a flush() waits until this many are settled: no waiting between batches
        self._dropped = 0
        self._failing_since: float | None = None
        self._nonempty = asyncio.Event()
        self._urgent = asyncio.Event()
        self._progress = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._caught_up.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        # Session starts and ends of a connect (or disconnect) burst share transactions.
        self._orphans: set[asyncio.Task[bool]] = set()
        self._starts: GroupCommit[SessionStart, str] = GroupCommit(
            lambda starts: self._store.start_sessions(starts), abandoned=self._start_abandoned, isolate=_not_transient
        )
        self._ends: GroupCommit[SessionEnd, bool] = GroupCommit(
            lambda ends: self._store.end_sessions(ends), isolate=_not_transient
        )

    # -- hot path ---------------------------------------------------------------------------

    def record_statement(self, record: StatementRecord) -> None:
        """Queue one statement for writing. Never blocks; raises `RecorderClosed` after close."""
        if self._closing:
            raise RecorderClosed("recorder is closed")
        if record.started_at.tzinfo is None:
            # Caught here, in the caller's stack, rather than as a dropped record later.
            raise ValueError("StatementRecord.started_at must be an aware datetime")
        self._count(record)
        self._accept(record)

    def record_row(self, row: StatementRow) -> None:
        """`record_statement` for a statement in the proxy's form (`StatementRow`): what the
        relay calls for every statement, so it is built and counted without a dataclass."""
        if self._closing:
            raise RecorderClosed("recorder is closed")
        metrics.STATEMENT_TALLY.count(row[ROW_DECISION], row[ROW_MASKED_VALUES], row[ROW_DURATION_MS])
        self._accept(row)

    def _accept(self, item: StatementRecord | StatementRow) -> None:
        if len(self._buffer) >= self.hard_limit:
            self._dropped += 1
            metrics.RECORDER_DROPPED.labels(cause="overflow").inc()
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.error("recorder over its hard limit: dropping records", dropped=self._dropped)
            return
        self._buffer.append(item)
        self._accepted += 1
        self._nonempty.set()
        pending = len(self._buffer)
        if pending >= self.batch_size:
            self._urgent.set()
            if pending >= self.soft_limit and self._caught_up.is_set():
                self._caught_up.clear()
                log.warning("recorder behind: slowing clients down", pending=pending)

    def _count(self, record: StatementRecord) -> None:
        decision = record.decision
        if decision.__class__ is not str:  # the proxy gives the string, tests an Enum
            decision = enum_value(decision)
        metrics.STATEMENT_TALLY.count(decision, record.masked_values, record.duration_ms)

    # -- state ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records accepted and not yet written."""
        return len(self._buffer)

    @property
    def dropped(self) -> int:
        """Records lost: refused by the store as invalid, or over the hard limit."""
        return self._dropped

    @property
    def overloaded(self) -> bool:
        return len(self._buffer) >= self.high_water

    @property
    def backlogged(self) -> bool:
        """True from `soft_limit` pending records until the writer has halved that: clients
        should be read from no further until `caught_up()` returns."""
        return not self._caught_up.is_set()

    async def caught_up(self) -> None:
        """Return once the backlog is under half of `soft_limit` again, or once the recorder
        is unhealthy (then the held statements are refused, 57P03, rather than kept waiting)."""
        while not self._caught_up.is_set() and self.healthy:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), 0.25)

    @property
    def healthy(self) -> bool:
        """False while statements should be refused: backlog too deep or the store failing."""
        if self._task is None or self._task.done() or self._closing or self.overloaded:
            return False
        failing = self._failing_since
        return failing is None or time.monotonic() - failing < self.unhealthy_after

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task (call from the event loop that will record)."""
        if self._task is not None:
            raise RuntimeError("recorder already started")
        # The backlog gauge reads the buffer when scraped: exact during an outage (when the
        # writer never gets to update a gauge) and nothing to pay per statement.
        this = weakref.ref(self)
        metrics.RECORDER_PENDING.set_function(lambda: len(r._buffer) if (r := this()) is not None else 0)
        if self._writer is not None and not self._writer.start(wait=self.writer_start_timeout):
            # Blocks (before the proxy serves) while the child starts, about a second: until
            # it is ready, batches would be written from here, which under full load falls
            # behind. A child that cannot start leaves recording in this process.
            log.warning("recorder writer process did not start; writing from the proxy process")
            self._writer.stop_now()
            self._store = self._writer.store
            self._writer = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name="jitgate-recorder")

    async def flush(self) -> None:
        """Return once every record accepted before this call is written (or dropped)."""
        target = self._accepted
        self._flush_to = max(self._flush_to, target)
        while self._settled < target:
            if self._task is None or self._task.done():
                raise RecorderClosed("recorder is not running")
            self._urgent.set()
            self._progress.clear()
            await self._progress.wait()

    async def aclose(self) -> None:
        """Write what is buffered (waiting at most `close_timeout`), then stop."""
        if self._closing:
            return
        self._closing = True
        self._nonempty.set()
        self._urgent.set()
        task = self._task
        if task is None:
            # Never started: write what there is, once.
            self._task = asyncio.get_running_loop().create_task(self._run())
            task = self._task
        try:
            await asyncio.wait_for(asyncio.shield(task), self.close_timeout)
        except TimeoutError:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self._buffer:
            lost = len(self._buffer)
            self._dropped += lost
            metrics.RECORDER_DROPPED.labels(cause="shutdown").inc(lost)
            log.error("recorder closed with unwritten records", lost=lost)
            self._buffer.clear()
        self._progress.set()
        self._caught_up.set()  # nobody waits for a closed recorder: statements get RecorderClosed
        if self._writer is not None:
            await self._writer.aclose()

    # -- sessions (rare: awaited directly) --------------------------------------------------

    async def start_session(self, start: SessionStart) -> str:
        """Record a session start; raises `StoreError` (the proxy refuses the session)."""
        session_id = await self._starts.submit(start)
        metrics.SESSIONS_ACTIVE.inc()
        return session_id

    def _start_abandoned(self, start: SessionStart, session_id: str) -> None:
        """A start was recorded for a connection that was gone by then: record its end."""
        metrics.SESSIONS_ACTIVE.inc()  # end_session counts it down again
        task = asyncio.ensure_future(self.end_session(session_id, reason="client disconnected during connect"))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def end_session(
        self,
        session_id: str,
        *,
        reason: str,
        stats: SessionStats | None = None,
        flush_timeout: float = 2.0,
    ) -> bool:
        """Record a session end after its statements; never raises, returns False on failure.

        Waits up to `flush_timeout` for buffered statements to be written first, so a reader
        who sees the session ended also sees its statements.
        """
        metrics.SESSIONS_ACTIVE.dec()
        with suppress(TimeoutError, RecorderClosed):
            await asyncio.wait_for(self.flush(), flush_timeout)
        try:
            return await self._ends.submit(SessionEnd(session_id, reason, stats))
        except StoreError as exc:
            log.error("could not record session end", session_id=session_id, error=str(exc))
            return False

    # -- writer task ------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._nonempty.wait()
            if not self._urgent.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval)
            self._urgent.clear()
            await self._drain()
            if not self._buffer:
                self._nonempty.clear()
                if self._closing:
                    return

    async def _drain(self) -> None:
        backoff = Backoff(0.05, self.max_backoff)
        while self._buffer:
            n = min(self.batch_size, len(self._buffer))
            batch: list[Any] = list(itertools.islice(self._buffer, n))
            try:
                try:
                    # Inside the try: a row that is not a record (a start that is no time)
                    # is dropped below like any record the store refuses, not the end of
                    # this task.
                    items = batch if self._writer is not None else [statement_record(item) for item in batch]
                    await self._store.record_statements(items)
                except _TRANSIENT:
                    raise
                except Exception:
                    # Not the store being away: some record is bad. Find it, keep the rest.
                    await self._write_singly(batch)
            except _TRANSIENT as exc:
                metrics.RECORDER_FLUSH_FAILURES.inc()
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                log.warning(
                    "recorder could not write statements; retrying",
                    error=str(exc) or type(exc).__name__,
                    pending=len(self._buffer),
                    retry_in=backoff.delay,
                )
                await backoff.wait()
                continue
            for _ in range(n):
                self._buffer.popleft()
            if len(self._buffer) < self._resume_below:
                self._caught_up.set()
            self._settled += n
            self._failing_since = None
            backoff.reset()
            self._progress.set()
            if len(self._buffer) < self.batch_size and not self._closing and self._settled >= self._flush_to:
                # Group commit: what arrived while this batch was written waits for the next
                # interval (or a full batch) instead of going out at once in a batch of a few.
                # A batch costs ~0.5 ms of CPU however small; back to back, at one client,
                # they cost ten times the records' own work.
                return

    async def _write_singly(self, batch: list[Any]) -> None:
        # A transient error propagates to _drain's retry; rows already written are not
        # duplicated on the retry.
        for item in batch:
            try:
                await self._store.record_statements([statement_record(item)])
            except _TRANSIENT:
                raise
            except Exception as exc:
                self._dropped += 1
                metrics.RECORDER_DROPPED.labels(cause="invalid").inc()
                session_id, seq = (*item, None, None)[:2] if isinstance(item, tuple) else (item.session_id, item.seq)
                log.error(
                    "store refused a statement record; dropped",
                    session_id=session_id,
                    seq=seq,
                    error=str(exc) or type(exc).__name__,
                )
