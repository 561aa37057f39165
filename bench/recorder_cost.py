"""CPU per recorded statement, split by where it goes, against the 10 µs target.

    .venv/bin/python bench/recorder_cost.py [--quick] [--no-postgres]

Every number is CPU time (`time.thread_time`/`process_time`, or /proc for other processes),
not wall time, in µs per statement, the median of a few rounds. pgbench's statement
(`SELECT abalance FROM pgbench_accounts WHERE aid = $1;`) as the proxy records it: allowed,
with rule, reason, fingerprint, a duration and one row, spread over 8 sessions.

(a) relay hand-off: `RecorderSink.statement` (builds the `StatementRow`) and
    `Recorder.record_row` (checks, the metrics' plain-int tally, the buffer), on a recorder
    whose writer task is not started.
(b) hand-over to the writer process: the batch of rows pickled and unpickled (the child
    writes the rows as they are), then the real thing: a `ProcessWriter` writing to a SQLite store,
    the relay process's CPU (its event loop and the pool's threads) and the child's (/proc).
(c) the writer on a SQLite file store: `write_statements_sqlite` of the rows on a plain
    connection, as the writer process runs it, split into the time inside the sqlite3
    module's `execute` (binding and SQLite) and the Python around it
    (`statement_batch.build`: the rows and the records' JSON; `chain_rows`: the chain); and,
    for comparison, `record_statements` through the store's engine (aiosqlite), as a
    recorder writing from the proxy's own process does.
(d) the writer on PostgreSQL (a scratch database, dropped after): `record_statements`, the
    writer's CPU (SQLAlchemy, asyncpg, the chain) and the server backend's (/proc).

The totals add (a), (b)'s two halves and the writer; the target counts recording and
chaining, on whichever cores it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import pickle
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from broker import metrics  # noqa: E402
from broker.policy.model import Decision, Verdict  # noqa: E402
from broker.store import Grant, SessionStart, StatementRecord, Store  # noqa: E402
from broker.store import audit as audit_mod  # noqa: E402
from broker.store import recorder as recorder_mod  # noqa: E402
from broker.store import sessions as sessions_mod  # noqa: E402
from broker.store import statement_batch as batch_mod  # noqa: E402
from broker.store.db import configure_sqlite  # noqa: E402
from broker.store.recorder import ProcessWriter, Recorder  # noqa: E402
from broker.store.records import StatementRow, record_fields  # noqa: E402
from proxy.records import StatementEvent  # noqa: E402
from proxy.wiring import RecorderSink  # noqa: E402

TARGET_US = 10.0
SESSIONS = 8
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
FINGERPRINT = hashlib.sha256(SQL.encode()).hexdigest()
RULE, REASON = "agent-safe/read", "read-only"
GRANT = Grant(
    token_id=None, principal="agent:bench", groups=("ai-agents",), resource="bench", role="readwrite",
    expires_at=datetime(2031, 1, 1, tzinfo=UTC), reusable=True,
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _row(record: StatementRecord) -> StatementRow:
    """`record` as a StatementRow: its fields, the start as epoch seconds."""
    fields = record_fields(record)
    return (*fields[:4], record.started_at.timestamp(), *fields[5:])  # type: ignore[return-value]


class Records:
    """Fresh records for `sessions` (each session's seq goes on from where it stopped)."""

    def __init__(self, sessions: list[str]) -> None:
        self.sessions = sessions
        self.seq = dict.fromkeys(sessions, 0)
        self.t = datetime.now(UTC)
        self.rng = random.Random(7)

    def batch(self, n: int) -> list[StatementRecord]:
        out = []
        for i in range(n):
            sid = self.sessions[i % len(self.sessions)]
            self.seq[sid] += 1
            self.t += timedelta(microseconds=37)
            out.append(StatementRecord(
                session_id=sid, seq=self.seq[sid], sql=SQL, decision="allow", started_at=self.t,
                fingerprint=FINGERPRINT, rule=RULE, reason=REASON, duration_ms=0.052, rows=1,
            ))
        return out

    def rows(self, n: int) -> list[StatementRow]:
        """As `batch`, in the form the relay hands over (`RecorderSink.statement`)."""
        return [_row(r) for r in self.batch(n)]

    def row_batches(self, total: int, size: str) -> list[list[StatementRow]]:
        """`batches` of rows."""
        return [[_row(r) for r in b] for b in self.batches(total, size)]

    def batches(self, total: int, size: str) -> list[list[StatementRecord]]:
        """About `total` records in batches of `size` ("500"), or of random sizes ("1-500"):
        the recorder's batches below full load, when `flush_interval` cuts them."""
        if "-" not in size:
            return [self.batch(int(size)) for _ in range(max(1, total // int(size)))]
        lo, hi = (int(x) for x in size.split("-"))
        out: list[list[StatementRecord]] = []
        while sum(map(len, out)) < total:
            out.append(self.batch(self.rng.randint(lo, hi)))
        return out


def median_us(samples: list[tuple[float, int]]) -> float:
    """Median over rounds of (CPU seconds, statements) as µs per statement."""
    return statistics.median(seconds / n * 1e6 for seconds, n in samples)


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (clock ticks: 10 ms resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Sections:
    """Rows of the result table: (section, name, where, {batch size: µs})."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, dict[str, float]]] = []

    def add(self, section: str, name: str, where: str, values: dict[str, float]) -> None:
        self.rows.append((section, name, where, values))

    def get(self, name: str) -> dict[str, float]:
        return next(values for _, n, _, values in self.rows if n == name)


# -- (a) the relay's hand-off -----------------------------------------------------------------


class _NullStore:
    async def record_statements(self, records: Any) -> None: ...
    async def start_session(self, start: Any) -> str: return ""
    async def end_session(self, session_id: str, *, reason: str, stats: Any = None) -> bool: return True
    async def start_sessions(self, starts: Any) -> list[str]: return []
    async def end_sessions(self, ends: Any) -> list[bool]: return []


def hand_off(total: int, rounds: int) -> dict[str, float]:
    recorder = Recorder(
        _NullStore(), writer_process=False, high_water=10**7, hard_limit=10**7, soft_limit=10**7
    )
    sink = RecorderSink(recorder)
    sids = [secrets.token_hex(16) for _ in range(SESSIONS)]
    verdict = Verdict(Decision.ALLOW, RULE, REASON)
    start = time.monotonic()
    events = [
        (sids[i % SESSIONS], StatementEvent(
            sql=SQL, verdict=verdict, started=start + i * 1e-5, duration=0.000052, rows=1, masked=0,
            error_sqlstate=None,
        ))
        for i in range(total)
    ]
    records = Records(sids).rows(total)
    out: dict[str, list[tuple[float, int]]] = {"sink": [], "record": [], "count": []}
    for _ in range(rounds + 1):  # the first round warms up
        recorder._buffer.clear()
        statement = sink.statement
        t = time.thread_time()
        for sid, event in events:
            statement(sid, event)
        out["sink"].append((time.thread_time() - t, total))
        recorder._buffer.clear()
        record = recorder.record_row
        t = time.thread_time()
        for r in records:
            record(r)
        out["record"].append((time.thread_time() - t, total))
        recorder._buffer.clear()
        count = metrics.STATEMENT_TALLY.count
        t = time.thread_time()
        for r in records:
            count(r[3], r[11], r[9])
        out["count"].append((time.thread_time() - t, total))
    recorder._buffer.clear()
    return {k: median_us(v[1:]) for k, v in out.items()}


# -- (b) pickling to the child ----------------------------------------------------------------


def pickling(records: Records, total: int, size: str, rounds: int) -> tuple[float, float]:
    """(parent: pickle the rows, child: unpickle them), µs per statement."""
    batches = records.row_batches(total, size)
    n = sum(map(len, batches))
    parent: list[tuple[float, int]] = []
    child: list[tuple[float, int]] = []
    for _ in range(rounds):
        t = time.thread_time()
        blobs = [bytes(ForkingPickler.dumps((recorder_mod._child_record, list(b), False))) for b in batches]
        parent.append((time.thread_time() - t, n))
        t = time.thread_time()
        for blob in blobs:
            pickle.loads(blob)
        child.append((time.thread_time() - t, n))
    return median_us(parent), median_us(child)


async def process_writer(url: str, records: Records, total: int, size: str, rounds: int) -> tuple[float, float]:
    """A real ProcessWriter on `url`: (relay process CPU, writer process CPU) per statement."""
    store = await Store.open(url, migrate=False)
    writer = ProcessWriter(store.sessions)
    try:
        if not writer.start(wait=60):
            raise RuntimeError("the writer process did not start")
        assert writer._pool is not None
        (pid,) = list(writer._pool._processes)  # type: ignore[attr-defined]
        await writer.record_statements(records.rows(50))  # warm up
        relay: list[tuple[float, int]] = []
        child: list[tuple[float, int]] = []
        for _ in range(rounds):
            batches = records.row_batches(total, size)
            n = sum(map(len, batches))
            t, c = time.process_time(), proc_cpu(pid)
            for b in batches:
                await writer.record_statements(b)
            relay.append((time.process_time() - t, n))
            child.append((proc_cpu(pid) - c, n))
        return median_us(relay), median_us(child)
    finally:
        await writer.aclose()
        await store.close()


# -- (c) the writer on SQLite -----------------------------------------------------------------


class _Rows(list[Any]):
    def fetchone(self) -> Any:
        return self[0] if self else None


class TimedDB:
    """A sqlite3 connection whose `execute` (rows fetched included) is timed."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.seconds = 0.0

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction

    def getlimit(self, category: int) -> int:
        return self.db.getlimit(category)

    def execute(self, sql: str, params: Any = ()) -> _Rows:
        t = time.thread_time()
        rows = _Rows(self.db.execute(sql, params))
        self.seconds += time.thread_time() - t
        return rows


@contextlib.contextmanager
def timed(module: Any, name: str, into: dict[str, float]) -> Iterator[None]:
    """Time every call of `module.name` (a once-per-batch function) into `into[name]`."""
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.thread_time() - t

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def sqlite_writer(url: str, path: str, records: Records, total: int, size: str, rounds: int) -> dict[str, float]:
    """Each round twice, on fresh rows: `Store.sessions.record_statements` through the
    store's engine (one `run_until_complete` per batch; process CPU, so aiosqlite's thread
    counts too), then `write_statements_sqlite` on a plain connection set up as the writer
    process sets up its own (`configure_sqlite`), split by where its CPU goes. Alternated, so
    that the difference (what aiosqlite and SQLAlchemy add per batch) is taken under the same
    machine load."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(Store.open(url, migrate=False))
    db = sqlite3.connect(path, check_same_thread=False)
    configure_sqlite(db, in_memory=False)  # as the writer process does
    samples: dict[str, list[tuple[float, int]]] = {}
    try:
        for r in range(rounds + 1):  # the first round warms up
            # Rows, as the relay hands them over and the child passes them on.
            batches = records.row_batches(total, size)
            n = sum(map(len, batches))
            t = time.process_time()
            for b in batches:
                loop.run_until_complete(store.sessions.record_statements(b))
            full = time.process_time() - t

            batches = records.row_batches(total, size)
            m = sum(map(len, batches))
            timed_db = TimedDB(db)
            parts: dict[str, float] = {}
            with timed(batch_mod, "build", parts), timed(audit_mod, "chain_rows", parts):
                t = time.thread_time()
                for b in batches:
                    sessions_mod.write_statements_sqlite(timed_db, b, datetime.now(UTC), False)  # type: ignore[arg-type]
                whole = time.thread_time() - t
            if r == 0:
                continue
            python = whole - timed_db.seconds
            samples.setdefault("full", []).append((full, n))
            samples.setdefault("hop", []).append((full - whole * n / m, n))
            for key, value in (
                ("whole", whole), ("sqlite", timed_db.seconds), ("python", python),
                ("entries", parts["build"]), ("chain", parts["chain_rows"]),
                ("rest", python - parts["build"] - parts["chain_rows"]),
            ):
                samples.setdefault(key, []).append((value, m))
    finally:
        db.close()
        loop.run_until_complete(store.close())
        loop.close()
    return {k: median_us(v) for k, v in samples.items()}


def postgres_split(
    loop: asyncio.AbstractEventLoop, store: Store, records: Records, total: int, size: str, rounds: int,
    backends: Callable[[], list[int]],
) -> dict[str, float]:
    samples: dict[str, list[tuple[float, int]]] = {}
    for r in range(rounds + 1):
        batches = records.batches(total, size)
        n = sum(map(len, batches))
        parts: dict[str, float] = {}
        pids = backends()
        server = sum(proc_cpu(p) for p in pids)
        with timed(sessions_mod, "_statement_entries", parts), timed(audit_mod, "chain_rows", parts):
            t = time.process_time()
            for b in batches:
                loop.run_until_complete(store.sessions.record_statements(b))
            whole = time.process_time() - t
        server = sum(proc_cpu(p) for p in pids) - server
        t = time.thread_time()
        for b in batches:
            [sessions_mod._statement_values(x) for x in b]
        values = time.thread_time() - t
        if r == 0:
            continue
        for key, value in (
            ("whole", whole), ("entries", parts["_statement_entries"]), ("chain", parts["chain_rows"]),
            ("values", values),
            ("driver", whole - parts["_statement_entries"] - parts["chain_rows"] - values),
            ("server", server),
        ):
            samples.setdefault(key, []).append((value, n))
    return {k: median_us(v) for k, v in samples.items()}


# -- running it -------------------------------------------------------------------------------


async def new_store(url: str) -> list[str]:
    """Migrate a store at `url` and start the sessions the records go to."""
    store = await Store.open(url)
    try:
        return await store.sessions.start_sessions(
            [SessionStart(GRANT, client_addr="10.1.2.3:51514") for _ in range(SESSIONS)]
        )
    finally:
        await store.close()


def run_sqlite(sizes: list[str], total: int, rounds: int, table: Sections, workdir: str) -> None:
    path = f"{workdir}/recorder.db"
    url = f"sqlite+aiosqlite:///{path}"
    records = Records(asyncio.run(new_store(url)))
    parent_pickle, child_pickle, relay_pw, child_pw, split = {}, {}, {}, {}, {}
    for size in sizes:
        parent_pickle[size], child_pickle[size] = pickling(records, total, size, rounds)
        relay_pw[size], child_pw[size] = asyncio.run(process_writer(url, records, total, size, rounds))
        split[size] = sqlite_writer(url, path, records, total, size, rounds)
    b = "(b) to the writer"
    table.add(b, "rows pickled (ForkingPickler)", "relay", parent_pickle)
    table.add(b, "unpickled (written as rows)", "writer", child_pickle)
    table.add(b, "ProcessWriter on SQLite, relay side", "relay", relay_pw)
    table.add(b, "  writer process, all of it (/proc)", "writer", child_pw)
    c = "(c) SQLite writer"
    table.add(c, "write_statements_sqlite (the child's)", "writer", {s: split[s]["whole"] for s in sizes})
    table.add(c, "    sqlite3 execute (bind + SQLite)", "writer", {s: split[s]["sqlite"] for s in sizes})
    table.add(c, "    Python", "writer", {s: split[s]["python"] for s in sizes})
    table.add(c, "      statement_batch.build (rows, JSON)", "writer", {s: split[s]["entries"] for s in sizes})
    table.add(c, "      chain_rows (content, SHA-256, ids)", "writer", {s: split[s]["chain"] for s in sizes})
    table.add(c, "      spans, owners, INSERTs' parameters", "writer", {s: split[s]["rest"] for s in sizes})
    table.add(c, "through the engine (in-process writer)", "writer", {s: split[s]["full"] for s in sizes})
    table.add(c, "  of which aiosqlite, event loop, engine", "writer", {s: split[s]["hop"] for s in sizes})


def run_postgres(dsn: str, sizes: list[str], total: int, rounds: int, table: Sections, console: Console) -> None:
    import asyncpg
    from sqlalchemy import make_url

    name = f"jitgate_bench_{secrets.token_hex(4)}"
    admin_dsn = make_url(dsn).set(drivername="postgresql").render_as_string(hide_password=False)
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)

    async def admin(sql: str) -> list[Any]:
        conn = await asyncpg.connect(admin_dsn)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        console.print(f"[yellow]PostgreSQL at {admin_dsn} unavailable ({exc}): (d) skipped")
        return
    try:
        records = Records(asyncio.run(new_store(url)))
        loop = asyncio.new_event_loop()
        store = loop.run_until_complete(Store.open(url, migrate=False))

        def backends() -> list[int]:
            rows = loop.run_until_complete(admin(f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'"))
            return [r["pid"] for r in rows if Path(f"/proc/{r['pid']}").exists()]

        try:
            split = {size: postgres_split(loop, store, records, total, size, rounds, backends) for size in sizes}
        finally:
            loop.run_until_complete(store.close())
            loop.close()
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    d = "(d) PostgreSQL writer"
    table.add(d, "record_statements (writer CPU)", "writer", {s: split[s]["whole"] for s in sizes})
    table.add(d, "  _statement_values", "writer", {s: split[s]["values"] for s in sizes})
    table.add(d, "  _statement_entries (data + JSON)", "writer", {s: split[s]["entries"] for s in sizes})
    table.add(d, "  chain_rows (content, SHA-256, ids)", "writer", {s: split[s]["chain"] for s in sizes})
    table.add(d, "  SQLAlchemy + asyncpg + the rest", "writer", {s: split[s]["driver"] for s in sizes})
    table.add(d, "PostgreSQL backend (server, /proc)", "server", {s: split[s]["server"] for s in sizes})


def render(table: Sections, sizes: list[str], console: Console, title: str) -> None:
    out = Table(title=title)
    out.add_column("step")
    out.add_column("where")
    for size in sizes:
        out.add_column(f"batch {size}" if "-" not in size else f"batches {size}", justify="right")
    section = None
    for sec, name, where, values in table.rows:
        if sec != section:
            out.add_row(f"[bold]{sec}", "", *[""] * len(sizes))
            section = sec
        out.add_row(name, where, *[f"{values[s]:.2f}" for s in sizes])

    def total(names: list[str]) -> dict[str, float]:
        return {s: sum(table.get(n)[s] for n in names) for s in sizes}

    hand = ["RecorderSink.statement (all of (a))"]
    pickle_ = ["rows pickled (ForkingPickler)", "unpickled (written as rows)"]
    totals = [("SQLite store", total(hand + pickle_ + ["write_statements_sqlite (the child's)"]))]
    if any(n == "record_statements (writer CPU)" for _, n, _, _ in table.rows):
        totals.append(("PostgreSQL store, writer side", total(hand + pickle_ + ["record_statements (writer CPU)"])))
        totals.append(("PostgreSQL store, + server", total(
            hand + pickle_ + ["record_statements (writer CPU)", "PostgreSQL backend (server, /proc)"]
        )))
    out.add_row("[bold]total: (a) + (b) pickling + writer", "", *[""] * len(sizes))
    for name, values in totals:
        cells = [f"[{'green' if values[s] <= TARGET_US else 'red'}]{values[s]:.2f}" for s in sizes]
        out.add_row(name, f"≤ {TARGET_US:g}", *cells)
    console.print(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer statements and rounds (a smoke test)")
    parser.add_argument("--statements", type=int, help="statements per round (default 20000, --quick 2000)")
    parser.add_argument("--rounds", type=int, help="rounds, the median is shown (default 5, --quick 2)")
    parser.add_argument("--sizes", default="500,50,1-500",
                        help="batch sizes, a range for random sizes (default 500,50,1-500)")
    parser.add_argument("--no-postgres", action="store_true", help="leave out (d)")
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin connection: a scratch database is created there and dropped")
    args = parser.parse_args(argv)
    total = args.statements or (2000 if args.quick else 20_000)
    rounds = args.rounds or (2 if args.quick else 5)
    sizes = args.sizes.split(",")
    console = Console(width=None if sys.stdout.isatty() else 120)

    table = Sections()
    a = hand_off(total, rounds)
    sec = "(a) relay hand-off"
    table.add(sec, "RecorderSink.statement (all of (a))", "relay", dict.fromkeys(sizes, a["sink"]))
    table.add(sec, "  StatementRow built", "relay", dict.fromkeys(sizes, a["sink"] - a["record"]))
    table.add(sec, "  Recorder.record_row", "relay", dict.fromkeys(sizes, a["record"]))
    table.add(sec, "    of which the metrics' tally", "relay", dict.fromkeys(sizes, a["count"]))
    with tempfile.TemporaryDirectory(prefix="jitgate-recorder-cost-") as workdir:
        run_sqlite(sizes, total, rounds, table, workdir)
    if not args.no_postgres:
        run_postgres(args.pg_dsn, sizes, total, rounds, table, console)
    render(table, sizes, console, f"µs of CPU per statement ({total} statements a round, median of {rounds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
