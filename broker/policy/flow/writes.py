"""Writes: values a statement stores into relations under other names than their columns'.

`stored` answers what a statement writes where later reads are beyond the masker's name
rules: ``create table x as select reverse(api_key) r ...``, ``create view v as select ssn s``,
``insert into notes (body) select api_key ...``, ``update t set note = email``; and values
handed to sinks (``set_config('k', ssn)``: `functions.SINKS`). Each entry is (where,
sources): ``x.r`` and its source column names. Writable CTEs and PREPARE count (`facts` adds
the inner statement's). Fails closed like the lineage: a value whose column the statement
cannot name (an INSERT without a column list, ``*`` into other names, CREATE TABLE AS
EXECUTE) has the source `UNKNOWN`.
"""

from __future__ import annotations

from typing import Any

from .scopes import DERIVED, UNKNOWN, Col, Out, rename_outs
from .selects import Ctes, Found, Walker
from .tree import Node, ident_list, relname, select_fields

__all__ = ["stored"]


def stored(stmt: Node) -> tuple[tuple[str, frozenset[str]], ...]:
    """What `stmt` stores under other names (see the module doc)."""
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return ()
    ((name, f),) = stmt.items()
    found: Found = []
    walker = Walker(sinks=found)
    _stored(walker, name, f, {}, found)
    walker.scan(name, f)
    return tuple(dict.fromkeys(found))


def _stored(walker: Walker, name: str, f: Node, ctes: Ctes, found: Found) -> None:
    clause = f.get("withClause")
    if isinstance(clause, dict):  # data-modifying statements in WITH write too
        ctes = walker.with_clause(clause, None, ctes)
        for item in clause.get("ctes") or ():
            query = (item.get("CommonTableExpr") or {}).get("ctequery") if isinstance(item, dict) else None
            if isinstance(query, dict) and len(query) == 1:
                ((inner, g),) = query.items()
                if inner in ("InsertStmt", "UpdateStmt"):
                    _stored(walker, inner, {**g, "withClause": None}, ctes, found)
    if name == "SelectStmt" and isinstance(f.get("intoClause"), dict):  # SELECT ... INTO t
        into = f["intoClause"]
        outs = walker.select({**f, "withClause": None}, None, ctes)
        _keep(relname(into.get("rel")), outs, ident_list(into.get("colNames")), found)
    elif name == "CreateTableAsStmt":  # CREATE TABLE / MATERIALIZED VIEW ... AS
        into = f.get("into") or {}
        query = f.get("query")
        outs = (
            walker.query_outputs(query, None, ctes)
            if select_fields(query) is not None
            else [Out(None, Col(frozenset({UNKNOWN}), False))]  # AS EXECUTE p: not seen here
        )
        _keep(relname(into.get("rel")), outs, ident_list(into.get("colNames")), found)
    elif name == "ViewStmt":
        outs = walker.query_outputs(f.get("query"), None, ctes)
        _keep(relname(f.get("view")), outs, ident_list(f.get("aliases")), found)
    elif name == "InsertStmt" and f.get("selectStmt"):
        table = relname(f.get("relation"))
        outs = walker.query_outputs(f["selectStmt"], None, ctes)
        columns = tuple(str(c.get("ResTarget", {}).get("name", "")) for c in f.get("cols") or ())
        if columns:
            _keep(table, outs, columns, found)
        else:  # into the table's columns in order: their names are not known here
            _keep(table, [Out(None, o.col) if o.col is not None else o for o in outs], (), found, anyname=True)
        conflict = f.get("onConflictClause")
        if isinstance(conflict, dict) and conflict.get("targetList"):
            # ON CONFLICT DO UPDATE SET a = excluded.b: the inserted row reads as `excluded`.
            _assignments(walker, f, conflict["targetList"], ctes, found, excluded=True)
    elif name == "UpdateStmt":
        _assignments(walker, f, f.get("targetList") or (), ctes, found)


def _assignments(
    walker: Walker,
    f: Node,
    targets: Any,
    ctes: Ctes,
    found: Found,
    *,
    excluded: bool = False,
) -> None:
    """``SET col = expr``: read as ``SELECT expr AS col FROM <table>, <FROM items>``. A value
    computed even from the column it replaces alone is `DERIVED`: ``set ssn = substr(ssn, 1,
    1)`` in a transaction, a safe-form filter (``ssn = '6'``), and a rollback spell it."""
    outs = walker.targets(targets, walker.dml_scope(f, None, ctes, excluded=excluded), ctes)
    _keep(relname(f.get("relation")), outs, (), found)


def _keep(
    table: str,
    outs: list[Out],
    names: tuple[str, ...],
    found: Found,
    *,
    anyname: bool = False,
) -> None:
    """Record the outputs stored in `table` under other names than their columns'."""
    outs = rename_outs(outs, names)
    for out in outs:
        if out.col is None:  # a star: same names, unless renamed (then UNKNOWN) or `anyname`
            sources = {s for rel in out.rels for _, entry in rel.loose() for s in entry}
            if sources:
                sources.add(DERIVED)  # the loose entries of a star are derived values
            if anyname or names:
                sources.add(UNKNOWN)
            if sources:
                found.append((f"{table}.*", frozenset(sources)))
        elif out.col.sources and (anyname or not out.col.bare):
            # A computed value is marked: even under a masked name it must not be stored
            # (``insert into customers (phone) select substr(ssn, 1, 1) ...`` and then
            # ``where phone = '6'``, a safe form, would spell the SSN).
            marked = out.col.sources if out.col.copied else out.col.sources | {DERIVED}
            found.append((f"{table}.{out.name}" if out.name else table, marked))
