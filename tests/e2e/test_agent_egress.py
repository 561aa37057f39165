"""Per-agent egress budgets through the real proxy and PostgreSQL: an agent's rows add up over
its sessions (and over proxy processes sharing the store), another agent and a person are
not affected, and the budget starts over in the next window.

The gateways' ledgers read a hand-moved clock, so no test straddles a real window's end."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from broker.exceptions import StoreUnavailable
from broker.store import EgressCharge
from proxy.egress_ledger import AgentEgressLedger
from tests.e2e.conftest import Gateway, _resource, start_gateway, stop_gateway
from tests.e2e.test_egress import _count, _statements

pytestmark = pytest.mark.e2e

HOUR = 3600
T0 = 1_800_000_000  # a window start: 2027-01-15 08:00 UTC
RESOURCE = "demo_agent"
LIMIT = 150


class Clock:
    def __init__(self) -> None:
        self.now = float(T0 + 10)

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def gateways(upstream: Upstream, demo_roles: DemoRoles, clock: Clock) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways on one store: two proxy processes, as with `--workers 2` or two hosts."""
    with tempfile.TemporaryDirectory(prefix="jitgate-agent-egress-") as tmp:
        rw = (upstream, demo_roles.rw_user, demo_roles.rw_password)
        extra = {RESOURCE: _resource(*rw, egress={"max_rows_per_agent": LIMIT, "agent_window": "1h"})}
        first = start_gateway(upstream, demo_roles, Path(tmp), extra=extra)
        second = start_gateway(upstream, demo_roles, Path(tmp), extra=extra)
        try:
            for gw in (first, second):
                gw.server.ctx.egress_ledger = AgentEgressLedger(gw.store.egress, clock=clock, interval=0.2)
            yield first, second
        finally:
            stop_gateway(second)
            stop_gateway(first)


@pytest.fixture(scope="module")
def gw(gateways: tuple[Gateway, Gateway]) -> Gateway:
    return gateways[0]


def dsn(gw: Gateway, principal: str, app: str) -> str:
    return gw.dsn(RESOURCE, token=gw.issue(RESOURCE, principal=principal), application_name=app)


def used(gw: Gateway, principal: str, clock: Clock) -> int:
    start = int(clock.now) // HOUR * HOUR
    [(rows, _)] = gw.call(gw.store.egress.charge_egress([EgressCharge(principal, RESOURCE, HOUR, start)]))
    return int(rows)


def wait_used(gw: Gateway, principal: str, clock: Clock, rows: int) -> None:
    """The store has the agent's rows: the last session's charge is written (it is written
    just after the statement or the session ends, not before the client sees the result)."""
    deadline = time.monotonic() + 10
    while used(gw, principal, clock) < rows and time.monotonic() < deadline:
        time.sleep(0.02)
    assert used(gw, principal, clock) == rows


def read(conn: psycopg.Connection, n: int) -> int:
    return len(conn.execute(f"select g from generate_series(1, {n}) g").fetchall())


def test_an_agents_later_session_is_cut_at_what_its_earlier_sessions_left(gw: Gateway, clock: Clock) -> None:
    agent = "agent:e2e-sequential"
    before = _count(RESOURCE, "max_rows_per_agent")
    with psycopg.connect(dsn(gw, agent, "agent-egress-1"), autocommit=True) as conn:
        assert read(conn, 100) == 100
    wait_used(gw, agent, clock, 100)

    with psycopg.connect(dsn(gw, agent, "agent-egress-2"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            read(conn, 100)
        assert f"{LIMIT} rows per agent per 1h on resource '{RESOURCE}'" in str(info.value)
        assert info.value.diag.message_detail and agent in info.value.diag.message_detail
        hint = info.value.diag.message_hint or ""
        assert "resets at 2027-01-15T09:00:00Z" in hint and f"resources.{RESOURCE}.egress.max_rows_per_agent" in hint
        # The connection stays usable; a result is cut at its first row, a statement without rows runs.
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            read(conn, 1)
        conn.execute("set application_name = 'agent-egress-2'")
    assert _count(RESOURCE, "max_rows_per_agent") == before + 2
    cut, again, _ = _statements(gw, "agent-egress-2")[-3:]
    assert (cut.error_sqlstate, cut.rows) == ("54000", 50)  # audited with what was returned
    assert (again.error_sqlstate, again.rows) == ("54000", 0)
    wait_used(gw, agent, clock, LIMIT)


def test_other_agents_and_persons_are_not_affected(gw: Gateway, clock: Clock) -> None:
    spent = "agent:e2e-spent"
    with psycopg.connect(dsn(gw, spent, "agent-egress-spent"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            read(conn, LIMIT + 1)
    wait_used(gw, spent, clock, LIMIT)
    with psycopg.connect(dsn(gw, "agent:e2e-fresh", "agent-egress-fresh"), autocommit=True) as conn:
        assert read(conn, LIMIT) == LIMIT
    person = "person:alice@example.com"
    for _ in range(2):  # persons have no budget across sessions
        with psycopg.connect(dsn(gw, person, "agent-egress-person"), autocommit=True) as conn:
            assert read(conn, 500) == 500
    assert used(gw, person, clock) == 0


def test_concurrent_sessions_of_one_agent_share_the_budget(gw: Gateway, clock: Clock) -> None:
    agent = "agent:e2e-concurrent"
    with (
        psycopg.connect(dsn(gw, agent, "agent-egress-a"), autocommit=True) as one,
        psycopg.connect(dsn(gw, agent, "agent-egress-b"), autocommit=True) as two,
    ):
        assert read(one, 100) == 100
        wait_used(gw, agent, clock, 100)  # charged by the sync that follows the statement ...
        time.sleep(0.3)  # ... which gives the open session its new budget in the same step
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as info:
            read(two, 100)
        assert "rows per agent" in str(info.value)
        wait_used(gw, agent, clock, LIMIT)
        time.sleep(0.3)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            read(one, 1)
    assert used(gw, agent, clock) == LIMIT


def test_another_proxy_process_sharing_the_store_sees_the_usage(
    gateways: tuple[Gateway, Gateway], clock: Clock
) -> None:
    first, second = gateways
    agent = "agent:e2e-two-processes"
    with psycopg.connect(dsn(first, agent, "agent-egress-p1"), autocommit=True) as conn:
        assert read(conn, 120) == 120
    wait_used(first, agent, clock, 120)
    with psycopg.connect(dsn(second, agent, "agent-egress-p2"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            read(conn, 100)
    wait_used(second, agent, clock, LIMIT)


def test_the_budget_starts_over_in_the_next_window(gw: Gateway, clock: Clock) -> None:
    agent = "agent:e2e-window"
    with psycopg.connect(dsn(gw, agent, "agent-egress-w1"), autocommit=True) as conn:
        assert read(conn, LIMIT) == LIMIT
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            read(conn, 1)
    wait_used(gw, agent, clock, LIMIT)
    clock.now += HOUR
    try:
        assert used(gw, agent, clock) == 0
        with psycopg.connect(dsn(gw, agent, "agent-egress-w2"), autocommit=True) as conn:
            assert read(conn, 100) == 100
        wait_used(gw, agent, clock, 100)
    finally:
        clock.now -= HOUR


class _DownStore:
    """The egress usage store, unreachable."""

    async def charge_egress(self, charges: object) -> list[tuple[int, int]]:
        raise StoreUnavailable("charge egress usage: store unavailable (ConnectionRefused)")

    async def prune_egress_usage(self, before: int) -> int:
        return 0


def test_an_agent_is_refused_at_connect_when_its_budget_cannot_be_read(gw: Gateway, clock: Clock) -> None:
    agent = "agent:e2e-store-down"
    ledger = gw.server.ctx.egress_ledger
    gw.server.ctx.egress_ledger = AgentEgressLedger(_DownStore(), clock=clock, interval=0.2)  # type: ignore[arg-type]
    try:
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(dsn(gw, agent, "agent-egress-down"), autocommit=True)
        # Refused while connecting, with the reason; never a session that ends at its first query.
        assert "cannot check this agent's egress budget" in str(info.value)
        # A person on the same resource has no agent budget to read, and gets in.
        with psycopg.connect(dsn(gw, "user:ops@example.com", "agent-egress-down-person"), autocommit=True) as conn:
            assert read(conn, 3) == 3
    finally:
        gw.server.ctx.egress_ledger = ledger
