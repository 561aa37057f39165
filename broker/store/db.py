"""The store: engine creation and the `Store` facade the rest of jitgate calls.

    store = await Store.open(settings.store_url.get_secret_value())   # migrates to head
    grant = await store.tokens.verify_token(token, resource)
    ...
    await store.close()

SQLite (the embedded default) gets WAL, a busy timeout, enforced foreign keys and real
transactions (`BEGIN IMMEDIATE`: pysqlite's implicit transactions neither cover DDL nor take
the write lock up front, which turns concurrent writers into "database is locked" errors
instead of waits). PostgreSQL goes through asyncpg with pre-ping on pooled connections.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, pool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from broker.exceptions import StoreError
from broker.store import migrate as migrations
from broker.store.access_requests import AccessRequestRepository
from broker.store.approvals import ApprovalRepository
from broker.store.audit import AuditRepository
from broker.store.base import READ_ONLY_OPTION, Clock, StoreBase, file_lock, translate_errors, utcnow
from broker.store.egress_usage import EgressUsageRepository
from broker.store.session_slots import SessionSlotRepository
from broker.store.sessions import SessionRepository
from broker.store.tokens import TokenRepository

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_SECONDS = 10


def create_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    """An async engine for `sqlite+aiosqlite://` or `postgresql+asyncpg://` URLs."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, echo=echo)
    if backend == "postgresql":
        return create_async_engine(
            url,
            echo=echo,
            pool_pre_ping=True,
            connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
        )
    raise StoreError(f"unsupported store backend {backend!r}: use SQLite or PostgreSQL")


class SQLiteConnection(sqlite3.Connection):
    """A sqlite3 connection whose `close()` releases the database, whatever cursors are left.

    sqlite3 (Python 3.11+) closes with `sqlite3_close_v2`: while a cursor's statement is still
    running (a SELECT whose rows were not all read) the connection stays open, a "zombie"
    holding its transaction and its locks, until that cursor is garbage-collected. A store call
    cancelled mid-statement (a client leaving while its parked statement's request is read)
    ends just so: SQLAlchemy invalidates the connection without closing the cursor, which a
    traceback keeps in a reference cycle, and the write lock of its `BEGIN IMMEDIATE` stayed
    held until the cycle collector ran; every other writer, in this process or the recorder's,
    failed with "database is locked" meanwhile. Closing the cursors first ends the statements,
    so closing rolls back and unlocks at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        cursor = super().cursor(*args, **kwargs)
        self._cursors.add(cursor)
        return cursor

    # The built-in shortcuts make their cursor without calling `cursor()`.
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, script: str, /) -> sqlite3.Cursor:
        return self.cursor().executescript(script)

    def close(self) -> None:
        for cursor in list(self._cursors):
            cursor.close()
        super().close()


def configure_sqlite(connection: sqlite3.Connection, *, in_memory: bool) -> None:
    """What every connection to a SQLite store is set up with (the engine's, and the one the
    recorder's writer process opens on the same file)."""
    connection.isolation_level = None  # we issue BEGIN ourselves (the engine's "begin" hook)
    cursor = connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS:d}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode")
            if cursor.fetchone()[0] != "wal":  # switching takes an exclusive lock
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_engine(url: str, *, echo: bool) -> AsyncEngine:
    parsed = make_url(url)
    database = parsed.database or ""
    in_memory = database in ("", ":memory:") or parsed.query.get("mode") == "memory"
    kwargs: dict[str, Any] = {"echo": echo, "connect_args": {"factory": SQLiteConnection}}
    if in_memory:
        # Every new connection to :memory: is a new, empty database: keep exactly one.
        kwargs["poolclass"] = pool.StaticPool
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        configure_sqlite(dbapi_connection, in_memory=in_memory)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _sqlite_file(engine: AsyncEngine) -> Path | None:
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database in ("", ":memory:") or engine.url.query.get("mode") == "memory":
        return None
    return Path(database).expanduser()


@asynccontextmanager
async def _first_use_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Serialise opening a SQLite store across engines and processes.

    On a database file that has never been written, connections that each switched to WAL
    can still disagree on the locking protocol until the header is on disk, and two
    migrations then run side by side ("table ... already exists"). An exclusive lock on a
    sidecar file around the first connection and the migration closes that window.
    PostgreSQL needs none: its migration holds an advisory lock.
    """
    path = _sqlite_file(engine)
    if path is None or fcntl is None:
        yield
        return
    async with file_lock(f"{path}.lock"):
        yield


class Store(StoreBase):
    """The broker's persistent state: the engine, its transactions, and one repository per
    concept. Repositories share this object (engine, clock, audit listeners), not a base
    class; one that appends audit records holds `audit` and appends within its own
    transaction. Methods raise `StoreError` subclasses on failure."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        super().__init__(engine, clock=clock)
        self.audit = AuditRepository(self)
        self.tokens = TokenRepository(self, self.audit)
        self.sessions = SessionRepository(self, self.audit)
        self.access = AccessRequestRepository(self, self.audit)
        self.approvals = ApprovalRepository(self, self.audit)
        self.egress = EgressUsageRepository(self)
        self.slots = SessionSlotRepository(self)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        migrate: bool = True,
        clock: Clock = utcnow,
        echo: bool = False,
    ) -> Store:
        """Connect, check the store answers, and (by default) migrate it to the newest schema."""
        engine = create_engine(url, echo=echo)
        store = cls(engine, clock=clock)
        try:
            async with _first_use_lock(engine):
                await store.ping()
                if migrate:
                    async with translate_errors("migrate"):
                        await migrations.upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return store

    @property
    def url(self) -> str:
        """The store URL with any password hidden, for logs and health output."""
        return self.engine.url.render_as_string(hide_password=True)
