"""The fast path (proxy.fastpath) through the real proxy, with real drivers: repeated
statements go the fast way, every one of them is recorded, results are what PostgreSQL
returns, and a redefinition under the same name is judged and masked again.

psycopg (libpq: Bind, Describe portal, Execute, Sync per execution) and asyncpg (Bind,
Execute, Sync: it described the statement when it prepared it).
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

from broker.demo.upstream import Upstream
from broker.metrics import REGISTRY
from broker.store import StatementInfo
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e

RUNS = 60


def _answered() -> float:
    return _batches("answered")


def _batches(outcome: str) -> float:
    """`jitgate_fast_path_batches_total{outcome}` as Prometheus scrapes it."""
    return REGISTRY.get_sample_value("jitgate_fast_path_batches_total", {"outcome": outcome}) or 0.0


def _statements(gw: Gateway, app: str) -> list[StatementInfo]:
    return gw.ended_statements(app)


def test_repeated_statements_go_the_fast_way_and_are_all_recorded(gateway: Gateway) -> None:
    before = _answered()
    sql = "select id, full_name from customers where id = %s"
    with psycopg.connect(gateway.dsn(application_name="fast-psycopg"), autocommit=True) as conn:
        direct = {i: conn.execute(sql, (i,), prepare=False).fetchall() for i in (1, 2, 3)}
        got = [conn.execute(sql, (1 + i % 3,), prepare=True).fetchall() for i in range(RUNS)]
    assert got == [direct[1 + i % 3] for i in range(RUNS)]
    assert _answered() - before >= RUNS - 2  # the first prepared one is learned the full way
    text = "select id, full_name from customers where id = $1"
    recorded = [s for s in _statements(gateway, "fast-psycopg") if s.sql == text]
    assert len(recorded) == RUNS + 3
    assert all(s.decision == "allow" and s.rows == 1 and s.error_sqlstate is None for s in recorded)
    assert [s.seq for s in recorded] == sorted(s.seq for s in recorded)


def test_masked_columns_are_masked_on_the_fast_way(gateway: Gateway, upstream: Upstream) -> None:
    with psycopg.connect(upstream.dsn("demo")) as direct:
        (email,) = direct.execute("select email from customers where id = 1").fetchone()  # type: ignore[misc]
    assert "@" in email
    before, fell_back = _answered(), _batches("fell_back")
    with psycopg.connect(gateway.dsn(application_name="fast-masked"), autocommit=True) as conn:
        rows = [conn.execute("select email from customers where id = %s", (1,), prepare=True).fetchone()
                for _ in range(20)]
    assert all(row is not None and email not in str(row[0]) for row in rows), rows
    assert _answered() - before >= 18 and _batches("fell_back") == fell_back
    recorded = _statements(gateway, "fast-masked")
    assert [s.masked_values for s in recorded if s.sql.startswith("select email")] == [1] * 20


def test_a_name_redefined_by_sql_is_judged_and_masked_again(gateway: Gateway, upstream: Upstream) -> None:
    with psycopg.connect(upstream.dsn("demo")) as direct:
        (email,) = direct.execute("select email from customers where id = 1").fetchone()  # type: ignore[misc]

    async def run() -> tuple[list[object], list[object]]:
        conn = await asyncpg.connect(gateway.dsn(application_name="fast-asyncpg"))
        try:
            plain = await conn.prepare("select full_name from customers where id = $1")
            first = [(await plain.fetch(1))[0][0] for _ in range(20)]  # (fetchval: a row limit)
            # The same server-side name, now holding another query (psycopg and asyncpg name
            # their statements; an agent can reuse one through SQL).
            name = plain.get_name()
            await conn.execute(f'DEALLOCATE "{name}"')
            await conn.execute(f'PREPARE "{name}" (int) AS select email from customers where id = $1')
            # asyncpg still thinks the name is its plain statement and binds it as before.
            again = [(await plain.fetch(1))[0][0] for _ in range(5)]
            return first, again
        finally:
            await conn.close()

    before = _answered()
    first, again = asyncio.run(run())
    assert len(set(first)) == 1 and "@" not in str(first[0])
    assert _answered() - before >= 18
    assert again and all(value != email and "***" in str(value) for value in again), again
