"""Egress limits through the real proxy: a statement returning too much is cut with 54000, the
connection stays usable, a session budget refuses later results, and extended-protocol and
pipelined queries are cut the same way."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from broker.metrics import EGRESS_LIMITS
from broker.store import StatementInfo
from proxy.egress import EgressLimits
from tests.e2e.conftest import Gateway, _resource, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

BIG = "select g, repeat('x', 100) from generate_series(1, 500) g"


@pytest.fixture(scope="module")
def egress_gateway(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="jitgate-egress-") as tmp:
        rw = (upstream, demo_roles.rw_user, demo_roles.rw_password)
        extra = {
            "demo_rows": _resource(*rw, egress={"max_rows_per_statement": 100}),
            "demo_session": _resource(*rw, egress={"max_bytes_per_session": 20_000}),
        }
        gw = start_gateway(upstream, demo_roles, Path(tmp), extra=extra)
        try:
            yield gw
        finally:
            stop_gateway(gw)


def _count(resource: str, limit: str) -> float:
    return EGRESS_LIMITS.labels(resource, limit)._value.get()


def _statements(gw: Gateway, app: str) -> list[StatementInfo]:
    return gw.ended_statements(app)


def test_statement_row_limit_cuts_and_connection_stays_usable(egress_gateway: Gateway) -> None:
    before = _count("demo_rows", "max_rows_per_statement")
    with psycopg.connect(egress_gateway.dsn("demo_rows", application_name="egress-rows"), autocommit=True) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            cur.execute(BIG)
        assert "100 rows per statement" in str(info.value)
        assert info.value.diag.message_hint and "LIMIT" in info.value.diag.message_hint
        # The next statement on the same connection works, and one within the limit is whole.
        assert cur.execute("select count(*) from generate_series(1, 500)").fetchone() == (500,)
        assert len(cur.execute("select g from generate_series(1, 100) g").fetchall()) == 100
    assert _count("demo_rows", "max_rows_per_statement") == before + 1
    first, second, third = _statements(egress_gateway, "egress-rows")[-3:]
    assert (first.error_sqlstate, first.rows) == ("54000", 100)
    assert second.error_sqlstate is None and third.rows == 100


def test_extended_and_pipelined_queries_are_cut(egress_gateway: Gateway) -> None:
    with psycopg.connect(egress_gateway.dsn("demo_rows")) as conn:
        cur = conn.cursor()
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            cur.execute("select g from generate_series(1, %s) g", (1000,))  # Parse/Bind/Execute/Sync
        conn.rollback()
        assert cur.execute("select %s::int + 1", (41,)).fetchone() == (42,)
        conn.rollback()
        with pytest.raises(psycopg.errors.ProgramLimitExceeded), conn.pipeline():
            cur.execute("select %s::int", (1,))
            cur.execute("select g from generate_series(1, %s) g", (1000,))
            cur.execute("select %s::int", (3,))
        conn.rollback()
        assert cur.execute("select %s::text", ("still usable",)).fetchone() == ("still usable",)


def test_session_byte_budget_refuses_later_results(egress_gateway: Gateway) -> None:
    before = _count("demo_session", "max_bytes_per_session")
    with psycopg.connect(egress_gateway.dsn("demo_session"), autocommit=True) as conn:
        cur = conn.cursor()
        # About 120 bytes a row: 100 rows fit in the 20 000-byte budget, 200 would not.
        assert len(cur.execute("select g, repeat('x', 100) from generate_series(1, 100) g").fetchall()) == 100
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            cur.execute("select g, repeat('x', 100) from generate_series(1, 100) g")
        assert "bytes per session" in str(info.value)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            cur.execute("select 1")
        # Statements without result rows still run.
        cur.execute("set application_name = 'egress-budget'")
    assert _count("demo_session", "max_bytes_per_session") == before + 2


def test_limits_from_settings() -> None:
    assert EgressLimits.of(max_rows_per_statement=None) is None
    limits = EgressLimits.of(max_rows_per_statement=5, max_bytes_per_session=None)
    assert limits is not None and limits.max_rows_per_statement == 5


def test_copy_to_stdout_is_cut_too(egress_gateway: Gateway) -> None:
    with psycopg.connect(egress_gateway.dsn("demo_rows"), autocommit=True) as conn:
        cur = conn.cursor()
        got: list[bytes] = []
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            with cur.copy("copy (select g from generate_series(1, 500) g) to stdout") as copy:
                got.extend(bytes(data) for data in copy)
        assert len(got) == 100
        with cur.copy("copy (select g from generate_series(1, 50) g) to stdout") as copy:
            assert sum(1 for _ in copy) == 50
