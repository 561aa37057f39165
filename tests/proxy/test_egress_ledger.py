"""Per-agent egress budgets: the ledger's accounting across sessions, driven through real
session machines, with the store faked at its seam (`UsageStore`) and a hand-moved clock."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from broker.exceptions import StoreUnavailable
from broker.store import EgressCharge
from proxy.egress import EgressLimits
from proxy.egress_ledger import AgentEgressLedger
from proxy.exceptions import UpstreamUnavailable
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.records import StatementEvent
from tests.proxy.test_machine import classify, complete, row_description, sent

HOUR = 3600
T0 = 1_800_000_000 // HOUR * HOUR  # the start of an hour window


class MemoryUsage:
    """The store's `charge_egress` in memory; `down` makes it fail like an unreachable store."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str, int, int], tuple[int, int]] = {}
        self.down = False

    async def charge_egress(self, charges: Sequence[EgressCharge]) -> list[tuple[int, int]]:
        if self.down:
            raise StoreUnavailable("charge egress usage: store unavailable")
        out = []
        for c in charges:
            rows, nbytes = self.totals.get(c.key, (0, 0))
            self.totals[c.key] = (rows + c.rows, nbytes + c.bytes)
            out.append(self.totals[c.key])
        return out

    async def prune_egress_usage(self, before: int) -> int:
        return 0

    def used(self, principal: str = "agent:a", start: int = T0) -> tuple[int, int]:
        return self.totals.get((principal, "demo", HOUR, start), (0, 0))


class Clock:
    def __init__(self) -> None:
        self.now = float(T0 + 10)

    def __call__(self) -> float:
        return self.now


class Session:
    """A session machine whose statement ends wake the ledger, as proxy.session wires it."""

    def __init__(self, ledger: AgentEgressLedger, limits: EgressLimits) -> None:
        self.cuts: list[str] = []
        self.events: list[StatementEvent] = []
        self.ledger = ledger
        self.limits = limits
        self.machine = SessionMachine(
            classify=classify, masker=None, on_statement=self._on_statement, client_user="agent",
            upstream_user="v-token-rw-123", egress=limits, on_egress_limit=self.cuts.append, resource="demo",
        )

    def _on_statement(self, event: StatementEvent) -> None:
        self.events.append(event)
        self.ledger.wake()

    async def open(self, principal: str = "agent:a") -> Session:
        self.budget = await self.ledger.open(principal, "demo", self.limits, self.machine)
        return self

    def query(self, n: int) -> tuple[str, dict[str, str]]:
        """Run a query upstream answers with `n` one-column rows; the kinds of what the client
        got, and the fields of its ErrorResponse if any."""
        mach = self.machine
        mach.feed_client(m.query_message("select n from t"))
        sent(mach)
        body = b"".join(m.data_row([str(i).encode()]) for i in range(n))  # 12-byte DataRows
        mach.feed_server(row_description(("n", 23)) + body + complete(f"SELECT {n}") + m.ready_for_query(b"I"))
        out = sent(mach, "out_client")
        errors = [dict(m.parse_fields(b)) for k, b in out if k == ord("E")]
        return "".join(chr(k) for k, _ in out), (errors[0] if errors else {})


def limits(**kw: int) -> EgressLimits:
    return EgressLimits(agent_window=HOUR, **kw)


@pytest.fixture
def usage() -> MemoryUsage:
    return MemoryUsage()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def ledger(usage: MemoryUsage, clock: Clock):
    ledger = AgentEgressLedger(usage, clock=clock, interval=0.05, min_gap=0)
    yield ledger
    await ledger.aclose()


async def eventually(check) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check()


def test_only_agents_on_resources_with_a_per_agent_budget() -> None:
    budget = limits(max_rows_per_agent=10)
    assert AgentEgressLedger.applies("agent:ci-bot", budget)
    assert not AgentEgressLedger.applies("person:alice@example.com", budget)
    assert not AgentEgressLedger.applies("agent:ci-bot", limits(max_rows_per_session=10))
    assert not AgentEgressLedger.applies("agent:ci-bot", None)


def test_limits_from_settings_carry_the_window() -> None:
    from broker.config import EgressSettings

    parsed = EgressLimits.of(**EgressSettings(max_bytes_per_agent=5, agent_window="1h30m").limits())
    assert parsed is not None and (parsed.max_bytes_per_agent, parsed.agent_window) == (5, 5400)
    assert parsed.per_agent
    assert EgressLimits.of(**EgressSettings().limits()) is None
    with pytest.raises(ValueError):
        EgressSettings(agent_window="0s")


async def test_a_new_session_gets_only_what_the_agents_earlier_sessions_left(
    ledger: AgentEgressLedger, usage: MemoryUsage
) -> None:
    budget = limits(max_rows_per_agent=10)
    first = await Session(ledger, budget).open()
    assert first.query(6)[0] == "TDDDDDDCZ"
    await ledger.close(first.budget)
    assert usage.used() == (6, 72)

    second = await Session(ledger, budget).open()
    kinds, error = second.query(6)
    assert kinds == "TDDDDEZ"  # the 4 rows left, then the cut
    assert error["C"] == "54000"
    assert "10 rows per agent per 1h on resource 'demo'" in error["M"]
    assert "agent:a" in error["D"] and "max_rows_per_agent" in error["D"]
    assert "resets at 2027-01-15T09:00:00Z" in error["H"] and "egress.max_rows_per_agent" in error["H"]
    assert second.cuts == ["max_rows_per_agent"]
    assert second.query(1)[0] == "TEZ"  # spent: the next result is cut at its first row
    assert second.query(0)[0] == "TCZ"  # statements without rows still run
    assert [e.error_sqlstate for e in second.events] == ["54000", "54000", None]
    await ledger.close(second.budget)
    assert usage.used() == (10, 120)

    # Another agent has its own budget.
    other = await Session(ledger, budget).open("agent:b")
    assert other.query(6)[0] == "TDDDDDDCZ"
    await ledger.close(other.budget)


async def test_concurrent_sessions_learn_each_others_usage_after_each_statement(
    ledger: AgentEgressLedger, usage: MemoryUsage
) -> None:
    budget = limits(max_rows_per_agent=10)
    one = await Session(ledger, budget).open()
    two = await Session(ledger, budget).open()
    assert one.query(7)[0] == "TDDDDDDDCZ"
    await eventually(lambda: usage.used()[0] == 7)  # charged by the background sync, woken by the statement end
    await eventually(lambda: two.budget.used_rows == 7)
    assert two.query(7)[0] == "TDDDEZ"
    assert two.cuts == ["max_rows_per_agent"]
    await eventually(lambda: one.budget.used_rows == 10)
    assert one.query(1)[0] == "TEZ"
    await ledger.close(one.budget)
    await ledger.close(two.budget)
    assert usage.used() == (10, 120)


async def test_concurrent_sessions_between_syncs_overshoot_by_what_is_in_flight_only(
    usage: MemoryUsage, clock: Clock
) -> None:
    # No background sync in this test: both sessions start from the same reading.
    ledger = AgentEgressLedger(usage, clock=clock, interval=3600)
    budget = limits(max_rows_per_agent=10)
    one = await Session(ledger, budget).open()
    two = await Session(ledger, budget).open()
    assert one.query(8)[0].count("D") == 8
    assert two.query(8)[0].count("D") == 8  # both read before either was charged
    assert await ledger.sync()
    assert usage.used()[0] == 16  # over by the second session's rows in flight ...
    assert one.query(1)[0] == "TEZ" and two.query(1)[0] == "TEZ"  # ... and no further
    await ledger.close(one.budget)
    await ledger.close(two.budget)
    await ledger.aclose()


async def test_usage_starts_over_in_the_next_window(
    ledger: AgentEgressLedger, usage: MemoryUsage, clock: Clock
) -> None:
    budget = limits(max_rows_per_agent=5)
    session = await Session(ledger, budget).open()
    assert session.query(5)[0].count("D") == 5
    assert session.query(1)[0] == "TEZ"
    clock.now += HOUR
    assert await ledger.sync()  # an open session picks the new window up at its next sync
    assert session.query(3)[0] == "TDDDCZ"
    await ledger.close(session.budget)
    assert usage.used(start=T0) == (5, 60) and usage.used(start=T0 + HOUR) == (3, 36)
    fresh = await Session(ledger, budget).open()
    assert fresh.query(3)[0] == "TDDEZ"  # 2 left in the new window
    await ledger.close(fresh.budget)


async def test_byte_budget(ledger: AgentEgressLedger, usage: MemoryUsage) -> None:
    budget = limits(max_bytes_per_agent=60)  # five 12-byte rows
    first = await Session(ledger, budget).open()
    assert first.query(3)[0].count("D") == 3
    await ledger.close(first.budget)
    second = await Session(ledger, budget).open()
    kinds, error = second.query(5)
    assert kinds == "TDDEZ" and "60 bytes per agent per 1h" in error["M"]
    assert second.cuts == ["max_bytes_per_agent"]
    await ledger.close(second.budget)


async def test_the_lower_of_session_and_agent_limit_names_the_cut(ledger: AgentEgressLedger) -> None:
    budget = limits(max_rows_per_agent=10, max_rows_per_session=3)
    first = await Session(ledger, budget).open()
    assert first.query(5)[0] == "TDDDEZ"
    assert first.cuts == ["max_rows_per_session"]
    await ledger.close(first.budget)
    second = await Session(ledger, limits(max_rows_per_agent=10, max_rows_per_session=9)).open()
    assert second.query(9)[0].count("D") == 7  # 3 used: the agent's 7 left come first
    assert second.cuts == ["max_rows_per_agent"]
    await ledger.close(second.budget)


async def test_store_down_at_session_start_refuses_the_session(
    ledger: AgentEgressLedger, usage: MemoryUsage
) -> None:
    usage.down = True
    with pytest.raises(UpstreamUnavailable):
        await Session(ledger, limits(max_rows_per_agent=10)).open()


async def test_a_final_charge_that_fails_is_retried(ledger: AgentEgressLedger, usage: MemoryUsage) -> None:
    session = await Session(ledger, limits(max_rows_per_agent=10)).open()
    usage.down = True
    assert session.query(4)[0].count("D") == 4
    await ledger.close(session.budget)  # does not raise
    assert usage.used() == (0, 0)
    usage.down = False
    await eventually(lambda: usage.used() == (4, 48))


async def test_the_background_sync_ends_with_the_last_session(ledger: AgentEgressLedger) -> None:
    session = await Session(ledger, limits(max_rows_per_agent=10)).open()
    task = ledger._task
    assert task is not None and not task.done()
    await ledger.close(session.budget)
    await eventually(task.done)
