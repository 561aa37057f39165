"""Column lineage: which source columns each result column of a statement is computed from.

`lineage(stmt)` reads one statement's parse tree (libpg_query JSON, as `facts` has it) and
answers, for the top-level SELECT (also VALUES, set operations, ``COPY (query) TO`` and the
RETURNING list of INSERT/UPDATE/DELETE/MERGE), a `model.Lineage`: per output, the set of
column *names* its value is derived from, or None when the output is a bare column under its
own name (or derived from no column at all). The masker then masks whole any derived output
that touches a column its name rules call sensitive: ``select reverse(ssn)``, ``select
upper(email) as e``, ``select x from (select ssn x from customers) s``, ``select
string_agg(ssn, ',')``.

Without the catalog the lineage is built from names alone, and fails closed where it cannot
follow a value:

- a name is resolved through FROM-subqueries, CTEs (recursive ones to a fixpoint), joins and
  correlated subqueries by alias; when several FROM items (or an enclosing query) may hold
  it, the union of their lineages is taken;
- a column renamed by an alias list (``customers c(a, b)``) has the source `UNKNOWN`, which
  the masker treats as sensitive;
- a function in FROM (``lateral reverse(c.ssn) r``) may have any column name: every column
  read through it carries the sources of its arguments;
- ``*`` counts as its expansion when that is known (a subquery or CTE without stars);
  otherwise outputs before the first star keep their positions from the start, outputs after
  the last from the end, and derived outputs in between (or inside the star) are matched by
  the name the result gives them (`Lineage.loose`; name None matches any column);
- a set operation whose branches' columns cannot be paired (stars) makes every derived or
  renamed value of any branch loose with name None; a star over a table in a later branch
  could hide any column under another name, so it is `UNKNOWN` too;
- ``count(...)``, ``IS [NOT] NULL`` and ``EXISTS (...)`` reveal no value: their arguments are
  not sources. Every other expression (comparisons and CASE included) takes the sources of
  every column it reads.

A whole-row reference to a table (``c`` in ``select c from customers c``, or ``c.*`` inside
an expression) has the source `ROW`: shown as is, as text or as JSON it is left to the
content detectors (the masker skips `ROW`), rewritten any other way (``reverse(c::text)``)
it becomes `UNKNOWN`.

`stored` answers what a statement writes into relations under other names (for the proxy's
storage check); the proxy itself carries a ``PREPARE``'s lineage to ``EXECUTE`` and a
``DECLARE``'s to ``FETCH``.

Not covered (no catalog): views and functions defined outside the statements seen here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .model import Lineage

__all__ = ["ROW", "UNKNOWN", "lineage", "stored"]

Node = dict[str, Any]
UNKNOWN = "?"  # a source the lineage cannot name; the masker treats it as sensitive
_NO_NAME = "?column?"
_MAX_RECURSIVE_ROUNDS = 8
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Col:
    """The lineage of one value: its sources, and whether it is a stored column as is."""

    sources: frozenset[str]
    bare: bool  # the stored value of a column whose name is the one it was read by

    def __or__(self, other: _Col) -> _Col:
        return _Col(self.sources | other.sources, self.bare and other.bare)


_NOTHING = _Col(_EMPTY, False)


@dataclass(frozen=True, slots=True)
class _Out:
    """One entry of a target list: a named value, or a star (`rels` it expands)."""

    name: str | None  # None: a name this module cannot figure, so it matches any
    col: _Col | None
    rels: tuple[_Rel, ...] = ()

    @property
    def star(self) -> bool:
        return self.col is None


class _Rel:
    """Something in FROM that columns are read from."""

    qual: str | None = None

    def column(self, name: str) -> tuple[_Col, bool] | None:
        """(lineage, definite) of `name` here; None when it is certainly not here."""
        raise NotImplementedError

    def expand(self) -> list[_Out] | None:
        """What ``*`` over it yields, or None when the count is unknown."""
        return None

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        """Derived values ``*`` over it may yield, by name."""
        return []

    def row(self) -> _Col:
        """The lineage of a whole-row reference to it."""
        return _NOTHING


class _Table(_Rel):
    def __init__(self, qual: str | None, renamed: tuple[str, ...]) -> None:
        self.qual = qual
        self.renamed = renamed

    def column(self, name: str) -> tuple[_Col, bool] | None:
        if name in self.renamed:
            return _Col(frozenset({UNKNOWN}), False), True
        return _Col(frozenset({name}), True), False

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return [(n, frozenset({UNKNOWN})) for n in self.renamed]

    def row(self) -> _Col:
        return _Col(frozenset({UNKNOWN}), False) if self.renamed else _NOTHING


class _Query(_Rel):
    """A FROM-subquery or a CTE reference: its target list, renamed by an alias list."""

    def __init__(self, qual: str | None, outs: list[_Out], renamed: tuple[str, ...]) -> None:
        self.qual = qual
        self.outs = _rename(outs, renamed)

    def column(self, name: str) -> tuple[_Col, bool] | None:
        found: _Col | None = None
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
                    col = _Col(col.sources, False)
                found = col if found is None else found | col
                definite = definite or out.name == name
        return None if found is None else (found, definite)

    def expand(self) -> list[_Out] | None:
        return _expand(self.outs)

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return _loose(self.outs)

    def row(self) -> _Col:
        sources: set[str] = set()
        for out in self.outs:
            if out.col is not None:
                sources |= out.col.sources
            else:
                for rel in out.rels:
                    sources |= rel.row().sources
                    for _, entry in rel.loose():
                        sources |= entry
                    if isinstance(rel, _Table):
                        sources.add(UNKNOWN)
        return _Col(frozenset(sources), False)


class _Opaque(_Rel):
    """A function (or XMLTABLE, JSON_TABLE, ...) in FROM: any column name, all from `col`."""

    def __init__(self, qual: str | None, col: _Col) -> None:
        self.qual = qual
        self.col = col

    def column(self, name: str) -> tuple[_Col, bool] | None:
        return self.col, False

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return [(None, self.col.sources)] if self.col.sources else []

    def row(self) -> _Col:
        return self.col


class _Join(_Rel):
    def __init__(self, qual: str | None, parts: list[_Rel], merged: bool) -> None:
        self.qual = qual
        self.parts = parts
        self.merged = merged  # USING / NATURAL: the star does not add up

    def column(self, name: str) -> tuple[_Col, bool] | None:
        return _union(rel.column(name) for rel in self.parts)

    def expand(self) -> list[_Out] | None:
        return None if self.merged else _expand_rels(self.parts)

    def loose(self) -> list[tuple[str | None, frozenset[str]]]:
        return [entry for rel in self.parts for entry in rel.loose()]

    def row(self) -> _Col:
        col = _NOTHING
        for rel in self.parts:
            col = col | rel.row()
        return col


def _union(hits: Iterable[tuple[_Col, bool] | None]) -> tuple[_Col, bool] | None:
    found: tuple[_Col, bool] | None = None
    for hit in hits:
        if hit is None:
            continue
        found = hit if found is None else (found[0] | hit[0], found[1] or hit[1])
    return found


def _rename(outs: list[_Out], names: tuple[str, ...]) -> list[_Out]:
    """Apply an alias column list: positionally up to the first star, unknown after it."""
    if not names:
        return outs
    result = list(outs)
    for i, name in enumerate(names):
        if i < len(result) and all(not o.star for o in result[: i + 1]):
            out = result[i]
            assert out.col is not None
            same = out.name == name
            result[i] = _Out(name, _Col(out.col.sources, out.col.bare and same))
        else:
            result.append(_Out(name, _Col(frozenset({UNKNOWN}), False)))
    return result


def _expand_rels(rels: Iterable[_Rel]) -> list[_Out] | None:
    """The outputs of `rels`' stars, in order; None when one cannot be counted."""
    result: list[_Out] = []
    for rel in rels:
        part = rel.expand()
        if part is None:
            return None
        result.extend(part)
    return result


def _expand(outs: list[_Out]) -> list[_Out] | None:
    result: list[_Out] = []
    for out in outs:
        if not out.star:
            result.append(out)
            continue
        part = _expand_rels(out.rels)
        if part is None:
            return None
        result.extend(part)
    return result


def _grow(old: list[_Out], new: list[_Out]) -> list[_Out]:
    """A recursive CTE's next round: each output keeps what it had (the union only grows)."""
    if len(old) != len(new):
        return new
    grown = []
    for a, b in zip(old, new, strict=True):
        if a.col is None or b.col is None or a.name != b.name:
            grown.append(b)
        else:
            grown.append(_Out(b.name, a.col | b.col))
    return grown


def _key(outs: list[_Out]) -> list[object]:
    """What a recursive CTE's fixpoint compares (stars hold fresh relation objects)."""
    return [(o.name, o.col, frozenset(e for r in o.rels for e in r.loose())) for o in outs]


def _derived(out: _Out) -> bool:
    return out.col is not None and not out.col.bare and bool(out.col.sources)


def _loose(outs: list[_Out]) -> list[tuple[str | None, frozenset[str]]]:
    entries: list[tuple[str | None, frozenset[str]]] = []
    for out in outs:
        if out.col is None:
            for rel in out.rels:
                entries.extend(rel.loose())
        elif _derived(out):
            entries.append((out.name, out.col.sources))
    return entries


class _Scope:
    """The FROM items of one query level, and the level enclosing it."""

    def __init__(self, parent: _Scope | None) -> None:
        self.parent = parent
        self.top: list[_Rel] = []  # FROM items, for an unqualified star
        self.leaves: list[_Rel] = []  # every relation, for an unqualified name
        self.named: list[_Rel] = []  # every relation that can qualify a name

    def find(self, qual: str) -> _Rel | None:
        scope: _Scope | None = self
        while scope is not None:
            for rel in scope.named:
                if rel.qual == qual:
                    return rel
            scope = scope.parent
        return None

    def resolve(self, name: str) -> _Col:
        """An unqualified name: every level that may hold it, up to a definite hit."""
        found: _Col | None = None
        scope: _Scope | None = self
        while scope is not None:
            hit = _union(rel.column(name) for rel in scope.leaves)
            if hit is not None:
                found = hit[0] if found is None else found | hit[0]
                if hit[1]:
                    break
            scope = scope.parent
        if found is None:
            return _Col(frozenset({name}), True)
        return found


# -- walking ------------------------------------------------------------------------------


def lineage(stmt: Node) -> Lineage | None:
    """The lineage of one statement's result columns; None when none is derived."""
    outs = _statement_outputs(stmt)
    return None if outs is None else to_lineage(outs)


def _statement_outputs(stmt: Node) -> list[_Out] | None:
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return None
    ((name, f),) = stmt.items()
    if name == "SelectStmt":
        return _Walker().select(f, None, {})
    if name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
        return _Walker().returning(f, None, {})
    if name in ("CopyStmt", "DeclareCursorStmt") and isinstance(f.get("query"), dict):
        return _statement_outputs(f["query"])  # a cursor's rows come back through FETCH
    return None


def stored(stmt: Node) -> tuple[tuple[str, frozenset[str]], ...]:
    """Values a statement writes into a relation under another name than the column they come
    from (or computed from columns), where later reads are beyond the masker's name rules:
    ``create table x as select reverse(api_key) r ...``, ``create view v as select ssn s``,
    ``insert into notes (body) select api_key ...``, ``update t set note = email``. Each entry
    is (where, sources): ``x.r`` and its source column names. Writable CTEs and PREPARE count
    (`facts` adds the inner statement's). Fails closed like `lineage`: a value whose column
    the statement cannot name (an INSERT without a column list, ``*`` into other names, CREATE
    TABLE AS EXECUTE) has the source `UNKNOWN`."""
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return ()
    ((name, f),) = stmt.items()
    found: list[tuple[str, frozenset[str]]] = []
    walker = _Walker(sinks=found)
    walker.stored(name, f, {}, found)
    walker.scan_sinks(name, f)
    return tuple(dict.fromkeys(found))


def to_lineage(outs: list[_Out]) -> Lineage | None:
    expanded = _expand(outs)
    if expanded is not None:
        outs = expanded
    named = tuple(_loose(outs))
    stars = [i for i, out in enumerate(outs) if out.star]
    if not stars:
        if not named:
            return None
        head = tuple(o.col.sources if _derived(o) and o.col else None for o in outs)
        return Lineage(head=head, named=named)
    first, last = stars[0], stars[-1]
    head = tuple(o.col.sources if _derived(o) and o.col else None for o in outs[:first])
    tail = tuple(o.col.sources if _derived(o) and o.col else None for o in outs[last + 1 :])
    loose = tuple(_loose(outs[first : last + 1]))
    if not loose and all(e is None for e in head + tail):
        return None
    return Lineage(head=head, tail=tail, starred=True, loose=loose, named=named)


def merge(lineages: list[Lineage | None]) -> Lineage | None:
    """One lineage for a string of several statements: positions unknown, names only."""
    named = tuple(entry for item in lineages if item is not None for entry in item.named)
    if not named:
        return None
    return Lineage(head=(), starred=True, loose=named, named=named)


def _relname(node: Any) -> str:
    if isinstance(node, dict) and "RangeVar" in node:
        node = node["RangeVar"]
    return str(node.get("relname", "?")) if isinstance(node, dict) else "?"


def _ident(node: Any) -> str | None:
    if isinstance(node, dict) and "String" in node:
        value = node["String"].get("sval", "")
        return str(value)
    return None


def _names(items: Any) -> tuple[str, ...]:
    out = []
    for item in items or ():
        name = _ident(item)
        if name is not None:
            out.append(name)
    return tuple(out)


def _select_fields(node: Any) -> Node | None:
    """A SelectStmt's fields, wrapped (``{"SelectStmt": {...}}``) or bare (larg/rarg)."""
    if not isinstance(node, dict):
        return None
    if len(node) == 1:
        ((name, f),) = node.items()
        if name == "SelectStmt" and isinstance(f, dict):
            return f
        if name[:1].isupper() and isinstance(f, dict):
            return None
    return node


class _Walker:
    def __init__(self, sinks: list[tuple[str, frozenset[str]]] | None = None) -> None:
        # Values handed to functions that keep them outside any result (`_SINKS`): collected
        # only when asked (`stored`), so WHERE and HAVING are walked only then.
        self.sinks = sinks

    def select(self, f: Node, parent: _Scope | None, ctes: dict[str, list[_Out]]) -> list[_Out]:
        ctes = self.with_clause(f.get("withClause"), parent, ctes)
        op = f.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            return self.set_operation(f, parent, ctes)
        if f.get("valuesLists"):
            return self.values(f["valuesLists"], parent, ctes)
        scope = _Scope(parent)
        for item in f.get("fromClause") or ():
            scope.top.append(self.from_item(item, scope, ctes))
        outs = self.targets(f.get("targetList") or (), scope, ctes)
        if self.sinks is not None:
            self.clauses(f, scope, ctes)
        return outs

    def clauses(self, f: Node, scope: _Scope, ctes: dict[str, list[_Out]]) -> None:
        """Walk what is not a target (WHERE, HAVING, GROUP BY, ORDER BY, JOIN ... ON, LIMIT)
        for values handed to sinks."""
        for key in ("whereClause", "havingClause", "groupClause", "sortClause", "limitCount", "limitOffset"):
            if f.get(key) is not None:
                self.expr(f[key], scope, ctes)
        stack: list[Any] = list(f.get("fromClause") or ())
        while stack:
            item = stack.pop()
            join = item.get("JoinExpr") if isinstance(item, dict) else None
            if isinstance(join, dict):
                if join.get("quals") is not None:
                    self.expr(join["quals"], scope, ctes)
                stack.extend((join.get("larg"), join.get("rarg")))

    def scan_sinks(self, name: str, f: Node) -> None:
        """Visit every query of a statement for sink calls (`stored` collects them)."""
        if name == "SelectStmt":
            self.select({**f, "intoClause": None}, None, {})
        elif name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            ctes = self.with_clause(f.get("withClause"), None, {})
            if name == "InsertStmt" and f.get("selectStmt"):
                self.query_outputs(f["selectStmt"], None, ctes)
            scope = self.dml_scope(f, None, ctes)
            self.expr([f.get("targetList"), f.get("whereClause"), f.get("returningList")], scope, ctes)
        elif name in ("CreateTableAsStmt", "ViewStmt", "DeclareCursorStmt", "CopyStmt", "ExplainStmt"):
            query = f.get("query")  # EXPLAIN without ANALYZE runs nothing, but reading it costs nothing
            if isinstance(query, dict) and len(query) == 1:
                ((inner, g),) = query.items()
                self.scan_sinks(inner, g)

    def returning(self, f: Node, parent: _Scope | None, ctes: dict[str, list[_Out]]) -> list[_Out] | None:
        clause = f.get("returningClause")
        targets = clause.get("exprs") if isinstance(clause, dict) else f.get("returningList")
        if not targets:
            return None
        ctes = self.with_clause(f.get("withClause"), parent, ctes)
        return self.targets(targets, self.dml_scope(f, parent, ctes), ctes)

    def dml_scope(
        self, f: Node, parent: _Scope | None, ctes: dict[str, list[_Out]], *, excluded: bool = False
    ) -> _Scope:
        """What an INSERT/UPDATE/DELETE/MERGE's expressions read: its table, UPDATE ... FROM,
        DELETE ... USING, MERGE ... USING; with `excluded`, the row an ON CONFLICT DO UPDATE
        would have inserted, under that name."""
        scope = _Scope(parent)
        relation = f.get("relation")
        if isinstance(relation, dict):
            scope.top.append(self.from_item({"RangeVar": relation}, scope, ctes))
            if excluded:
                alias = {**relation, "alias": {"aliasname": "excluded"}}
                scope.top.append(self.from_item({"RangeVar": alias}, scope, ctes))
        for key in ("fromClause", "usingClause"):
            items = f.get(key)
            for item in items if isinstance(items, list) else ():
                scope.top.append(self.from_item(item, scope, ctes))
        source = f.get("sourceRelation")
        if isinstance(source, dict):
            scope.top.append(self.from_item(source, scope, ctes))
        return scope

    def with_clause(self, clause: Any, parent: _Scope | None, ctes: dict[str, list[_Out]]) -> dict[str, list[_Out]]:
        if not isinstance(clause, dict):
            return ctes
        ctes = dict(ctes)
        recursive = bool(clause.get("recursive"))
        for item in clause.get("ctes") or ():
            cte = item.get("CommonTableExpr") if isinstance(item, dict) else None
            if not isinstance(cte, dict):
                continue
            name = str(cte.get("ctename", ""))
            renamed = _names(cte.get("aliascolnames"))
            query = cte.get("ctequery") or {}
            if not recursive:
                ctes[name] = _rename(self.query_outputs(query, parent, ctes), renamed)
                continue
            # A recursive CTE reads itself: iterate until its lineage stops growing.
            ctes.pop(name, None)
            outs = _rename(self.query_outputs(query, parent, ctes), renamed)
            for _ in range(_MAX_RECURSIVE_ROUNDS):
                ctes[name] = outs
                again = _grow(outs, _rename(self.query_outputs(query, parent, ctes), renamed))
                if _key(again) == _key(outs):
                    break
                outs = again
            else:
                outs = [_Out(o.name, _Col(frozenset({UNKNOWN}), False)) for o in outs]
            ctes[name] = outs
        return ctes

    def query_outputs(self, node: Any, parent: _Scope | None, ctes: dict[str, list[_Out]]) -> list[_Out]:
        """The outputs of a subquery (SELECT, or a data-modifying statement's RETURNING)."""
        if isinstance(node, dict) and len(node) == 1:
            ((name, f),) = node.items()
            if name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
                return self.returning(f, parent, ctes) or []
        fields = _select_fields(node)
        if fields is None:
            return [_Out(None, _Col(frozenset({UNKNOWN}), False))]
        return self.select(fields, parent, ctes)

    def set_operation(self, f: Node, parent: _Scope | None, ctes: dict[str, list[_Out]]) -> list[_Out]:
        left = self.query_outputs(f.get("larg"), parent, ctes)
        right = self.query_outputs(f.get("rarg"), parent, ctes)
        lx, rx = _expand(left), _expand(right)
        if lx is not None and rx is not None and len(lx) == len(rx):
            paired = []
            for a, b in zip(lx, rx, strict=True):
                assert a.col is not None and b.col is not None
                bare = a.col.bare and b.col.bare and a.name == b.name
                paired.append(_Out(a.name, _Col(a.col.sources | b.col.sources, bare)))
            return paired
        # Columns cannot be paired: every derived or renamed value may be in any column.
        sources: set[str] = set()
        for side, first in ((left, True), (right, False)):
            for out in side:
                if out.col is None:
                    for rel in out.rels:
                        sources.update(s for _, entry in rel.loose() for s in entry)
                        if not first:
                            sources |= rel.row().sources | {UNKNOWN}
                elif _derived(out) or (not first and out.col.sources):
                    sources |= out.col.sources
        rels: tuple[_Rel, ...] = (_Opaque(None, _Col(frozenset(sources), False)),)
        return [_Out(None, None, rels)]

    def values(self, lists: list[Any], parent: _Scope | None, ctes: dict[str, list[_Out]]) -> list[_Out]:
        scope = _Scope(parent)
        columns: list[_Col] = []
        for row in lists:
            items = row.get("List", {}).get("items", []) if isinstance(row, dict) else []
            for i, item in enumerate(items):
                col = _Col(self.expr(item, scope, ctes).sources, False)
                if i < len(columns):
                    columns[i] = columns[i] | col
                else:
                    columns.append(col)
        return [_Out(f"column{i + 1}", col) for i, col in enumerate(columns)]

    # Writes into relations (`stored`) ---------------------------------------------------

    def stored(self, name: str, f: Node, ctes: dict[str, list[_Out]], found: list[tuple[str, frozenset[str]]]) -> None:
        clause = f.get("withClause")
        if isinstance(clause, dict):  # data-modifying statements in WITH write too
            ctes = self.with_clause(clause, None, ctes)
            for item in clause.get("ctes") or ():
                query = (item.get("CommonTableExpr") or {}).get("ctequery") if isinstance(item, dict) else None
                if isinstance(query, dict) and len(query) == 1:
                    ((inner, g),) = query.items()
                    if inner in ("InsertStmt", "UpdateStmt"):
                        self.stored(inner, {**g, "withClause": None}, ctes, found)
        if name == "SelectStmt" and isinstance(f.get("intoClause"), dict):  # SELECT ... INTO t
            into = f["intoClause"]
            outs = self.select({**f, "withClause": None}, None, ctes)
            self.keep(_relname(into.get("rel")), outs, _names(into.get("colNames")), found)
        elif name == "CreateTableAsStmt":  # CREATE TABLE / MATERIALIZED VIEW ... AS
            into = f.get("into") or {}
            query = f.get("query")
            outs = (
                self.query_outputs(query, None, ctes)
                if _select_fields(query) is not None
                else [_Out(None, _Col(frozenset({UNKNOWN}), False))]  # AS EXECUTE p: not seen here
            )
            self.keep(_relname(into.get("rel")), outs, _names(into.get("colNames")), found)
        elif name == "ViewStmt":
            outs = self.query_outputs(f.get("query"), None, ctes)
            self.keep(_relname(f.get("view")), outs, _names(f.get("aliases")), found)
        elif name == "InsertStmt" and f.get("selectStmt"):
            table = _relname(f.get("relation"))
            outs = self.query_outputs(f["selectStmt"], None, ctes)
            columns = tuple(str(c.get("ResTarget", {}).get("name", "")) for c in f.get("cols") or ())
            if columns:
                self.keep(table, outs, columns, found)
            else:  # into the table's columns in order: their names are not known here
                self.keep(table, [_Out(None, o.col) if o.col is not None else o for o in outs], (), found, anyname=True)
            conflict = f.get("onConflictClause")
            if isinstance(conflict, dict) and conflict.get("targetList"):
                # ON CONFLICT DO UPDATE SET a = excluded.b: the inserted row reads as `excluded`.
                self.assignments(f, conflict["targetList"], ctes, found, excluded=True)
        elif name == "UpdateStmt":
            self.assignments(f, f.get("targetList") or (), ctes, found)

    def assignments(
        self, f: Node, targets: Any, ctes: dict[str, list[_Out]], found: list[tuple[str, frozenset[str]]],
        *, excluded: bool = False,
    ) -> None:
        """``SET col = expr``: read as ``SELECT expr AS col FROM <table>, <FROM items>``."""
        outs = self.targets(targets, self.dml_scope(f, None, ctes, excluded=excluded), ctes)
        self.keep(_relname(f.get("relation")), outs, (), found)

    @staticmethod
    def keep(
        table: str, outs: list[_Out], names: tuple[str, ...], found: list[tuple[str, frozenset[str]]],
        *, anyname: bool = False,
    ) -> None:
        """Record the outputs stored in `table` under other names than their columns'."""
        outs = _rename(outs, names)
        for out in outs:
            if out.col is None:  # a star: same names, unless renamed (then UNKNOWN) or `anyname`
                sources = {s for rel in out.rels for _, entry in rel.loose() for s in entry}
                if anyname or names:
                    sources.add(UNKNOWN)
                if sources:
                    found.append((f"{table}.*", frozenset(sources)))
            elif out.col.sources and (anyname or not out.col.bare):
                found.append((f"{table}.{out.name}" if out.name else table, out.col.sources))

    # FROM ---------------------------------------------------------------------------

    def from_item(self, node: Any, scope: _Scope, ctes: dict[str, list[_Out]]) -> _Rel:
        if not isinstance(node, dict) or len(node) != 1:
            return self.opaque(None, node, scope, ctes)
        ((name, f),) = node.items()
        alias = f.get("alias") if isinstance(f, dict) else None
        qual = str(alias.get("aliasname")) if isinstance(alias, dict) and alias.get("aliasname") else None
        renamed = _names(alias.get("colnames")) if isinstance(alias, dict) else ()
        rel: _Rel
        if name == "RangeVar":
            relname = str(f.get("relname", ""))
            if not f.get("schemaname") and relname in ctes:
                rel = _Query(qual or relname, ctes[relname], renamed)
            else:
                rel = _Table(qual or relname, renamed)
        elif name == "RangeSubselect":
            rel = _Query(qual, self.query_outputs(f.get("subquery"), scope, ctes), renamed)
        elif name == "JoinExpr":
            parts = [self.from_item(f.get("larg"), scope, ctes), self.from_item(f.get("rarg"), scope, ctes)]
            merged = bool(f.get("usingClause") or f.get("isNatural"))
            rel = _Join(qual, parts, merged)
            if renamed:
                rel = _Query(qual, [_Out(None, None, (rel,))], renamed)
            if qual is not None:
                scope.named.append(rel)
            return rel
        elif name == "RangeTableSample":
            return self.from_item(f.get("relation"), scope, ctes)
        elif name == "RangeFunction":
            if qual is None:
                qual = _function_name(f)
            return self.opaque(qual, f, scope, ctes)
        else:
            return self.opaque(qual, f, scope, ctes)
        scope.leaves.append(rel)
        scope.named.append(rel)
        return rel

    def opaque(self, qual: str | None, node: Any, scope: _Scope, ctes: dict[str, list[_Out]]) -> _Rel:
        rel = _Opaque(qual, _Col(self.expr(node, scope, ctes).sources, False))
        scope.leaves.append(rel)
        scope.named.append(rel)
        return rel

    # Target lists and expressions ---------------------------------------------------

    def targets(self, targets: Any, scope: _Scope, ctes: dict[str, list[_Out]]) -> list[_Out]:
        outs: list[_Out] = []
        for item in targets:
            target = item.get("ResTarget") if isinstance(item, dict) else None
            if not isinstance(target, dict):
                continue
            val = target.get("val")
            star = self.star(val, scope, ctes)
            if star is not None:
                outs.append(_Out(None, None, star))
                continue
            col = self.expr(val, scope, ctes)
            name = target.get("name") or figure_name(val)
            bare = False
            ref = val.get("ColumnRef") if isinstance(val, dict) else None
            if isinstance(ref, dict) and col.bare:
                fields = ref.get("fields") or []
                bare = bool(fields) and _ident(fields[-1]) == name
            outs.append(_Out(name, _Col(col.sources, bare)))
        return outs

    def star(self, val: Any, scope: _Scope, ctes: dict[str, list[_Out]]) -> tuple[_Rel, ...] | None:
        """The relations a ``*`` target expands, or None when `val` is not a star."""
        if not isinstance(val, dict):
            return None
        ref = val.get("ColumnRef")
        if isinstance(ref, dict):
            fields = ref.get("fields") or []
            if not fields or "A_Star" not in fields[-1]:
                return None
            if len(fields) == 1:
                return tuple(scope.top)
            qual = _ident(fields[-2])
            rel = scope.find(qual) if qual is not None else None
            return (rel if rel is not None else _Table(qual, ()),)
        ind = val.get("A_Indirection")
        if isinstance(ind, dict):
            items = ind.get("indirection") or []
            if items and isinstance(items[-1], dict) and "A_Star" in items[-1]:
                col = self.expr(ind.get("arg"), scope, ctes)
                sources = col.sources | ({UNKNOWN} if col.bare and col.sources else set())
                return (_Opaque(None, _Col(frozenset(sources), False)),)
        return None

    def expr(self, root: Any, scope: _Scope, ctes: dict[str, list[_Out]]) -> _Col:
        """The lineage of an expression: the union over every column it reads."""
        found: _Col | None = None
        stack: list[Any] = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, dict):
                continue
            if len(item) == 1:
                ((name, f),) = item.items()
                if isinstance(f, dict) and name[:1].isupper():
                    col = self.node(name, f, scope, ctes, stack)
                    if col is not None:
                        found = col if found is None else found | col
                    continue
            stack.extend(item.values())
        if found is None:
            return _NOTHING
        if ROW in found.sources:
            # A table's whole row: as is, or as text or JSON, the content detectors see its
            # values (the mark stays, for what later rewrites it); rewritten any other way
            # (reverse(c::text)), nothing could: it is masked whole.
            if _keeps_shape(root):
                return _Col(found.sources, isinstance(root, dict) and "ColumnRef" in root and found.bare)
            return _Col(found.sources - {ROW} | {UNKNOWN}, False)
        if root is None or not (isinstance(root, dict) and "ColumnRef" in root):
            return _Col(found.sources, False)
        return found

    def node(self, name: str, f: Node, scope: _Scope, ctes: dict[str, list[_Out]], stack: list[Any]) -> _Col | None:
        if name == "ColumnRef":
            return self.column_ref(f, scope)
        # count(...), IS NULL and EXISTS reveal no value; their arguments are still walked for
        # sinks when those are collected (``where set_config('k', ssn, false) is not null``).
        if name == "SubLink":
            kind = f.get("subLinkType")
            if kind != "EXISTS_SUBLINK":
                stack.append(f.get("testexpr"))
                return self.sublink(f.get("subselect"), scope, ctes)
            if self.sinks is not None:
                self.sublink(f.get("subselect"), scope, ctes)
            return None
        if name == "FuncCall":
            base = _function_name_of(f)
            if base == "count":
                if self.sinks is not None:
                    self.expr(f.get("args"), scope, ctes)
                return None
            if self.sinks is not None and base in _SINKS:
                self.sink(base, f, scope, ctes)
        if name == "NullTest":
            if self.sinks is not None:
                self.expr(f.get("arg"), scope, ctes)
            return None
        if name in ("A_Const", "ParamRef", "TypeName"):
            return None
        stack.extend(f.values())
        return None

    def sink(self, base: str, f: Node, scope: _Scope, ctes: dict[str, list[_Out]]) -> None:
        """A value handed to a sink (`_SINKS`): ``set_config(name, value)`` keeps it in a
        setting, ``pg_notify(channel, payload)`` sends it to listeners, ``setval`` and the
        large-object writers store it: all outside any result the masker sees."""
        what, index = _SINKS[base]
        args = f.get("args") or []
        if len(args) <= index:
            return
        sources = self.expr(args[index], scope, ctes).sources
        if sources:
            target = args[0].get("A_Const", {}).get("sval", {}).get("sval") if isinstance(args[0], dict) else None
            assert self.sinks is not None
            self.sinks.append((f"{what} {target or '?'}", sources))

    def sublink(self, node: Any, scope: _Scope, ctes: dict[str, list[_Out]]) -> _Col:
        col = _NOTHING
        for out in self.query_outputs(node, scope, ctes):
            if out.col is not None:
                col = col | _Col(out.col.sources, False)
                continue
            for rel in out.rels:
                sources = rel.row().sources | {s for _, e in rel.loose() for s in e}
                if isinstance(rel, _Table):
                    sources |= {UNKNOWN}
                col = col | _Col(frozenset(sources), False)
        return col

    def column_ref(self, f: Node, scope: _Scope) -> _Col:
        fields = f.get("fields") or []
        names = [_ident(x) for x in fields]
        if len(names) == 2 and names[-1] is None and names[0] is not None:  # t.* in an expression: row(t.*)
            rel = scope.find(names[0])
            return _whole_row(rel) if rel is not None else _Col(frozenset({UNKNOWN}), False)
        if not names or names[-1] is None:
            return _NOTHING  # count(*): reveals no value
        column = names[-1]
        if len(names) == 1:
            col = scope.resolve(column)
            rel = scope.find(column)
            if rel is not None:  # maybe a whole-row reference to a FROM item
                whole = _whole_row(rel)
                col = _Col(col.sources | whole.sources, col.bare and not (whole.sources - {ROW}))
            return col
        qual = names[-2]
        rel = scope.find(qual) if qual is not None else None
        if rel is None:
            return _Col(frozenset({column}), True)
        hit = rel.column(column)
        if hit is None:
            return _Col(frozenset({column}), True)
        return hit[0]


ROW = "*row"  # a table's whole row, its columns unknown: the masker leaves it to the detectors
# Functions that keep an argument outside any result, to be read back later unmasked: what
# they put it in, and which argument (0-based) is the value.
_SINKS = {
    "set_config": ("setting", 1),  # current_setting() reads it back
    "pg_notify": ("notification on", 1),  # sent to every listener
    "setval": ("sequence", 1),  # currval() / last_value
    "lo_from_bytea": ("large object", 1),  # lo_get() reads it back
    "lo_put": ("large object", 2),
    "lowrite": ("large object", 1),
}
# Functions that show a row's values as they are, so the content detectors still see them.
_SHAPE_KEEPING = frozenset({
    "to_json", "to_jsonb", "row_to_json", "json_agg", "jsonb_agg", "array_agg", "array_to_json",
    "jsonb_pretty", "json_build_array", "jsonb_build_array",
})  # fmt: skip
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "json", "jsonb", "name"})


def _whole_row(rel: _Rel) -> _Col:
    """A whole-row reference: a table's row is `ROW` (its columns are not known here)."""
    whole = rel.row()
    if isinstance(rel, _Table) and not whole.sources:
        return _Col(frozenset({ROW}), False)
    return whole


def _keeps_shape(node: Any) -> bool:
    """Whether `node` shows a whole-row value as is: the reference itself, a cast to text or
    JSON, ROW(...), or the functions above, nested, with constant extra arguments."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((name, f),) = node.items()
    if name in ("ColumnRef", "A_Const"):
        return True
    if name == "TypeCast":
        type_name = (f.get("typeName") or {}).get("names") or []
        return bool(type_name) and _ident(type_name[-1]) in _TEXT_TYPES and _keeps_shape(f.get("arg"))
    if name == "RowExpr":
        return all(_keeps_shape(arg) for arg in f.get("args") or ())
    if name == "FuncCall":
        return _function_name_of(f) in _SHAPE_KEEPING and all(_keeps_shape(a) for a in f.get("args") or ())
    return False


def _function_name_of(f: Node) -> str | None:
    """A FuncCall's name without its schema: ``pg_catalog.upper`` is ``upper``."""
    return _ident((f.get("funcname") or [None])[-1])


def _function_name(f: Node) -> str | None:
    functions = f.get("functions") or []
    if len(functions) != 1:
        return None
    items = functions[0].get("List", {}).get("items", []) if isinstance(functions[0], dict) else []
    call = items[0].get("FuncCall") if items and isinstance(items[0], dict) else None
    if not isinstance(call, dict):
        return None
    return _function_name_of(call)


_FIXED_NAMES = {
    "GroupingFunc": "grouping",
    "CoalesceExpr": "coalesce",
    "XmlSerialize": "xmlserialize",
    "JsonObjectConstructor": "json_object",
    "JsonArrayConstructor": "json_array",
    "JsonArrayQueryConstructor": "json_array",
    "JsonObjectAgg": "json_objectagg",
    "JsonArrayAgg": "json_arrayagg",
    "JsonParseExpr": "json",
    "JsonScalarExpr": "json_scalar",
    "JsonSerializeExpr": "json_serialize",
}
_ANONYMOUS = frozenset({"A_Const", "ParamRef", "BoolExpr", "NullTest", "BooleanTest"})


def figure_name(node: Any) -> str | None:
    """The name PostgreSQL gives an unaliased output (its FigureColname), or None when this
    module does not know it (then it matches any name)."""
    name, _ = _figure(node)
    return name


def _figure(node: Any) -> tuple[str | None, int]:
    """(name, strength) as in PostgreSQL's FigureColnameInternal; strength 0 is ?column?."""
    if not isinstance(node, dict) or len(node) != 1:
        return None, 0
    ((kind, f),) = node.items()
    if not isinstance(f, dict):
        return None, 0
    if kind == "ColumnRef":
        fields = f.get("fields") or []
        last = _ident(fields[-1]) if fields else None
        return (last, 2) if last is not None else (_NO_NAME, 0)
    if kind == "A_Indirection":
        for item in reversed(f.get("indirection") or []):
            ident = _ident(item)
            if ident is not None:
                return ident, 2
        return _figure(f.get("arg"))
    if kind == "FuncCall":
        return _function_name_of(f), 2
    if kind == "A_Expr":
        return ("nullif", 2) if f.get("kind") == "AEXPR_NULLIF" else (_NO_NAME, 0)
    if kind == "TypeCast":
        name, strength = _figure(f.get("arg"))
        if strength <= 1:
            names = (f.get("typeName") or {}).get("names") or []
            type_name = _ident(names[-1]) if names else None
            if type_name is not None:
                return type_name, 1
        return name, strength
    if kind == "CollateClause":
        return _figure(f.get("arg"))
    if kind == "SubLink":
        link = f.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            return "exists", 2
        if link == "ARRAY_SUBLINK":
            return "array", 2
        if link == "EXPR_SUBLINK":
            inner = _select_fields(f.get("subselect"))
            targets = (inner or {}).get("targetList") or []
            target = targets[0].get("ResTarget", {}) if targets else {}
            if target.get("name"):
                return str(target["name"]), 2
            name, _ = _figure(target.get("val"))
            return (name if name is not None else None), 2
        return _NO_NAME, 0
    if kind == "CaseExpr":
        name, strength = _figure(f.get("defresult"))
        return (name, strength) if strength > 1 else ("case", 1)
    if kind == "A_ArrayExpr":
        return "array", 1
    if kind == "RowExpr":
        return "row", 1
    if kind == "MinMaxExpr":
        return ("greatest" if f.get("op") == "IS_GREATEST" else "least"), 2
    if kind == "SQLValueFunction":
        op = str(f.get("op", ""))
        return (op[6:].lower() if op.startswith("SVFOP_") else None), 2
    if kind in _FIXED_NAMES:
        return _FIXED_NAMES[kind], 2
    if kind in _ANONYMOUS:
        return _NO_NAME, 0
    return None, 0
