"""What every part of the store shares: the engine, the session factory, the clock, and the
one place where driver errors become `StoreError`s."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.exceptions import StoreError, StoreIntegrityError, StoreUnavailable

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

Clock = Callable[[], datetime]
# Execution option of a connection whose transaction only reads (`StoreBase.transaction`).
READ_ONLY_OPTION = "jitgate_read_only"


def utcnow() -> datetime:
    return datetime.now(UTC)


def enum_value(value: object) -> str:
    """`Decision.ALLOW` -> "allow": `str()` of a str-mixin Enum gives "Decision.ALLOW"."""
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


@asynccontextmanager
async def translate_errors(action: str) -> AsyncIterator[None]:
    """Turn driver and connection errors into the broker's `StoreError` family.

    The message names the action and the error class only: driver messages can echo
    connection parameters, which do not belong in logs or API answers.
    """
    try:
        yield
    except sa_exc.IntegrityError as exc:
        raise StoreIntegrityError(f"{action}: constraint violated ({_origin(exc)})") from exc
    except (sa_exc.OperationalError, sa_exc.InterfaceError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"{action}: store unavailable ({_origin(exc)})") from exc
    except sa_exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"{action}: store unavailable ({_origin(exc)})") from exc
        raise StoreError(f"{action}: {_origin(exc)}") from exc
    except sa_exc.StatementError as exc:
        # Raised before the driver saw anything (e.g. a bind value refused by a type):
        # the message is ours, not the driver's, and worth keeping.
        raise StoreError(f"{action}: {exc.orig!r}") from exc
    except sa_exc.SQLAlchemyError as exc:
        raise StoreError(f"{action}: {type(exc).__name__}") from exc


def _origin(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return type(orig if orig is not None else exc).__name__


class StoreBase:
    """The engine, its transactions and the clock: what every repository (`tokens.py`,
    `sessions.py`, ...) is given, and what `Store` extends."""

    def __init__(self, engine: AsyncEngine, *, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self._session_factory = async_sessionmaker(engine, expire_on_commit=False)
        # Called with the audit records a transaction appended, once it has committed (the
        # SIEM forwarder, broker.audit.forward); must not block or raise.
        self.audit_listeners: list[Callable[[Sequence[Any]], None]] = []

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self, action: str, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """One ORM session in one transaction: committed on success, rolled back on error.

        `read_only`: the transaction only reads, so on SQLite it need not take the database's
        write lock up front (`BEGIN` instead of `BEGIN IMMEDIATE`, see `broker.store.db`):
        reads then run beside each other and beside a writer (WAL). A write in it may fail.
        """
        async with translate_errors(action), self._session_factory() as session:
            async with session.begin():
                if read_only:  # procures the connection, with the option its BEGIN reads
                    await session.connection(execution_options={READ_ONLY_OPTION: True})
                yield session
            # Only after the commit: a rolled-back append must never reach a listener.
            appended = session.info.pop("audit_appended", None)
        if appended:
            for listener in self.audit_listeners:
                listener(appended)

    async def ping(self) -> None:
        """Raise `StoreError` unless the store answers a trivial query."""
        async with translate_errors("ping"), self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


@asynccontextmanager
async def file_lock(path: str) -> AsyncIterator[None]:
    """An exclusive flock on `path` (created 0600), across processes; waited for in a thread
    so the event loop goes on meanwhile. POSIX only: callers check `fcntl` is not None."""
    assert fcntl is not None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
