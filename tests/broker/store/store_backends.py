"""Store fixtures over both backends: SQLite (a file in a temp dir) and the machine's
PostgreSQL (a uniquely named database, created per test module and dropped after).

Test modules import the fixtures they use: `from tests.broker.store.store_backends import clock, store`.
PostgreSQL comes from the root conftest's `local_pg_dsn` (fails under CI=true when it does
not answer, skips otherwise).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from sqlalchemy import make_url, text

from broker.store import Store

TABLES = (
    "statements", "sessions", "approval_votes", "slack_messages", "approvals", "principals", "access_requests",
    "leases", "gateway_tokens", "audit_events", "audit_state", "egress_usage", "session_slots",
)


class FakeClock:
    """A clock tests move by hand; starts at a fixed aware UTC time."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def asyncpg_dsn(dsn: str, database: str | None = None) -> str:
    url = make_url(dsn).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def sqlalchemy_url(dsn: str, database: str) -> str:
    url = make_url(dsn).set(drivername="postgresql+asyncpg", database=database)
    return url.render_as_string(hide_password=False)


@asynccontextmanager
async def temp_pg_database(admin_dsn: str) -> AsyncIterator[str]:
    """Create a uniquely named database; yield its SQLAlchemy URL; drop it afterwards."""
    name = f"jitgate_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_dsn))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield sqlalchemy_url(admin_dsn, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def backend_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('store')}/jitgate.db"
        return
    dsn = request.getfixturevalue("local_pg_dsn")
    async with temp_pg_database(dsn) as url:
        yield url


@pytest.fixture
def clock() -> Iterator[FakeClock]:
    yield FakeClock()


@pytest.fixture
async def store(backend_url: str, clock: FakeClock) -> AsyncIterator[Store]:
    """A migrated, empty store on each backend, with the `clock` fixture as its clock."""
    opened = await Store.open(backend_url, clock=clock)
    async with opened.engine.begin() as conn:
        for table in TABLES:
            await conn.execute(text(f"DELETE FROM {table}"))
    try:
        yield opened
    finally:
        await opened.close()
