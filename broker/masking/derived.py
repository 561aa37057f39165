"""Values derived from sensitive columns: which result columns a statement's lineage marks.

The policy layer reads each statement's column lineage (`broker.policy.Lineage`: per
output, the source column names its value is computed from). `derived_rules` turns it into
a rule per RowDescription field: a field whose value is derived (not a bare column under its
own name) from a column the name rules mask is masked whole, whatever the output is called
(``select reverse(ssn)``, ``select upper(email) as e``). Its text becomes the fixed
``********`` (a rewritten value has no trustworthy shape: the domain of a reversed e-mail is
its local part), json a JSON string of it, any other type NULL.

Positions: output i is field i when the statement has no ``*``; with stars, the outputs
before the first star count from the start and those after the last from the end, and the
others (`Lineage.loose`) are matched by field name (a loose name None matches any field).
When the number of fields does not fit the lineage, every derived output is matched by name
(`Lineage.named`). Fail closed: the source ``?`` (a column the lineage could not name)
counts as masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from broker.masking.config import ColumnRule, InferenceMode, NameRules
from broker.masking.types import ColumnInfo

UNKNOWN_SOURCE = "?"  # broker.policy.flow.UNKNOWN
DERIVED_SOURCE = "*derived"  # broker.policy.flow.DERIVED: in `stored`, a computed value
ROW_SOURCE = "*row"  # broker.policy.flow.ROW: a table's whole row, shown as is (text, JSON)

Sources = frozenset[str] | None


class LineageLike(Protocol):
    """What the masker reads of `broker.policy.Lineage` (structural, like `CopyInfoLike`)."""

    @property
    def head(self) -> tuple[Sources, ...]: ...
    @property
    def tail(self) -> tuple[Sources, ...]: ...
    @property
    def starred(self) -> bool: ...
    @property
    def loose(self) -> tuple[tuple[str | None, frozenset[str]], ...]: ...
    @property
    def named(self) -> tuple[tuple[str | None, frozenset[str]], ...]: ...


def derived_rules(columns: Sequence[ColumnInfo], lineage: LineageLike, rules: NameRules) -> dict[int, ColumnRule]:
    """Field index -> MASK or PSEUDONYM, for the fields derived from a sensitive column."""
    n = len(columns)
    head, tail = lineage.head, lineage.tail
    fits = len(head) == n if not lineage.starred else len(head) + len(tail) <= n
    out: dict[int, ColumnRule] = {}
    for i, col in enumerate(columns):
        if not fits:
            sources = _by_name(col.name, lineage.named)
        elif i < len(head):
            sources = head[i]
        elif lineage.starred and i >= n - len(tail):
            sources = tail[i - (n - len(tail))]
        else:
            sources = _by_name(col.name, lineage.loose)
        if sources:
            rule = _strictest(sources, rules)
            if rule is not ColumnRule.KEEP:
                out[i] = rule
    return out


def _by_name(name: str, entries: tuple[tuple[str | None, frozenset[str]], ...]) -> Sources:
    found: set[str] = set()
    for entry_name, sources in entries:
        if entry_name is None or entry_name == name:
            found |= sources
    return frozenset(found) if found else None


def _strictest(sources: frozenset[str], rules: NameRules) -> ColumnRule:
    best = ColumnRule.KEEP
    for name in sources:
        if name == UNKNOWN_SOURCE:
            return ColumnRule.MASK
        if name == ROW_SOURCE:
            continue  # the row's values as they are: the content detectors see them
        rule = rules.rule(name)
        if rule is ColumnRule.MASK:
            return rule
        if rule is ColumnRule.PSEUDONYM:
            best = rule
    return best


_UNNAMED = {UNKNOWN_SOURCE: "an unnamed column", ROW_SOURCE: "a whole row"}


def exposed(stored: Sequence[tuple[str, frozenset[str]]], rules: NameRules) -> list[str]:
    """Of the values a statement writes into relations (`broker.policy.Verdict.stored`: where,
    sources), those derived from a column the name rules mask and stored under a name they do
    not mask (later reads would show them as is): ``x.r <- api_key`` each."""
    found: list[str] = []
    for where, sources in stored:
        # "table.column" from a write; "setting my.k" or "notification on ch" from a sink
        # (no column: a setting or a payload is never masked on its way back).
        column = where.rsplit(".", 1)[1] if "." in where and " " not in where else "*"
        if column != "*" and rules.rule(column) is not ColumnRule.KEEP and DERIVED_SOURCE not in sources:
            continue  # copied under a masked name: reads of it are masked too
        # Computed from a masked column, it is not stored even under a masked name: reads mask
        # it, but a safe-form filter on it (``phone = '6'``) would answer for the source.
        # A whole row stored as text or JSON may hold masked columns: the rules cannot tell.
        masked = sorted(
            s for s in sources if s in _UNNAMED or (s != DERIVED_SOURCE and rules.rule(s) is not ColumnRule.KEEP)
        )
        if masked:
            found.append(f"{where} <- {', '.join(_UNNAMED.get(s, s) for s in masked)}")
    return found


def inferred(
    controls: Sequence[tuple[str, frozenset[str]]], rules: NameRules
) -> list[tuple[str, str, InferenceMode]]:
    """Of the values a statement's result depends on other than as outputs
    (`broker.policy.Verdict.controls`: how, sources), those from a column the name rules mask
    (or one the gateway cannot name), with the column's inference mode unless it is allow:
    (column, how, mode) each, ``("ssn", "WHERE", REVIEW)``."""
    found: dict[tuple[str, str], InferenceMode] = {}
    for how, sources in controls:
        for source in sorted(sources):
            if source in _UNNAMED:
                mode, column = rules.inference(None), _UNNAMED[source]
            elif rules.rule(source) is not ColumnRule.KEEP:
                mode, column = rules.inference(source), source
            else:
                continue
            if mode is not InferenceMode.ALLOW:
                found.setdefault((column, how), mode)
    return [(column, how, mode) for (column, how), mode in found.items()]
