"""Egress limits: how many result rows and bytes one statement, one session, and one agent
across all its sessions may return.

Configured per resource (`resources.<name>.egress`) and enforced by `proxy.machine` for every
wire client, whatever protocol it speaks. Bytes are the sizes of the DataRow messages the
upstream sent (and of COPY TO's CopyData messages, a row each); rows and bytes of a session
add up across its statements. Each Execute counts as a statement, so a cursor fetched in
batches is bounded by the session limits.

When a limit would be exceeded the machine stops relaying that statement's rows (the rest are
read from the upstream and dropped), answers the client with `error_response` below in place
of the statement's completion, then the usual ReadyForQuery: the connection stays usable. The
statement's record carries SQLSTATE 54000 and `jitgate_egress_limit_total` counts the cut.

Per-agent budgets (`max_rows_per_agent`, `max_bytes_per_agent` over `agent_window`) are kept
in the store by `proxy.egress_ledger`; here a session only sees an `AgentBudget`: what its
agent had used when last synced. The machine folds what is left of it into its session caps,
so the per-row check is the same two comparisons as with session limits alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from proxy.inflight import Entry
from proxy.protocol import messages as m

SQLSTATE = "54000"  # program_limit_exceeded
UNLIMITED = 1 << 62

_UNITS = {
    "max_rows_per_statement": "rows per statement",
    "max_bytes_per_statement": "bytes per statement",
    "max_rows_per_session": "rows per session",
    "max_bytes_per_session": "bytes per session",
    "max_rows_per_agent": "rows per agent",
    "max_bytes_per_agent": "bytes per agent",
}
DAY = 86_400


def window_text(seconds: int) -> str:
    """`3600` -> "1h", `5400` -> "1h30m": how `agent_window` is written in the settings."""
    parts = []
    for unit, size in (("d", DAY), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


@dataclass(frozen=True, slots=True)
class EgressLimits:
    """Caps on returned rows/bytes; UNLIMITED where not configured."""

    max_rows_per_statement: int = UNLIMITED
    max_bytes_per_statement: int = UNLIMITED
    max_rows_per_session: int = UNLIMITED
    max_bytes_per_session: int = UNLIMITED
    max_rows_per_agent: int = UNLIMITED
    max_bytes_per_agent: int = UNLIMITED
    agent_window: int = DAY  # seconds; the per-agent budgets start over in each window

    @classmethod
    def of(cls, *, agent_window: int | None = None, **limits: int | None) -> EgressLimits | None:
        """Limits from optional values; None when none is set (nothing to enforce)."""
        given = {k: v for k, v in limits.items() if v is not None}
        if not given:
            return None
        return cls(**given, agent_window=agent_window) if agent_window else cls(**given)

    @property
    def per_agent(self) -> bool:
        """A budget per agent principal is configured."""
        return self.max_rows_per_agent < UNLIMITED or self.max_bytes_per_agent < UNLIMITED

    def value(self, limit: str) -> int:
        return int(getattr(self, limit))


def window_start(now: float, window: int) -> int:
    """The start (Unix seconds) of the fixed `window`-second window holding `now`."""
    return int(now) // window * window


@dataclass(slots=True)
class AgentBudget:
    """One session's view of its agent's budget on one resource, for one window.

    `used_*` are the agent's totals in the store at the last sync (this session's charges
    included); `charged_*` are this session's own counters (the machine's `egress_counts`)
    as of its last charge. The session may therefore read `limit - used` beyond `charged`
    before the next sync: `caps()` gives that in the machine's session-counter terms.
    """

    principal: str
    resource: str
    limits: EgressLimits
    window_start: int
    used_rows: int = 0
    used_bytes: int = 0
    charged_rows: int = 0
    charged_bytes: int = 0

    @property
    def window_end(self) -> int:
        return self.window_start + self.limits.agent_window

    def caps(self) -> tuple[int, int]:
        """The machine's session row and byte counters may reach these, no further."""
        limits = self.limits
        rows = bytes_ = UNLIMITED
        if limits.max_rows_per_agent < UNLIMITED:
            rows = self.charged_rows + max(0, limits.max_rows_per_agent - self.used_rows)
        if limits.max_bytes_per_agent < UNLIMITED:
            bytes_ = self.charged_bytes + max(0, limits.max_bytes_per_agent - self.used_bytes)
        return rows, bytes_

    def roll(self, start: int) -> None:
        """A new window, once what was read in the last one is charged: nothing used yet."""
        self.window_start = start
        self.used_rows = self.used_bytes = 0


def error_response(
    limits: EgressLimits, limit: str, resource: str | None = None, agent: AgentBudget | None = None
) -> bytes:
    """The ErrorResponse a client gets for a statement cut at `limit`."""
    where = f" on resource {resource!r}" if resource else ""
    detail = f"limit {limit}; the rows before the limit were returned, the rest were dropped"
    per = ""
    if limit.endswith("_agent"):
        window = window_text(limits.agent_window)
        per = f" per {window}"
        resets = "at the end of the window"
        if agent is not None:
            ends = datetime.fromtimestamp(agent.window_end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            resets = f"at {ends}"
            detail = (
                f"limit {limit}; {agent.principal} has used its {window} budget on this resource "
                f"(all its sessions count); the rows before the limit were returned, the rest were dropped"
            )
        hint = (
            f"This agent's egress budget for the current {window} window is used up; it resets {resets}. "
            f"New sessions do not reset it: wait for the reset, or ask an administrator to raise "
            f"resources.{resource or '<name>'}.egress.{limit}."
        )
    elif limit.endswith("_session"):
        hint = "This session has used its result budget; open a new session (a new grant) for more."
    else:
        hint = "Narrow the query: select fewer columns, add a WHERE clause or a LIMIT, or aggregate."
    return m.error_response(
        SQLSTATE,
        f"jitgate: result exceeds the egress limit of {limits.value(limit)} {_UNITS[limit]}{per}{where}",
        detail=detail,
        hint=hint,
    )


class EgressMeter:
    """One session's egress counters and caps. The machine asks it about each DataRow (and
    each CopyData of COPY TO) of the client's statements; the gateway's own questions never
    reach it."""

    def __init__(self, limits: EgressLimits, on_limit: Callable[[str], None] | None, resource: str | None) -> None:
        self.limits = limits
        self._on_limit = on_limit
        self._resource = resource
        self.session_rows = 0
        self.session_bytes = 0
        self.agent: AgentBudget | None = None
        # The session caps, lowered to what is left of the agent's budget when it has one.
        self._cap_rows = limits.max_rows_per_session
        self._cap_bytes = limits.max_bytes_per_session

    def set_agent_budget(self, budget: AgentBudget | None) -> None:
        """Enforce `budget` from now on; call again after it is synced (it is read, not copied)."""
        self.agent = budget
        limits = self.limits
        rows, nbytes = budget.caps() if budget is not None else (UNLIMITED, UNLIMITED)
        self._cap_rows = min(limits.max_rows_per_session, rows)
        self._cap_bytes = min(limits.max_bytes_per_session, nbytes)

    def drop(self, entry: Entry, size: int) -> bool:
        """Count one row of `size` bytes of `entry`'s result; True: over a limit, drop it
        (`entry.cut` then names the limit, and the machine answers with `error`)."""
        if entry.cut is not None or entry.muted:
            return True
        limits = self.limits
        rows = entry.rows + 1
        nbytes = entry.bytes + size
        if rows > limits.max_rows_per_statement:
            limit = "max_rows_per_statement"
        elif nbytes > limits.max_bytes_per_statement:
            limit = "max_bytes_per_statement"
        elif self.session_rows + 1 > self._cap_rows:
            over = self.session_rows + 1 > limits.max_rows_per_session
            limit = "max_rows_per_session" if over else "max_rows_per_agent"
        elif self.session_bytes + size > self._cap_bytes:
            over = self.session_bytes + size > limits.max_bytes_per_session
            limit = "max_bytes_per_session" if over else "max_bytes_per_agent"
        else:
            entry.bytes = nbytes
            self.session_rows += 1
            self.session_bytes += size
            return False
        entry.cut = limit
        entry.error = SQLSTATE
        entry.plan = None
        if self._on_limit is not None:
            self._on_limit(limit)
        return True

    def error(self, entry: Entry) -> bytes:
        return error_response(self.limits, entry.cut or "", self._resource, self.agent)
