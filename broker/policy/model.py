"""What the policy engine answers: a `Verdict` per statement string.

These types are the contract with the proxy (docs/CONTRACTS.md, "broker.policy"): the proxy
enforces `Verdict.decision`, shows `rule` and `reason` to the client and the approver, tracks
SQL-level prepared statements through `prepares` / `executes` / `deallocates`, and hands
`copy` to the masker for ``COPY ... TO STDOUT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

__all__ = ["CopyInfo", "Decision", "Lineage", "RowLimits", "Verdict"]

#: Rows a write may change without review when the policy names no limit.
DEFAULT_MAX_ROWS = 100


class Decision(StrEnum):
    """allow < review < block; compare with ``<``/``>`` or take `Decision.strictest`."""

    ALLOW = "allow"
    REVIEW = "review"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return _RANK[self]

    # str's own ordering is alphabetical ("allow" < "block" < "review"), which is wrong here.
    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return _RANK[self] < _RANK[other]

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return _RANK[self] <= _RANK[other]

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return _RANK[self] > _RANK[other]

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Decision):
            return NotImplemented
        return _RANK[self] >= _RANK[other]

    @classmethod
    def strictest(cls, *decisions: Decision) -> Decision:
        """The strictest of `decisions` (ALLOW when none are given)."""
        best = cls.ALLOW
        for decision in decisions:
            if _RANK[decision] > _RANK[best]:
                best = decision
        return best


_RANK = {Decision.ALLOW: 0, Decision.REVIEW: 1, Decision.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """How the data of a COPY statement is laid out, as the masker needs it.

    The options are PostgreSQL's, with its defaults filled in: text format has delimiter
    ``\\t`` and null ``\\N`` (quote and escape do not apply to it; they hold ``"`` and the
    backslash that text format always escapes with); csv has delimiter ``,``, null ``''``,
    quote ``"`` and escape equal to quote. `relation` is the table name quoted so that it can
    be pasted into SQL; `query` is the inner query of ``COPY (query) TO`` deparsed.
    """

    direction: Literal["to_stdout", "from_stdin", "file", "program"]
    format: Literal["text", "csv", "binary"]
    delimiter: str
    null: str
    quote: str
    escape: str
    header: bool
    relation: str | None
    columns: tuple[str, ...]
    query: str | None
    encoding: str | None = None  # the ENCODING option as written, when given


@dataclass(frozen=True, slots=True)
class Lineage:
    """Which source columns a statement's result columns are derived from (`lineage`).

    An entry is the set of column names (as written: ``ssn``, never ``c.ssn``; ``?`` for
    one that cannot be named) an output's value is computed from, or None for an output that
    is a bare column under its own name or reads no column (the name rules see it as is).

    Without stars (`starred` False) output i is RowDescription field i. With stars, whose
    column count needs the catalog, `head` holds the outputs before the first star (fields
    0, 1, ...), `tail` those after the last star (counted from the end), and `loose` the
    derived outputs whose position is unknown (between stars, inside a star over a
    subquery, every output of a multi-statement string), to be matched by the name the
    result gives them (None: any name). `named` lists every derived output by name, for when
    the RowDescription does not have the expected number of fields.
    """

    head: tuple[frozenset[str] | None, ...]
    tail: tuple[frozenset[str] | None, ...] = ()
    starred: bool = False
    loose: tuple[tuple[str | None, frozenset[str]], ...] = ()
    named: tuple[tuple[str | None, frozenset[str]], ...] = ()


@dataclass(frozen=True, slots=True)
class RowLimits:
    """How many rows a write may change, per table, before it needs review (the proxy
    rehearses such writes: proxy.rehearsal). `tables` are (glob, limit), first match wins;
    a table no glob names gets `default`."""

    default: int = DEFAULT_MAX_ROWS
    tables: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one statement string (which may hold several statements)."""

    decision: Decision
    rule: str
    reason: str
    shadow_decision: Decision | None = None
    prepares: tuple[tuple[str, Verdict], ...] = ()
    executes: tuple[str, ...] = ()
    deallocates: tuple[str | None, ...] = ()
    copy: CopyInfo | None = None
    statement_count: int = 1
    tables: tuple[str, ...] = ()  # touched anywhere, for approvers to see the blast radius
    # Where the result columns come from, for the masker; None when no output is derived.
    lineage: Lineage | None = None
    # Values written into relations under other names than their source columns' (where,
    # sources): the proxy sends a write of masked values to review (reads would not mask them).
    stored: tuple[tuple[str, frozenset[str]], ...] = ()
    # Values the result depends on other than as outputs (how, sources): a WHERE, ORDER BY,
    # LIMIT ... (`flow.controls`); the proxy sends masked ones to review (`masking/inference`).
    controls: tuple[tuple[str, frozenset[str]], ...] = ()
    # Cursors: declared (their rows' lineage is this verdict's), fetched from, closed (None: all).
    declares: tuple[str, ...] = ()
    fetches: tuple[str, ...] = ()
    closes: tuple[str | None, ...] = ()
    # Transaction control statements (BEGIN, COMMIT, SAVEPOINT, ...) in the string.
    transactions: int = 0
    # Set when the string writes rows its text does not bound (UPDATE, DELETE, MERGE, INSERT
    # ... SELECT or ON CONFLICT DO UPDATE, anywhere in it): the limits its blast radius is
    # held to. An allowed one is rehearsed by the proxy and parked when over a limit.
    rehearse: RowLimits | None = None
    # The approval the statement runs (or is refused) under: set by the proxy when a review
    # releases it, never by the policy. Not part of equality: the same decision either way.
    approval_id: str | None = field(default=None, compare=False)

    @property
    def cursor_only(self) -> bool:
        """Only cursor statements (DECLARE, FETCH, CLOSE) and transaction control: nothing in
        the string runs code that could open or close cursors (but a fetched cursor's query)."""
        named = len(self.declares) + len(self.fetches) + len(self.closes)
        return named > 0 and self.statement_count == named + self.transactions

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view, as `jitgate policy check --json` prints it."""
        out: dict[str, object] = {
            "decision": self.decision.value,
            "rule": self.rule,
            "reason": self.reason,
        }
        if self.shadow_decision is not None:
            out["shadow_decision"] = self.shadow_decision.value
        if self.statement_count != 1:
            out["statement_count"] = self.statement_count
        if self.tables:
            out["tables"] = list(self.tables)
        if self.prepares:
            out["prepares"] = {name: inner.as_dict() for name, inner in self.prepares}
        if self.executes:
            out["executes"] = list(self.executes)
        if self.stored:
            out["stores"] = [{"into": where, "from": sorted(sources)} for where, sources in self.stored]
        if self.controls:
            out["controls"] = [{"how": how, "from": sorted(sources)} for how, sources in self.controls]
        if self.rehearse is not None:  # the proxy counts what it changes before it keeps it
            out["rehearse"] = {
                "max_rows_without_review": self.rehearse.default,
                "max_rows_per_table": dict(self.rehearse.tables),
            }
        if self.deallocates:
            out["deallocates"] = [name for name in self.deallocates]
        if self.copy is not None:
            c = self.copy
            out["copy"] = {
                "direction": c.direction,
                "format": c.format,
                "delimiter": c.delimiter,
                "null": c.null,
                "quote": c.quote,
                "escape": c.escape,
                "header": c.header,
                "relation": c.relation,
                "columns": list(c.columns),
                "query": c.query,
            }
        return out
