"""Per-agent egress budgets: one agent's rows and bytes, counted across all its sessions.

`resources.<name>.egress.max_rows_per_agent` / `max_bytes_per_agent` cap what one agent
principal (`agent:...`; persons are exempt) reads from a resource per `agent_window`, however
many sessions it opens and whichever proxy process (`--workers N`, or several hosts sharing
the store) serves them. The totals live in the store (`egress_usage`); the data path never
waits for it:

    session start   open()   reads the agent's total in the current window (one store call)
    every DataRow            the machine compares its counters with caps (proxy.egress)
    statement end   wake()   the background sync charges what sessions returned since the
                             last sync, and reads back every process's total
    every interval           the same, so idle sessions learn what other sessions used
                             (with nothing new to charge, a read: no write lock taken)
    session end     close()  charges the rest

A session may read what was left of the budget at its last sync. Concurrent sessions of one
agent (in this process or another) therefore overshoot the budget by at most what they read
between two syncs, each at most what was left: usually the last statement's rows, since a
sync follows every statement end. Sequential sessions do not overshoot once the previous
session's final charge is written (its end, or its last statement's sync).

If the store cannot be reached at session start the session is refused (fail closed). A
charge that fails is kept and retried; while the store is down the recorder is unhealthy too,
so the proxy refuses statements and usage cannot grow unseen.

Windows are fixed and aligned to the Unix epoch (`24h` windows start at 00:00 UTC); what a
session read before a window ended is charged to that window. An open session picks up a
new window at its next sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from broker.store.egress_usage import EgressCharge
from proxy.egress import DAY, AgentBudget, EgressLimits, window_start
from proxy.exceptions import UpstreamUnavailable

log = structlog.get_logger("jitgate.proxy")

AGENT_PREFIX = "agent:"


class UsageStore(Protocol):
    """broker.store.Store's side of it (broker.store.egress_usage)."""

    async def charge_egress(self, charges: Sequence[EgressCharge]) -> list[tuple[int, int]]: ...

    async def prune_egress_usage(self, before: int) -> int: ...


class Metered(Protocol):
    """proxy.machine.SessionMachine's side of it (proxy.egress.EgressCuts)."""

    @property
    def egress_counts(self) -> tuple[int, int]: ...

    def set_agent_budget(self, budget: AgentBudget | None) -> None: ...


@dataclass(eq=False, slots=True)
class _Open:
    budget: AgentBudget
    meter: Metered
    closed: bool = False  # the session ended; dropped once its last charge is written

    def charge(self, counts: tuple[int, int]) -> EgressCharge:
        b = self.budget
        return EgressCharge(
            b.principal, b.resource, b.limits.agent_window, b.window_start,
            counts[0] - b.charged_rows, counts[1] - b.charged_bytes,
        )


class AgentEgressLedger:
    """One per proxy process: the open sessions' budgets and the task that syncs them."""

    def __init__(
        self,
        store: UsageStore,
        *,
        interval: float = 1.0,
        min_gap: float = 0.02,
        keep: int = 7 * DAY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.interval = interval  # seconds between syncs while sessions are open
        self._min_gap = min_gap  # a burst of statement ends becomes one sync
        self._keep = keep  # windows ended longer ago than this are pruned
        self._clock = clock
        self._open: dict[int, _Open] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = 0.0
        self._stopping = False

    @staticmethod
    def applies(principal: str, limits: EgressLimits | None) -> bool:
        """The resource has a per-agent budget and the principal is an agent."""
        return limits is not None and limits.per_agent and principal.startswith(AGENT_PREFIX)

    async def open(self, principal: str, resource: str, limits: EgressLimits, meter: Metered) -> AgentBudget:
        """Start enforcing the agent's budget on `meter` (a new session: counters at zero)."""
        budget = await self.read(principal, resource, limits)
        self.attach(budget, meter)
        return budget

    async def read(self, principal: str, resource: str, limits: EgressLimits) -> AgentBudget:
        """The agent's usage so far in the current window, for a session about to start.

        Raises `UpstreamUnavailable` when the store cannot say (fail closed): the proxy calls
        this while the client is still connecting, so it gets that error instead of a session.
        """
        budget = AgentBudget(principal, resource, limits, window_start(self._clock(), limits.agent_window))
        try:
            # A charge of nothing: creates the window's row if need be, returns its totals.
            [(budget.used_rows, budget.used_bytes)] = await self._store.charge_egress(
                [EgressCharge(principal, resource, limits.agent_window, budget.window_start)]
            )
        except Exception:
            log.warning("egress_budget_unavailable", principal=principal, resource=resource, exc_info=True)
            raise UpstreamUnavailable("the gateway cannot check this agent's egress budget right now") from None
        return budget

    def attach(self, budget: AgentBudget, meter: Metered) -> None:
        """Enforce `budget` (from `read`) on the session's `meter` and keep charging it."""
        meter.set_agent_budget(budget)
        self._open[id(budget)] = _Open(budget, meter)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jitgate-egress-ledger")

    def wake(self) -> None:
        """A statement ended: sync soon. Non-blocking."""
        self._wake.set()

    async def close(self, budget: AgentBudget) -> None:
        """The session ended: charge what it read since the last sync. Never raises; a charge
        that fails now is retried by the background sync."""
        entry = self._open.get(id(budget))
        if entry is None:
            return
        entry.closed = True
        if await self._sync([entry]):
            self._open.pop(id(budget), None)
        self._wake.set()  # with nothing left open, the background task ends

    async def sync(self) -> bool:
        """Charge every open session now (the background task does this on its own); False
        when the store could not be written."""
        entries = list(self._open.values())
        if not await self._sync(entries):
            return False
        for entry in entries:
            if entry.closed:
                self._open.pop(id(entry.budget), None)
        return True

    async def aclose(self) -> None:
        """Stop the background task (sessions still open are not charged any more)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._stopping = False

    async def _run(self) -> None:
        while self._open and not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            if not self._open or self._stopping:
                break
            await self.sync()
            await self._prune()
            await asyncio.sleep(self._min_gap)

    async def _sync(self, entries: Sequence[_Open]) -> bool:
        """Charge each session's rows and bytes since its last charge, in one store call, and
        take the agents' new totals (every session and process included) as their `used`.

        What a session read before a window ended is charged to that window; the new window's
        total is read in the same call."""
        async with self._lock:
            now = self._clock()
            plan: list[tuple[_Open, tuple[int, int], int]] = []  # entry, its counters, its window now
            merged: dict[tuple[str, str, int, int], list[int]] = {}
            for entry in entries:
                budget = entry.budget
                snapshot = entry.meter.egress_counts
                start = window_start(now, budget.limits.agent_window)
                plan.append((entry, snapshot, start))
                charge = entry.charge(snapshot)
                total = merged.setdefault(charge.key, [0, 0])
                total[0] += charge.rows
                total[1] += charge.bytes
                if start != budget.window_start:
                    merged.setdefault((*charge.key[:3], start), [0, 0])
            keys = sorted(merged)
            try:
                totals = await self._store.charge_egress([EgressCharge(*key, *merged[key]) for key in keys])
            except Exception:
                log.warning("egress_usage_charge_failed", sessions=len(entries), exc_info=True)
                return False
            by_key = dict(zip(keys, totals, strict=True))
            for entry, snapshot, start in plan:
                budget = entry.budget
                budget.charged_rows, budget.charged_bytes = snapshot
                if start != budget.window_start:
                    budget.roll(start)
                budget.used_rows, budget.used_bytes = by_key[entry.charge(snapshot).key]
                entry.meter.set_agent_budget(budget)
            return True

    async def _prune(self) -> None:
        now = self._clock()
        if now - self._pruned_at < 3600:
            return
        self._pruned_at = now
        try:
            await self._store.prune_egress_usage(int(now) - self._keep)
        except Exception:
            log.warning("egress_usage_prune_failed", exc_info=True)
