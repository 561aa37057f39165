"""Writes judged by their blast radius: the rehearsal.

A WHERE clause is syntax, not safety (``where id is not null`` matches every row). A write
whose row count its text does not bound (``Verdict.rehearse``: UPDATE, DELETE, MERGE,
INSERT ... SELECT, INSERT ... ON CONFLICT DO UPDATE, anywhere in the string) and that the
policy would allow runs *once*, as the client sent it, inside a transaction or savepoint the
gateway owns; its answers are held, not relayed, until the gateway has counted the rows it
changed. Under the limits the gateway commits (or releases its savepoint) and relays the
held answers, with the ReadyForQuery status the client would have seen without it; over a
limit it rolls back, discards them, and parks the original messages for review with the
exact count ("would change 406 of 406 rows of orders"). An approved unit then runs as a
normal statement, once.

Why not "rehearse, roll back, run it again": sequences, clocks and random() are not
transactional, so a second run is a different statement (``delete from t where
(select nextval('s')) > 5`` touches nothing in a rehearsal and everything afterwards). The
rehearsal *is* the execution.

The unit (proxy.requests): a simple Query; or, in the extended protocol, the client's
messages from a Bind of such a statement to the next Sync, sent only once the Sync has
arrived and nothing else is in flight (so the transaction status is the last
ReadyForQuery's). Around it the gateway sends its own messages, on the same connection,
through entries whose answers are never relayed (`Entry.own`)::

    'I':  BEGIN              BEFORE  <unit>  AFTER Sync    COMMIT | ROLLBACK Sync
    'T':  SAVEPOINT jitgate  BEFORE  <unit>  AFTER Sync    RELEASE | ROLLBACK TO + RELEASE Sync

All of them are extended-protocol messages of a named statement and portal of the
gateway's, so the client's unnamed statement and portal stay as they were (a simple Query
drops the unnamed statement). BEFORE and AFTER read ``pg_stat_xact_user_tables``: the
tuples inserted, updated and deleted per table by this backend, not yet reported, which is
exact and immediate inside a transaction (no report happens within one), and counts what a
writable CTE, a MERGE or a trigger changed, table by table (a CTE's command tag says
``SELECT 1``). The difference is the unit's blast radius.

An error in the unit: if the gateway opened the transaction it rolls back and the client
gets the unit's answers with ReadyForQuery 'I'; inside the client's transaction it is left
failed ('E'), as PostgreSQL leaves it. An error in the gateway's own counting (a cancel
that hit it) fails closed: rolled back, and the client gets that error instead of the
unit's answers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from broker.policy.model import Decision, RowLimits, Verdict
from broker.policy.rules import NamePattern
from proxy import inflight as k
from proxy.inflight import Entry
from proxy.protocol import codes as c
from proxy.protocol import messages as m

if TYPE_CHECKING:
    from proxy.session_state import SessionState

#: The gateway's prepared statement and portal for its own messages, and its savepoint.
REHEARSAL_NAME = "__jitgate_rehearsal"
#: Answers held for one unit at most; a larger result cannot wait for its count and is
#: treated as over the limit (rolled back, parked): fail closed.
MAX_HELD_BYTES = 16 * 1024 * 1024
RULE = "gateway/blast-radius"
#: Client bytes a rehearsal waits for its unit's Sync before it rehearses no more.
MAX_UNIT_BYTES = 1024 * 1024
_U32 = struct.Struct("!I")

_SUM = "(s.n_tup_ins OPERATOR(pg_catalog.+) s.n_tup_upd OPERATOR(pg_catalog.+) s.n_tup_del)"
#: Rows written by this backend and not yet reported, per table; a partition's count goes to
#: its partitioned root (pg_partition_root), so that 5 partitions of 90 rows are one table of
#: 450 and a limit naming the parent applies. Operators are spelled schema-qualified: a
#: session may put its own `+` ahead of pg_catalog's on its search_path. A row with relid 0
#: says the server is not counting (track_counts off): nothing can be told.
_BY_ROOT = (
    "SELECT COALESCE(pg_catalog.pg_partition_root(s.relid)::pg_catalog.oid, s.relid) AS root,"
    f" {_SUM} AS n FROM pg_catalog.pg_stat_xact_user_tables s WHERE {_SUM} OPERATOR(pg_catalog.>) 0"
)
_UNCOUNTED = (
    " UNION ALL SELECT 0, 0, NULL, NULL, NULL WHERE NOT pg_catalog.current_setting('track_counts')::pg_catalog.bool"
)
BEFORE = (
    "SELECT r.root::pg_catalog.int8, pg_catalog.sum(r.n)::pg_catalog.int8, NULL::pg_catalog.text,"
    f" NULL::pg_catalog.text, NULL::pg_catalog.int8 FROM ({_BY_ROOT}) r GROUP BY r.root" + _UNCOUNTED
)
#: The same, with each table's name and size (for the approval card).
AFTER = (
    "SELECT r.root::pg_catalog.int8, pg_catalog.sum(r.n)::pg_catalog.int8, n.nspname::pg_catalog.text,"
    " c.relname::pg_catalog.text,"
    " pg_catalog.max(CASE WHEN c.reltuples OPERATOR(pg_catalog.>=) 0 THEN c.reltuples::pg_catalog.int8"
    " ELSE a.n_live_tup END)"
    f" FROM ({_BY_ROOT}) r"
    " JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) r.root"
    " JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace"
    " LEFT JOIN pg_catalog.pg_stat_user_tables a ON a.relid OPERATOR(pg_catalog.=) r.root"
    " GROUP BY r.root, n.nspname, c.relname" + _UNCOUNTED
)

# Phases of a rehearsal.
COLLECTING, RUNNING, FINISHING, DONE = range(4)
# Outcomes, once the unit is measured: relay the unit's own answers (it failed), relay the
# gateway's counting error instead (fail closed), keep it (commit, relay), park it.
RELAY, FAIL, KEEP, PARK = range(1, 5)
# What an own step is (`Entry.own_step`).
PRE, MEASURE_BEFORE, MEASURE_AFTER, FINAL = range(4)


@dataclass(frozen=True, slots=True)
class TableChange:
    table: str  # schema.name
    rows: int
    size: int | None  # the table's row count (planner's reltuples, else live tuples)
    limit: int
    # An estimate's upper bound (an UPDATE or DELETE changes at most its table): what is
    # held to the limit, since a planner's estimate can be talked down.
    bound: int | None = None

    @property
    def over(self) -> bool:
        return (self.bound if self.bound is not None else self.rows) > self.limit

    def describe(self, *, estimated: bool = False) -> str:
        name = self.table.removeprefix("public.")
        rows = f"about {self.rows:,}" if estimated else f"{self.rows:,}"
        of = f" of {self.size:,}" if self.size is not None and self.size >= 0 else ""
        up_to = f", up to {self.bound:,}" if self.bound is not None and self.bound > self.rows else ""
        return f"would change {rows}{of} rows of {name}{up_to}"


@dataclass(frozen=True, slots=True)
class BlastRadius:
    """What a write changes (or the planner expects it to), per table, against its limits."""

    changes: tuple[TableChange, ...]
    estimated: bool = False  # the planner's estimate, not a rehearsal's count
    note: str | None = None  # why it is estimated, or why nothing could be told

    @property
    def over(self) -> bool:
        return any(change.over for change in self.changes)

    @property
    def text(self) -> str:
        shown = [c for c in self.changes if c.rows] or list(self.changes)
        parts = [c.describe(estimated=self.estimated) for c in shown]
        text = "; ".join(parts) if parts else "row count unknown"
        if self.estimated:
            text += " (planner estimate" + (f"; {self.note}" if self.note else "") + ")"
        elif self.note:
            text += f" ({self.note})"
        return text

    def details(self) -> dict[str, object]:
        """For the approval card (proxy.approvals)."""
        return {
            "blast_radius": self.text,
            "row_count": "estimated" if self.estimated else "rehearsed",
            "rows_changed": [
                {"table": c.table, "rows": c.rows, "of": c.size, "limit": c.limit} for c in self.changes
            ],
        }


def limit_for(limits: RowLimits, table: str) -> int:
    """The limit of `table` (schema.name): the first matching glob's, else the default."""
    for pattern, limit in limits.tables:
        if NamePattern(pattern).matches(table):
            return limit
    return limits.default


def review_verdict(verdict: Verdict, blast: BlastRadius) -> Verdict:
    """The verdict of a unit over its limits (or whose size could not be told)."""
    reason = f"it {blast.text}, more than the policy lets a write change without review"
    if not blast.changes:
        reason = f"the number of rows it changes could not be told ({blast.note or 'unknown'})"
    return Verdict(
        Decision.REVIEW, RULE, reason, statement_count=verdict.statement_count, tables=verdict.tables,
        lineage=verdict.lineage, transactions=verdict.transactions,
    )


@dataclass(eq=False)
class Rehearsal:
    """One unit being rehearsed (the phases: COLLECTING its messages, RUNNING with the
    answers held, FINISHING the gateway's COMMIT or ROLLBACK, DONE)."""

    txn: bytes  # the status before the unit: b"I" (the gateway opens a transaction) or b"T"
    kind: int  # the first message's type: Query or Bind
    sql: str
    verdict: Verdict
    unit: bytes  # the client's messages, to park and send again after an approval
    uses: tuple[Any, ...] = ()
    phase: int = COLLECTING
    held: list[bytes] = field(default_factory=list)  # answers for the client, masked, not sent
    held_bytes: int = 0
    overflow: bool = False
    before: dict[int, int] = field(default_factory=dict)
    after: dict[int, tuple[int, str, int | None]] = field(default_factory=dict)
    not_counting: bool = False
    unit_status: bytes | None = None  # the ReadyForQuery status that ended the unit
    own_error: bytes | None = None  # the first ErrorResponse of the gateway's counting
    own_error_step: int = PRE
    final_error: bytes | None = None  # an error at the gateway's COMMIT (deferred constraints)
    measured: bool = False  # the AFTER count's Sync is answered
    finished: bool = False  # the COMMIT's or ROLLBACK's Sync is answered
    outcome: int = 0  # RELAY, FAIL, KEEP or PARK, once measured
    blast_radius: BlastRadius | None = None
    counted: int = 0  # `held` chunks counted into held_bytes
    opening: list[bytes] = field(default_factory=list)  # the preamble, sent before the Bind
    # The preamble's first entry: answers are held from when it is at the head (what was in
    # flight before it, a Parse of the same batch, is relayed as usual).
    start: Entry | None = None
    started: bool = False
    began: bool = False  # the server ran the preamble (not skipped after an earlier error)
    completed: list[Entry] = field(default_factory=list)  # the unit's statements, to record
    first: bool = True  # the unit's Bind is still to be sent

    # -- the gateway's own messages ------------------------------------------------------------

    def own(self, sql: str, step: int, *, sync: bool = False) -> tuple[list[bytes], list[Entry]]:
        """Parse/Bind/Execute/Close/Close of `sql` under the gateway's own names (and Sync)."""
        name = REHEARSAL_NAME
        out = [
            m.parse_message(name, sql),
            m.frame(b"B", m.cstr(name) + m.cstr(name) + b"\0\0\0\0\0\0"),
            m.frame(b"E", m.cstr(name) + b"\0\0\0\0"),
            m.close_message("P", name),
            m.close_message("S", name),
        ]
        entries = [
            Entry(k.PARSE, own=self, own_step=step),
            Entry(k.BIND, own=self, own_step=step),
            Entry(k.EXECUTE, phase=k.ROWS, own=self, own_step=step, plan=_OWN_ROWS),
            Entry(k.CLOSE, own=self, own_step=step),
            Entry(k.CLOSE, own=self, own_step=step),
        ]
        if sync:
            out.append(m.SYNC)
            entries.append(Entry(k.SYNC, own=self, own_step=step))
        return out, entries

    def preamble(self) -> tuple[list[bytes], list[Entry]]:
        opening = "BEGIN" if self.txn == b"I" else f"SAVEPOINT {REHEARSAL_NAME}"
        out, entries = self.own(opening, PRE)
        more, more_entries = self.own(BEFORE, MEASURE_BEFORE)
        self.start = entries[0]
        return out + more, entries + more_entries

    def postamble(self) -> tuple[list[bytes], list[Entry]]:
        return self.own(AFTER, MEASURE_AFTER, sync=True)

    def ending(self, *, keep: bool) -> tuple[list[bytes], list[Entry]]:
        """COMMIT (or RELEASE) when `keep`, else ROLLBACK (or ROLLBACK TO + RELEASE)."""
        if self.txn == b"I":
            return self.own("COMMIT" if keep else "ROLLBACK", FINAL, sync=True)
        if keep:
            return self.own(f"RELEASE SAVEPOINT {REHEARSAL_NAME}", FINAL, sync=True)
        out, entries = self.own(f"ROLLBACK TO SAVEPOINT {REHEARSAL_NAME}", FINAL)
        more, more_entries = self.own(f"RELEASE SAVEPOINT {REHEARSAL_NAME}", FINAL, sync=True)
        return out + more, entries + more_entries

    # -- answers -------------------------------------------------------------------------

    def count_held(self) -> None:
        """Count what was held since the last call; past MAX_HELD_BYTES nothing more is kept
        and the unit counts as over its limit."""
        held = self.held
        while self.counted < len(held):
            self.held_bytes += len(held[self.counted])
            self.counted += 1
        if self.held_bytes > MAX_HELD_BYTES:
            self.overflow = True
            held.clear()
            self.counted = 0

    def row(self, values: list[bytes | None], step: int) -> None:
        try:
            relid = int(values[0] or b"0")
            rows = int(values[1] or b"0")
        except (IndexError, ValueError):
            return
        if relid == 0:
            self.not_counting = True
        elif step == MEASURE_BEFORE:
            self.before[relid] = rows
        elif step == MEASURE_AFTER:
            schema = (values[2] or b"").decode("utf-8", "replace")
            name = (values[3] or b"").decode("utf-8", "replace")
            size = int(values[4]) if len(values) > 4 and values[4] is not None else None
            self.after[relid] = (rows, f"{schema}.{name}", size)

    def blast(self, limits: RowLimits) -> BlastRadius:
        changes = []
        for relid, (rows, table, size) in sorted(self.after.items(), key=lambda item: item[1][1]):
            changed = rows - self.before.get(relid, 0)
            if changed > 0:
                changes.append(TableChange(table, changed, size, limit_for(limits, table)))
        return BlastRadius(tuple(changes))

    @property
    def unit_failed(self) -> bool:
        return self.unit_status == b"E"


def asynchronous(held: list[bytes]) -> list[bytes]:
    """What of discarded answers the client must still get: notifications and parameter
    changes (their values are the server's, whatever became of the unit)."""
    out = []
    data = b"".join(held)
    pos = 0
    while len(data) - pos >= 5:
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if data[pos] in (c.NOTIFICATION, c.PARAMETER_STATUS):
            out.append(data[pos:end])
        pos = end
    return out


class _OwnRows:
    """The row plan of the gateway's own Execute: its rows go to the rehearsal, never to
    the client (proxy.answers checks `Entry.own` before masking)."""

    scanned = rewrite = None

    def mask_values(self, values: list[bytes | None]) -> tuple[list[bytes | None] | None, int]:
        return None, 0  # pragma: no cover - never called: proxy.answers takes own rows first


_OWN_ROWS = _OwnRows()


@dataclass(frozen=True, slots=True)
class Estimate:
    """A side-channel question: the planner's row estimate of a write that cannot be
    rehearsed (proxy.side_channel.SideChannel.estimate_write)."""

    sql: str
    tables: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EstimateAnswer:
    rows: int
    table: str | None  # the written table, when the plan names one
    size: int | None
    note: str | None = None  # e.g. that the table was never analysed
    bound: int | None = None  # at most this many (None: no bound could be told)


def estimated(answer: EstimateAnswer | None, limits: RowLimits, why: str) -> BlastRadius:
    """The blast radius of a write that could not be rehearsed, from the planner."""
    if answer is None:
        return BlastRadius((), estimated=True, note=f"{why}; the planner could not estimate it either")
    table = answer.table or "the table"
    limit = limit_for(limits, answer.table) if answer.table else limits.default
    note = why + (f"; {answer.note}" if answer.note else "")
    bound = answer.bound if answer.bound is not None else max(answer.rows, limit + 1)  # unknown: over
    return BlastRadius((TableChange(table, answer.rows, answer.size, limit, bound),), estimated=True, note=note)


# -- which messages form a rehearsed unit ----------------------------------------------------


def unit_end(
    buf: bytes | bytearray, pos: int, portal: str, state: SessionState, *,
    max_message: int, decide: Callable[..., Verdict],
) -> int | str | None:
    """Where the unit of the Bind of `portal` ending at `pos` in the client's buffer ends
    (after its Sync); None: the Sync has not arrived; a string: why the unit cannot be
    rehearsed. Looks only: `decide` judges a Parse in the unit, `state` knows the names."""
    n = len(buf)
    parsed: set[str] = set()
    bound: set[str] = {portal}
    while n - pos >= 5:
        kind = buf[pos]
        (length,) = _U32.unpack_from(buf, pos + 1)
        end = pos + 1 + length
        if length < 4 or length > max_message:
            return "malformed"  # (processing refuses it)
        if end > n:
            break
        if kind == c.SYNC:
            return end
        if kind == c.FLUSH:
            return "the client asked for answers before its Sync"
        body = bytes(buf[pos + 5 : end])
        if kind == c.PARSE:
            parse = m.parse_parse(body)
            why = unrehearsable(decide(parse.query, extended=True))
            if why:
                return why
            parsed.add(parse.name)
        elif kind == c.BIND:
            bind = m.parse_bind(body)
            bound.add(bind.portal)
            if bind.statement not in parsed:
                statement = state.statement(bind.statement)
                why = unrehearsable(statement.verdict if statement is not None else None)
                if why:
                    return why
        elif kind == c.EXECUTE:
            name = m.parse_execute(body)[0]
            if name not in bound:
                earlier = state.portal(name)
                if earlier is not None and earlier.statement is not None:
                    inner = earlier.statement.verdict
                    why = unrehearsable(inner)
                    if why or (inner is not None and inner.rehearse is not None and not earlier.covered):
                        return why or "it executes a portal bound in an earlier batch"
        elif kind not in (c.DESCRIBE, c.CLOSE):
            return "its batch holds a Query, FunctionCall or COPY data"
        pos = end
    if n > MAX_UNIT_BYTES:
        return "its batch is too long to hold"
    return None


def unrehearsable(verdict: Verdict | None) -> str | None:
    """Why a statement in a unit keeps the unit from being rehearsed (None: it does not)."""
    if verdict is None:
        return None  # refused when it comes: nothing runs
    if verdict.transactions:
        return "its batch holds transaction control"
    if verdict.copy is not None:
        return "its batch holds a COPY"
    if verdict.decision is Decision.REVIEW or by_name(verdict):
        return "its batch holds a statement that needs its own review"
    return None


def by_name(verdict: Verdict | None) -> bool:
    """The statement runs SQL EXECUTE or FETCH: what it returns depends on names at run time."""
    return verdict is not None and bool(verdict.executes or verdict.fetches)
