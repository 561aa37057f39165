"""What a query level reads from: its FROM items (`Rel`), the values they hold (`Col`), the
target-list entries that a subquery or CTE passes on (`Out`), and name resolution (`Scope`).

A value's lineage is the set of source column *names* it is computed from (the masking rules
are by name), plus two marks: `UNKNOWN`, a source the analysis cannot name (the masker treats
it as sensitive), and `ROW`, a table's whole row, its columns unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DERIVED", "EMPTY", "NOTHING", "ROW", "UNKNOWN", "Col", "Join", "Opaque", "Out", "Query", "Rel", "Scope",
    "Table", "expand_outs", "expand_rels", "fixpoint_key", "grow_outs", "is_derived",
    "loose_entries", "rename_outs", "union_hits", "whole_row",
]  # fmt: skip

UNKNOWN = "?"  # a source the lineage cannot name; the masker treats it as sensitive
DERIVED = "*derived"  # in `stored`: the value is computed from its sources, not copied
ROW = "*row"  # a table's whole row, its columns unknown: the masker leaves it to the detectors
EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Col:
    """The lineage of one value: its sources, and whether it is a stored column as is."""

    sources: frozenset[str]
    bare: bool  # the stored value of a column whose name is the one it was read by
    plain: bool = False  # the stored value of a column, maybe under another name (not computed)

    def __or__(self, other: Col) -> Col:
        return Col(self.sources | other.sources, self.bare and other.bare, self.plain and other.plain)

    @property
    def copied(self) -> bool:
        """A stored value as is (under its own name or another), not computed from one."""
        return self.bare or self.plain


NOTHING = Col(EMPTY, False)


@dataclass(frozen=True, slots=True)
class Out:
    """One entry of a target list: a named value, or a star (`rels` it expands)."""

    name: str | None  # None: a name this module cannot figure, so it matches any
    col: Col | None
    rels: tuple[Rel, ...] = ()

    @property
    def star(self) -> bool:
        return self.col is None


class Rel:
    """Something in FROM that columns are read from."""

    qual: str | None = None

    def column(self, name: str) -> tuple[Col, bool] | None:
        """(lineage, definite) of `name` here; None when it is certainly not here."""
        raise NotImplementedError

    def expand(self) -> list[Out] | None:
        """What ``*`` over it yields, or None when the count is unknown."""
        return None

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        """Derived values ``*`` over it may yield, by name."""
        return []

    def row(self) -> Col:
        """The lineage of a whole-row reference to it."""
        return NOTHING


class Table(Rel):
    def __init__(self, qual: str | None, renamed: tuple[str, ...]) -> None:
        self.qual = qual
        self.renamed = renamed

    def column(self, name: str) -> tuple[Col, bool] | None:
        if name in self.renamed:
            return Col(frozenset({UNKNOWN}), False), True
        return Col(frozenset({name}), True), False

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return [(n, frozenset({UNKNOWN})) for n in self.renamed]

    def row(self) -> Col:
        return Col(frozenset({UNKNOWN}), False) if self.renamed else NOTHING


class Query(Rel):
    """A FROM-subquery or a CTE reference: its target list, renamed by an alias list."""

    def __init__(self, qual: str | None, outs: list[Out], renamed: tuple[str, ...]) -> None:
        self.qual = qual
        self.outs = rename_outs(outs, renamed)

    def column(self, name: str) -> tuple[Col, bool] | None:
        found: Col | None = None
        definite = False
        for out in self.outs:
            if out.col is None:
                for rel in out.rels:
                    hit = rel.column(name)
                    if hit is not None:
                        found = hit[0] if found is None else found | hit[0]
                        definite = definite or hit[1]
            elif out.name == name or out.name is None:
                col = out.col
                if out.name is None:
                    col = Col(col.sources, False)
                found = col if found is None else found | col
                definite = definite or out.name == name
        return None if found is None else (found, definite)

    def expand(self) -> list[Out] | None:
        return expand_outs(self.outs)

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return loose_entries(self.outs)

    def row(self) -> Col:
        return Col(every_source(self.outs), False)


class Opaque(Rel):
    """A function (or XMLTABLE, JSON_TABLE, ...) in FROM: any column name, all from `col`."""

    def __init__(self, qual: str | None, col: Col) -> None:
        self.qual = qual
        self.col = col

    def column(self, name: str) -> tuple[Col, bool] | None:
        return self.col, False

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return [(None, self.col.sources)] if self.col.sources else []

    def row(self) -> Col:
        return self.col


class Join(Rel):
    def __init__(self, qual: str | None, parts: list[Rel], merged: bool) -> None:
        self.qual = qual
        self.parts = parts
        self.merged = merged  # USING / NATURAL: the star does not add up

    def column(self, name: str) -> tuple[Col, bool] | None:
        return union_hits(rel.column(name) for rel in self.parts)

    def expand(self) -> list[Out] | None:
        return None if self.merged else expand_rels(self.parts)

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return [entry for rel in self.parts for entry in rel.loose()]

    def row(self) -> Col:
        col = NOTHING
        for rel in self.parts:
            col = col | rel.row()
        return col


def union_hits(hits: Iterable[tuple[Col, bool] | None]) -> tuple[Col, bool] | None:
    found: tuple[Col, bool] | None = None
    for hit in hits:
        if hit is None:
            continue
        found = hit if found is None else (found[0] | hit[0], found[1] or hit[1])
    return found


def rename_outs(outs: list[Out], names: tuple[str, ...]) -> list[Out]:
    """Apply an alias column list: positionally up to the first star, unknown after it."""
    if not names:
        return outs
    result = list(outs)
    for i, name in enumerate(names):
        if i < len(result) and all(not o.star for o in result[: i + 1]):
            out = result[i]
            assert out.col is not None
            same = out.name == name
            result[i] = Out(name, Col(out.col.sources, out.col.bare and same, out.col.copied))
        else:
            result.append(Out(name, Col(frozenset({UNKNOWN}), False)))
    return result


def expand_rels(rels: Iterable[Rel]) -> list[Out] | None:
    """The outputs of `rels`' stars, in order; None when one cannot be counted."""
    result: list[Out] = []
    for rel in rels:
        part = rel.expand()
        if part is None:
            return None
        result.extend(part)
    return result


def expand_outs(outs: list[Out]) -> list[Out] | None:
    result: list[Out] = []
    for out in outs:
        if not out.star:
            result.append(out)
            continue
        part = expand_rels(out.rels)
        if part is None:
            return None
        result.extend(part)
    return result


def grow_outs(old: list[Out], new: list[Out]) -> list[Out]:
    """A recursive CTE's next round: each output keeps what it had (the union only grows)."""
    if len(old) != len(new):
        return new
    grown = []
    for a, b in zip(old, new, strict=True):
        if a.col is None or b.col is None or a.name != b.name:
            grown.append(b)
        else:
            grown.append(Out(b.name, a.col | b.col))
    return grown


def fixpoint_key(outs: list[Out]) -> list[object]:
    """What a recursive CTE's fixpoint compares (stars hold fresh relation objects)."""
    return [(o.name, o.col, frozenset(e for r in o.rels for e in r.loose())) for o in outs]


def is_derived(out: Out) -> bool:
    return out.col is not None and not out.col.bare and bool(out.col.sources)


def loose_entries(outs: list[Out]) -> list[tuple[str | None, frozenset[str]]]:
    entries: list[tuple[str | None, frozenset[str]]] = []
    for out in outs:
        if out.col is None:
            for rel in out.rels:
                entries.extend(rel.loose())
        elif is_derived(out):
            entries.append((out.name, out.col.sources))
    return entries


class Scope:
    """The FROM items of one query level, and the level enclosing it."""

    def __init__(self, parent: Scope | None) -> None:
        self.parent = parent
        self.top: list[Rel] = []  # FROM items, for an unqualified star
        self.leaves: list[Rel] = []  # every relation, for an unqualified name
        self.named: list[Rel] = []  # every relation that can qualify a name

    def find(self, qual: str) -> Rel | None:
        scope: Scope | None = self
        while scope is not None:
            for rel in scope.named:
                if rel.qual == qual:
                    return rel
            scope = scope.parent
        return None

    def resolve(self, name: str) -> Col:
        """An unqualified name: every level that may hold it, up to a definite hit."""
        found: Col | None = None
        scope: Scope | None = self
        while scope is not None:
            hit = union_hits(rel.column(name) for rel in scope.leaves)
            if hit is not None:
                found = hit[0] if found is None else found | hit[0]
                if hit[1]:
                    break
            scope = scope.parent
        if found is None:
            return Col(frozenset({name}), True)
        return found


def whole_row(rel: Rel) -> Col:
    """A whole-row reference: a table's row is `ROW` (its columns are not known here)."""
    whole = rel.row()
    if isinstance(rel, Table) and not whole.sources:
        return Col(frozenset({ROW}), False)
    return whole


def every_source(outs: list[Out]) -> frozenset[str]:
    """Every source any of `outs` may show, stars included (a table's unknown columns as
    `UNKNOWN`): what a comparison of whole output rows reads."""
    sources: set[str] = set()
    for out in outs:
        if out.col is not None:
            sources |= out.col.sources
            continue
        for rel in out.rels:
            sources |= rel.row().sources | {s for _, entry in rel.loose() for s in entry}
            if isinstance(rel, Table):
                sources.add(UNKNOWN)
    return frozenset(sources)
