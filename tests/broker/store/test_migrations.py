"""The hand-written migrations against the models, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from broker.exceptions import StoreUnavailable
from broker.store import Store
from broker.store.db import create_engine
from broker.store.migrate import current_revision, downgrade, head_revision, upgrade
from broker.store.models import Base
from tests.broker.store.store_backends import temp_pg_database

EXPECTED_TABLES = {
    "alembic_version",
    "gateway_tokens",
    "sessions",
    "statements",
    "access_requests",
    "leases",
    "audit_events",
    "audit_state",
    "approvals",
    "approval_votes",
    "principals",
    "egress_usage",
    "session_slots",
    "slack_messages",
}


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL to a brand-new, empty database (a fresh PostgreSQL database per test)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/nested/dir/jitgate.db"
        return
    async with temp_pg_database(request.getfixturevalue("local_pg_dsn")) as url:
        yield url


async def _tables(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _schema_diff(store: Store) -> list[object]:
    async with store.engine.connect() as conn:
        return await conn.run_sync(
            lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
            )
        )


async def test_migration_creates_exactly_the_models_schema(empty_url: str) -> None:
    store = await Store.open(empty_url)
    try:
        assert await _tables(store) == EXPECTED_TABLES
        assert await current_revision(store.engine) == head_revision()
        # The hand-written migration and the models agree: autogenerate finds nothing to do.
        assert await _schema_diff(store) == []
    finally:
        await store.close()


async def test_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    store = await Store.open(empty_url)
    try:
        await downgrade(store.engine, "base")
        assert await _tables(store) == {"alembic_version"}
        assert await current_revision(store.engine) is None
        await upgrade(store.engine)
        assert await _tables(store) == EXPECTED_TABLES
        assert await _schema_diff(store) == []
    finally:
        await store.close()


async def test_open_without_migrate_leaves_schema_alone(empty_url: str) -> None:
    store = await Store.open(empty_url, migrate=False)
    try:
        assert await _tables(store) == set()
    finally:
        await store.close()


async def test_reopening_and_concurrent_opens_migrate_once(empty_url: str) -> None:
    # Several gateway processes starting together against one fresh store.
    stores = await asyncio.gather(*(Store.open(empty_url) for _ in range(3)))
    try:
        again = await Store.open(empty_url)
        await again.close()
        assert await _tables(stores[0]) == EXPECTED_TABLES
        async with stores[0].engine.connect() as conn:
            versions = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        assert [v[0] for v in versions] == [head_revision()]
    finally:
        for store in stores:
            await store.close()


async def test_sqlite_connections_get_wal_and_foreign_keys(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/j.db")
    try:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 10_000
    finally:
        await store.close()


async def test_in_memory_sqlite_keeps_one_database(tmp_path: Path) -> None:
    store = await Store.open("sqlite+aiosqlite://")
    try:
        assert await _tables(store) == EXPECTED_TABLES
    finally:
        await store.close()


async def test_unreachable_postgresql_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable) as err:
        await Store.open("postgresql+asyncpg://jitgate:s3cret-pw@127.0.0.1:1/jitgate")
    assert "s3cret-pw" not in str(err.value)


async def test_store_url_hides_password() -> None:
    engine = create_engine("postgresql+asyncpg://jitgate:s3cret-pw@127.0.0.1:1/jitgate")
    store = Store(engine)
    try:
        assert store.url == "postgresql+asyncpg://jitgate:***@127.0.0.1:1/jitgate"
    finally:
        await store.close()


async def test_statement_indexes_on_mostly_null_columns_are_partial(empty_url: str) -> None:
    """`fingerprint` and `approval_id` are NULL on nearly every recorded statement: their
    indexes take only the rows that have one, so the recorder's insert pays nothing for them,
    and a lookup by approval still uses one."""
    store = await Store.open(empty_url)
    try:
        async with store.engine.connect() as conn:
            if store.engine.dialect.name == "sqlite":
                found = dict((await conn.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'statements'"
                ))).all())
            else:
                found = dict((await conn.execute(text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'statements'"
                ))).all())
        partial = (("ix_statements_fingerprint", "fingerprint"), ("ix_statements_approval_id", "approval_id"))
        for name, column in partial:
            assert "WHERE" in found[name].upper() and f"{column} IS NOT NULL" in found[name], found[name]
        assert "WHERE" not in (found["ix_statements_started_at"] or "").upper()
        if store.engine.dialect.name == "sqlite":
            async with store.engine.connect() as conn:
                plan = (await conn.execute(text(
                    "EXPLAIN QUERY PLAN SELECT id FROM statements WHERE approval_id = :a"), {"a": "x"})).all()
            assert any("ix_statements_approval_id" in str(step) for step in plan), plan
        # Downgraded, they are whole again (what 0011 made).
        await downgrade(store.engine, "0011_statement_approval")
        async with store.engine.connect() as conn:
            if store.engine.dialect.name == "sqlite":
                sql = (await conn.execute(text(
                    "SELECT sql FROM sqlite_master WHERE name = 'ix_statements_approval_id'"))).scalar_one()
            else:
                sql = (await conn.execute(text(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_statements_approval_id'"))).scalar_one()
        assert "WHERE" not in sql.upper()
        await upgrade(store.engine)
        assert await _schema_diff(store) == []
    finally:
        await store.close()
