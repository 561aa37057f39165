"""The walker: one pass over a statement's queries that answers where every value comes from.

`Walker` reads SELECTs (with their CTEs, FROM items, set operations and VALUES), the
RETURNING lists of INSERT/UPDATE/DELETE/MERGE, and expressions, and gives each value its
lineage (`scopes.Col`). What it collects besides, when asked:

- `sinks`: values handed to functions that keep them outside any result (`functions.SINKS`);
- `controls`: values the *result* depends on other than as an output (`controls`): a WHERE
  or JOIN condition, ORDER BY, LIMIT, a CASE condition ... (how, sources).

Either makes it walk what is not a target list (WHERE, HAVING, ...); plain lineage does not.
Expressions are walked with `tree.walk` (no recursion); only queries nested in queries
recurse, bounded by `tree.MAX_QUERY_DEPTH`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import controls as safe
from .functions import SINKS, figure_name, from_function_name, function_name_of, is_pure, keeps_shape
from .scopes import (
    NOTHING,
    ROW,
    UNKNOWN,
    Col,
    Join,
    Opaque,
    Out,
    Query,
    Rel,
    Scope,
    Table,
    every_source,
    expand_outs,
    fixpoint_key,
    grow_outs,
    is_derived,
    rename_outs,
    whole_row,
)
from .tree import MAX_QUERY_DEPTH, Node, TooDeep, ident, ident_list, relname, select_fields, walk

__all__ = ["Walker"]

Ctes = dict[str, list[Out]]
Found = list[tuple[str, frozenset[str]]]
_MAX_RECURSIVE_ROUNDS = 8
_DML = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
_KEYS = frozenset({"CONSTR_UNIQUE", "CONSTR_PRIMARY", "CONSTR_EXCLUSION"})
_CONSTRAINTS = {
    "CONSTR_CHECK": "a CHECK constraint",
    "CONSTR_GENERATED": "a generated column",
    "CONSTR_UNIQUE": "a unique key",
    "CONSTR_PRIMARY": "a unique key",
    "CONSTR_EXCLUSION": "an exclusion constraint",
    "CONSTR_DEFAULT": "a default",
}
_PENDING = Out(None, None, (Opaque(None, NOTHING),))  # a recursive CTE not walked yet: no source


class Walker:
    def __init__(
        self,
        *,
        sinks: Found | None = None,
        controls: Found | None = None,
        on_literal: Callable[[], None] = lambda: None,
    ) -> None:
        self.sinks = sinks
        self.on_literal = on_literal  # told when a literal's value decides something (ORDER BY 2)
        self.controls = controls
        self.collecting = sinks is not None or controls is not None
        self._depth = 0
        # The safe forms seen (``ssn = 'x'``): each a guess at a value. More than
        # `controls.MAX_IN_LIST` in one statement (``ssn = 'a' or ssn = 'b' or ...``) count
        # as reading the columns (`flow.controls` adds them).
        self.guesses = safe.Guesses()

    # Queries --------------------------------------------------------------------------

    def select(self, f: Node, parent: Scope | None, ctes: Ctes) -> list[Out]:
        self._depth += 1
        if self._depth > MAX_QUERY_DEPTH:
            raise TooDeep(f"queries nested more than {MAX_QUERY_DEPTH} deep")
        try:
            return self._select(f, parent, ctes)
        finally:
            self._depth -= 1

    def _select(self, f: Node, parent: Scope | None, ctes: Ctes) -> list[Out]:
        ctes = self.with_clause(f.get("withClause"), parent, ctes)
        op = f.get("op", "SETOP_NONE")
        scope = Scope(parent)
        if op != "SETOP_NONE":
            outs = self.set_operation(f, parent, ctes)
        elif f.get("valuesLists"):
            outs = self.values(f["valuesLists"], parent, ctes)
        else:
            for item in f.get("fromClause") or ():
                scope.top.append(self.from_item(item, scope, ctes))
            outs = self.targets(f.get("targetList") or (), scope, ctes)
        if self.collecting:
            self.clauses(f, scope, ctes, outs)
            distinct = f.get("distinctClause")
            if distinct and all(not item for item in distinct):  # plain DISTINCT
                self.deduplicated("DISTINCT", outs, parent, ctes)
        return outs

    def clauses(self, f: Node, scope: Scope, ctes: Ctes, outs: list[Out]) -> None:
        """What is not a target list: each a control position (`safe.CLAUSES`)."""
        for key, how in safe.CLAUSES:
            node = f.get(key)
            if node is None:
                continue
            if key in safe.OUTPUT_REFERENCING:  # ORDER BY 2, GROUP BY name: an output
                for item in node:  # (output_sources looks through a SortBy itself)
                    self.control(how, item, scope, ctes, safe.output_sources(item, outs, self.on_literal))
            else:
                self.control(how, node, scope, ctes)
        for window in f.get("windowClause") or ():
            self.window(window.get("WindowDef", window) if isinstance(window, dict) else None, scope, ctes)
        self.joins(f.get("fromClause"), scope, ctes)

    def joins(self, items: Any, scope: Scope, ctes: Ctes) -> None:
        """JOIN ... ON, USING and NATURAL: which rows pair up."""
        stack: list[Any] = list(items or ())
        while stack:
            item = stack.pop()
            join = item.get("JoinExpr") if isinstance(item, dict) else None
            if not isinstance(join, dict):
                continue
            if join.get("quals") is not None:
                self.control("JOIN ON", join["quals"], scope, ctes)
            using = ident_list(join.get("usingClause"))
            if using:
                sources = frozenset(s for name in using for s in scope.resolve(name).sources)
                self.control("JOIN USING", None, scope, ctes, sources)
            if join.get("isNatural"):  # pairs on every column the two sides share: unknown here
                self.control("NATURAL JOIN", None, scope, ctes, frozenset({UNKNOWN}))
            stack.extend((join.get("larg"), join.get("rarg")))

    def window(self, window: Any, scope: Scope, ctes: Ctes) -> None:
        if isinstance(window, dict):
            clauses = [window.get("partitionClause"), window.get("orderClause")]
            self.control("window PARTITION BY / ORDER BY", clauses, scope, ctes)
            self.control("window frame", [window.get("startOffset"), window.get("endOffset")], scope, ctes)

    def control(self, how: str, node: Any, scope: Scope, ctes: Ctes, extra: frozenset[str] = frozenset()) -> None:
        """Walk `node` as a control position: the result depends on it other than as an output
        (its safe forms add to `guesses` instead)."""
        sources = self.expr(node, scope, ctes, control=True).sources | extra if node is not None else extra
        if self.controls is not None and sources:
            self.controls.append((how, sources))

    def scan(self, name: str, f: Node) -> None:
        """Visit every query of a statement for what is collected (sinks, controls)."""
        if name == "SelectStmt":
            self.select({**f, "intoClause": None}, None, {})
        elif name in _DML:
            self.dml(name, f, None, {})
        elif name in ("CreateStmt", "IndexStmt", "AlterTableStmt"):
            self.definition(f)
        elif name in ("CreateTableAsStmt", "ViewStmt", "DeclareCursorStmt", "CopyStmt", "ExplainStmt"):
            query = f.get("query")  # EXPLAIN without ANALYZE runs nothing, but reading it costs nothing
            if isinstance(query, dict) and len(query) == 1:
                ((inner, g),) = query.items()
                self.scan(inner, g)

    def definition(self, f: Node) -> None:
        """A table's definition computes over its columns where no statement shows it: a
        generated column, a CHECK, a unique key (an equality oracle for ON CONFLICT), an
        index (its order can order rows), a partition key (which partition a row lands in),
        a ``"char"`` column (it keeps one byte). Over a masked copy (``insert into t (ssn)
        select ssn ...``, allowed: reads are masked) each answers for the value."""
        scope = Scope(None)
        table = Table(relname(f.get("relation")), ())
        scope.top.append(table)
        scope.leaves.append(table)
        scope.named.append(table)

        def visit(key: str, value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            if key == "ColumnDef":
                column = frozenset({str(value.get("colname", ""))})
                type_names = (value.get("typeName") or {}).get("names") or []
                if type_names and ident(type_names[-1]) == "char":
                    self.control('a column of type "char"', None, scope, {}, column)
                for item in value.get("constraints") or ():
                    constraint = item.get("Constraint") if isinstance(item, dict) else None
                    if isinstance(constraint, dict) and constraint.get("contype") in _KEYS:
                        self.control("a unique key", None, scope, {}, column)
                return True
            if key == "Constraint":
                how = _CONSTRAINTS.get(str(value.get("contype")), "a constraint")
                keys = frozenset(ident_list(value.get("keys")) + ident_list(value.get("including")))
                self.control(
                    how, [value.get("raw_expr"), value.get("exclusions"), value.get("where_clause")], scope, {}, keys
                )
                return False
            if key in ("IndexElem", "PartitionElem"):
                how = "an index" if key == "IndexElem" else "a partition key"
                column = frozenset({str(value["name"])}) if value.get("name") else frozenset()
                self.control(how, value.get("expr"), scope, {}, column)
                return False
            return True

        walk(
            [f.get("tableElts"), f.get("partspec"), f.get("indexParams"), f.get("indexIncludingParams"), f.get("cmds")],
            visit,
        )
        self.control("an index's WHERE", f.get("whereClause"), scope, {})

    def dml(self, name: str, f: Node, parent: Scope | None, ctes: Ctes) -> None:
        """An INSERT/UPDATE/DELETE/MERGE, top level or in a WITH: its control positions."""
        ctes = self.with_clause(f.get("withClause"), parent, ctes)
        if name == "InsertStmt" and f.get("selectStmt"):
            self.query_outputs(f["selectStmt"], parent, ctes)
        scope = self.dml_scope(f, parent, ctes)
        self.expr([f.get("targetList"), f.get("returningList"), f.get("returningClause")], scope, ctes)
        self.control("WHERE", f.get("whereClause"), scope, ctes)
        self.control("MERGE ... ON", f.get("joinCondition"), scope, ctes)
        for when in f.get("mergeWhenClauses") or ():
            clause = when.get("MergeWhenClause", {}) if isinstance(when, dict) else {}
            self.control("MERGE ... WHEN condition", clause.get("condition"), scope, ctes)
            self.expr([clause.get("targetList"), clause.get("values")], scope, ctes)
        conflict = f.get("onConflictClause")
        if isinstance(conflict, dict):
            excluded = self.dml_scope(f, parent, ctes, excluded=True)
            self.control("ON CONFLICT ... WHERE", conflict.get("whereClause"), excluded, ctes)
            self.expr(conflict.get("targetList"), excluded, ctes)
            self.conflict(f, scope, ctes)
        self.joins([*(f.get("fromClause") or ()), *(f.get("usingClause") or ())], scope, ctes)

    def conflict(self, f: Node, scope: Scope, ctes: Ctes) -> None:
        """ON CONFLICT compares each inserted row with the stored ones: which rows conflict
        answers for the inserted columns (40 guessed e-mails in one INSERT ... ON CONFLICT DO
        NOTHING RETURNING). A VALUES list of constants counts as that many guesses; anything
        else (INSERT ... SELECT) as reading the columns."""
        columns = [str((c.get("ResTarget") or {}).get("name", "")) for c in f.get("cols") or () if isinstance(c, dict)]
        sources = frozenset(columns) if columns else frozenset({UNKNOWN})
        select = select_fields(f.get("selectStmt"))
        rows = (select or {}).get("valuesLists") if select is not None and not select.get("fromClause") else None
        if rows and not safe.constant_rows(rows):
            rows = None
        if rows:
            for column in sources:
                self.guesses.add(column, len(rows))
        else:
            self.control("ON CONFLICT", None, scope, ctes, sources)

    def returning(self, f: Node, parent: Scope | None, ctes: Ctes) -> list[Out] | None:
        clause = f.get("returningClause")
        targets = clause.get("exprs") if isinstance(clause, dict) else f.get("returningList")
        if not targets:
            return None
        ctes = self.with_clause(f.get("withClause"), parent, ctes)
        return self.targets(targets, self.dml_scope(f, parent, ctes), ctes)

    def dml_scope(self, f: Node, parent: Scope | None, ctes: Ctes, *, excluded: bool = False) -> Scope:
        """What an INSERT/UPDATE/DELETE/MERGE's expressions read: its table, UPDATE ... FROM,
        DELETE ... USING, MERGE ... USING; with `excluded`, the row an ON CONFLICT DO UPDATE
        would have inserted, under that name."""
        scope = Scope(parent)
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

    def with_clause(self, clause: Any, parent: Scope | None, ctes: Ctes) -> Ctes:
        if not isinstance(clause, dict):
            return ctes
        ctes = dict(ctes)
        found = [item.get("CommonTableExpr") for item in clause.get("ctes") or () if isinstance(item, dict)]
        items: list[Node] = [cte for cte in found if isinstance(cte, dict)]
        if not clause.get("recursive"):
            for cte in items:
                ctes[str(cte.get("ctename", ""))] = self.cte(cte, parent, ctes)
            return ctes
        # WITH RECURSIVE: every CTE sees every other, itself and those after it included.
        # Start each with no source and walk the whole list until no lineage grows.
        names = [str(cte.get("ctename", "")) for cte in items]
        for name in names:
            ctes[name] = [_PENDING]
        for _ in range(_MAX_RECURSIVE_ROUNDS):
            before = [fixpoint_key(ctes[name]) for name in names]
            for name, cte in zip(names, items, strict=True):
                new = self.cte(cte, parent, ctes)
                ctes[name] = new if ctes[name] == [_PENDING] else grow_outs(ctes[name], new)
            if [fixpoint_key(ctes[name]) for name in names] == before:
                break
        else:
            for name in names:
                ctes[name] = [Out(o.name, Col(frozenset({UNKNOWN}), False)) for o in ctes[name]]
        return ctes

    def cte(self, cte: Node, parent: Scope | None, ctes: Ctes) -> list[Out]:
        """One CTE's outputs: its query's (a data-modifying one's RETURNING, its WHERE ...
        walked like a statement's), renamed, plus SEARCH's and CYCLE's added columns, which
        hold the values of the columns they name."""
        query = cte.get("ctequery") or {}
        if self.collecting and isinstance(query, dict) and len(query) == 1:
            ((inner, g),) = query.items()
            if inner in _DML:
                self.dml(inner, g, parent, ctes)
        outs = rename_outs(self.query_outputs(query, parent, ctes), ident_list(cte.get("aliascolnames")))

        def sources_of(columns: Any) -> frozenset[str]:
            wanted = set(ident_list(columns))
            found: set[str] = set()
            for out in outs:
                if out.col is None or out.name is None or out.name in wanted:
                    found |= every_source([out])
            return frozenset(found)

        search = cte.get("search_clause")
        search = search.get("CTESearchClause", search) if isinstance(search, dict) else None
        if isinstance(search, dict):
            sequence = Col(sources_of(search.get("search_col_list")), False)
            outs = [*outs, Out(str(search.get("search_seq_column")), sequence)]
        cycle = cte.get("cycle_clause")
        cycle = cycle.get("CTECycleClause", cycle) if isinstance(cycle, dict) else None
        if isinstance(cycle, dict):
            sources = sources_of(cycle.get("cycle_col_list"))
            self.control("CYCLE", None, Scope(parent), ctes, sources)  # which rows recur: a comparison
            for key in ("cycle_mark_column", "cycle_path_column"):
                outs = [*outs, Out(str(cycle.get(key)), Col(sources, False))]
        return outs

    def query_outputs(self, node: Any, parent: Scope | None, ctes: Ctes) -> list[Out]:
        """The outputs of a subquery (SELECT, or a data-modifying statement's RETURNING)."""
        if isinstance(node, dict) and len(node) == 1:
            ((name, f),) = node.items()
            if name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
                return self.returning(f, parent, ctes) or []
        fields = select_fields(node)
        if fields is None:
            return [Out(None, Col(frozenset({UNKNOWN}), False))]
        return self.select(fields, parent, ctes)

    def values(self, lists: list[Any], parent: Scope | None, ctes: Ctes) -> list[Out]:
        scope = Scope(parent)
        columns: list[Col] = []
        for row in lists:
            items = row.get("List", {}).get("items", []) if isinstance(row, dict) else []
            for i, item in enumerate(items):
                col = Col(self.expr(item, scope, ctes).sources, False)
                if i < len(columns):
                    columns[i] = columns[i] | col
                else:
                    columns.append(col)
        return [Out(f"column{i + 1}", col) for i, col in enumerate(columns)]

    def set_operation(self, f: Node, parent: Scope | None, ctes: Ctes) -> list[Out]:
        left = self.query_outputs(f.get("larg"), parent, ctes)
        right = self.query_outputs(f.get("rarg"), parent, ctes)
        op = str(f.get("op"))
        if self.collecting and op in ("SETOP_INTERSECT", "SETOP_EXCEPT"):
            # Which rows come back depends on comparing every column of both sides.
            self.control(op[6:], None, Scope(parent), ctes, every_source(left) | every_source(right))
        lx, rx = expand_outs(left), expand_outs(right)
        if lx is not None and rx is not None and len(lx) == len(rx):
            paired = []
            for a, b in zip(lx, rx, strict=True):
                assert a.col is not None and b.col is not None
                bare = a.col.bare and b.col.bare and a.name == b.name
                paired.append(Out(a.name, Col(a.col.sources | b.col.sources, bare, a.col.copied and b.col.copied)))
            if op == "SETOP_UNION" and not f.get("all"):
                self.deduplicated("UNION", paired, parent, ctes)
            return paired
        if op == "SETOP_UNION" and not f.get("all"):
            self.deduplicated("UNION", left + right, parent, ctes)
        # Columns cannot be paired: every derived or renamed value may be in any column.
        sources: set[str] = set()
        for side, first in ((left, True), (right, False)):
            for out in side:
                if out.col is None:
                    for rel in out.rels:
                        sources.update(s for _, entry in rel.loose() for s in entry)
                        if not first:
                            sources |= rel.row().sources | {UNKNOWN}
                elif is_derived(out) or (not first and out.col.sources):
                    sources |= out.col.sources
        rels: tuple[Rel, ...] = (Opaque(None, Col(frozenset(sources), False)),)
        return [Out(None, None, rels)]

    # FROM ---------------------------------------------------------------------------

    def from_item(self, node: Any, scope: Scope, ctes: Ctes) -> Rel:
        if not isinstance(node, dict) or len(node) != 1:
            return self.opaque(None, node, scope, ctes)
        ((name, f),) = node.items()
        alias = f.get("alias") if isinstance(f, dict) else None
        qual = str(alias.get("aliasname")) if isinstance(alias, dict) and alias.get("aliasname") else None
        renamed = ident_list(alias.get("colnames")) if isinstance(alias, dict) else ()
        rel: Rel
        if name == "RangeVar":
            relname = str(f.get("relname", ""))
            if not f.get("schemaname") and relname in ctes:
                rel = Query(qual or relname, ctes[relname], renamed)
            else:
                rel = Table(qual or relname, renamed)
        elif name == "RangeSubselect":
            rel = Query(qual, self.query_outputs(f.get("subquery"), scope, ctes), renamed)
        elif name == "JoinExpr":
            parts = [self.from_item(f.get("larg"), scope, ctes), self.from_item(f.get("rarg"), scope, ctes)]
            merged = bool(f.get("usingClause") or f.get("isNatural"))
            rel = Join(qual, parts, merged)
            if renamed:
                rel = Query(qual, [Out(None, None, (rel,))], renamed)
            if qual is not None:
                scope.named.append(rel)
            return rel
        elif name == "RangeTableSample":
            # How many rows, and which (REPEATABLE's seed), follow its arguments.
            self.control("TABLESAMPLE", [f.get("args"), f.get("repeatable")], scope, ctes)
            return self.from_item(f.get("relation"), scope, ctes)
        elif name == "RangeFunction":
            if qual is None:
                qual = from_function_name(f)
            return self.opaque(qual, f, scope, ctes)
        else:
            return self.opaque(qual, f, scope, ctes)
        scope.leaves.append(rel)
        scope.named.append(rel)
        return rel

    def deduplicated(self, how: str, outs: list[Out], parent: Scope | None, ctes: Ctes) -> None:
        """UNION and DISTINCT compare rows: of stored columns that is a count of distinct
        values (as ``count(DISTINCT col)``), of computed ones a comparison (``select
        substr(ssn, 1, 1) < '5' ... union select true`` answers one row or two)."""
        if not self.collecting:
            return
        sources: set[str] = set()
        for out in outs:
            if out.col is None:
                sources |= every_source([out])
            elif not out.col.copied:
                sources |= out.col.sources
        self.control(how, None, Scope(parent), ctes, frozenset(sources))

    def opaque(self, qual: str | None, node: Any, scope: Scope, ctes: Ctes) -> Rel:
        col = Col(self.expr(node, scope, ctes).sources, False)
        if col.sources:
            # A function in FROM may return any number of rows, decided by its arguments.
            self.control("function in FROM", None, scope, ctes, col.sources)
        rel = Opaque(qual, col)
        scope.leaves.append(rel)
        scope.named.append(rel)
        return rel

    # Target lists and expressions ---------------------------------------------------

    def targets(self, targets: Any, scope: Scope, ctes: Ctes) -> list[Out]:
        outs: list[Out] = []
        for item in targets:
            target = item.get("ResTarget") if isinstance(item, dict) else None
            if not isinstance(target, dict):
                continue
            val = target.get("val")
            star = self.star(val, scope, ctes)
            if star is not None:
                outs.append(Out(None, None, star))
                continue
            col = self.expr(val, scope, ctes)
            name = target.get("name") or figure_name(val)
            bare = False
            ref = val.get("ColumnRef") if isinstance(val, dict) else None
            if isinstance(ref, dict) and col.bare:
                fields = ref.get("fields") or []
                bare = bool(fields) and ident(fields[-1]) == name
            plain = isinstance(ref, dict) and col.copied  # ``ssn as x``: renamed, not computed
            outs.append(Out(name, Col(col.sources, bare, plain)))
        return outs

    def star(self, val: Any, scope: Scope, ctes: Ctes) -> tuple[Rel, ...] | None:
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
            qual = ident(fields[-2])
            rel = scope.find(qual) if qual is not None else None
            return (rel if rel is not None else Table(qual, ()),)
        ind = val.get("A_Indirection")
        if isinstance(ind, dict):
            items = ind.get("indirection") or []
            if items and isinstance(items[-1], dict) and "A_Star" in items[-1]:
                col = self.expr(ind.get("arg"), scope, ctes)
                sources = col.sources | ({UNKNOWN} if col.bare and col.sources else set())
                return (Opaque(None, Col(frozenset(sources), False)),)
        return None

    def expr(self, root: Any, scope: Scope, ctes: Ctes, *, control: bool = False) -> Col:
        """The lineage of an expression: the union over every column it reads. As a `control`
        position, the safe forms (`controls.safe_comparison`) add nothing."""
        found: list[Col] = []

        def visit(key: str, value: Any) -> Any:
            if isinstance(value, dict) and key[:1].isupper():
                return self.node(key, value, scope, ctes, found, control)
            return True

        walk(root, visit)
        if not found:
            return NOTHING
        col = found[0]
        for more in found[1:]:
            col = col | more
        if ROW in col.sources:
            # A table's whole row: as is, or as text or JSON, the content detectors see its
            # values (the mark stays, for what later rewrites it); rewritten any other way
            # (reverse(c::text)), nothing could: it is masked whole.
            if keeps_shape(root):
                return Col(col.sources, isinstance(root, dict) and "ColumnRef" in root and col.bare)
            return Col(col.sources - {ROW} | {UNKNOWN}, False)
        if root is None or not (isinstance(root, dict) and "ColumnRef" in root):
            return Col(col.sources, False)
        return col

    def node(self, name: str, f: Node, scope: Scope, ctes: Ctes, found: list[Col], control: bool) -> Any:
        """One typed node of an expression: adds to `found`; answers what to descend into."""
        if name == "ColumnRef":
            found.append(self.column_ref(f, scope))
            return False
        if name in ("A_Const", "ParamRef", "TypeName"):
            return False
        if name == "SubLink":
            if f.get("subLinkType") == "EXISTS_SUBLINK":
                # Reveals no value itself; what its query filters on is a control there.
                if self.collecting:
                    self.sublink(f.get("subselect"), scope, ctes)
                return False
            found.append(self.sublink(f.get("subselect"), scope, ctes))
            return [f.get("testexpr")]
        if name == "NullTest":
            # IS [NOT] NULL of a stored column reveals no value; of anything computed, it may
            # (``nullif(substr(ssn, 1, 1), '6') is null``).
            return not self.is_bare(f.get("arg"), scope)
        if name == "FuncCall":
            base = function_name_of(f)
            if self.collecting:
                self.function_controls(base, f, scope, ctes)
                if base in SINKS:
                    self.sink(base, f, scope, ctes)
            if base == "count":
                # count(*), count(col), count(DISTINCT col) reveal no value; count of anything
                # computed may (``count(nullif(substr(ssn, 1, 1), '6'))``).
                args = f.get("args") or []
                if all(self.is_bare(arg, scope) for arg in args):
                    return False
                return [args]
            return True
        if name == "CaseExpr" and self.collecting:
            whens = [w.get("CaseWhen") or {} for w in f.get("args") or () if isinstance(w, dict)]
            conditions = [f.get("arg"), *(w.get("expr") for w in whens)]
            self.control("CASE condition", conditions, scope, ctes)
            return True
        if name == "A_Expr" and control:
            guessed = safe.safe_comparison(f, lambda node: self.is_bare(node, scope))
            if guessed:
                for column in self.expr([f.get("lexpr"), f.get("rexpr")], scope, ctes).sources:
                    self.guesses.add(column, guessed)
                return False
        return True

    def function_controls(self, base: str | None, f: Node, scope: Scope, ctes: Ctes) -> None:
        """The parts of a call that decide which rows, how many, or what else it changes."""
        self.control("FILTER", f.get("agg_filter"), scope, ctes)
        self.control("aggregate ORDER BY", f.get("agg_order"), scope, ctes)
        over = f.get("over")
        self.window(over.get("WindowDef", over) if isinstance(over, dict) else None, scope, ctes)
        if not is_pure(f):
            # Rows (set-returning), state read back later (pg_advisory_lock, lo_create,
            # nextval, set_config), time (pg_sleep), or anything (a user's function).
            self.control(f"argument of {base}()", f.get("args"), scope, ctes)

    def is_bare(self, node: Any, scope: Scope) -> bool:
        """Whether `node` is a reference to a stored column as is (not a whole row)."""
        if isinstance(node, dict) and "A_Star" in node:
            return True  # count(*)
        ref = node.get("ColumnRef") if isinstance(node, dict) else None
        if not isinstance(ref, dict):
            return False
        fields = ref.get("fields") or []
        if fields and isinstance(fields[-1], dict) and "A_Star" in fields[-1]:
            return len(fields) == 1  # count(*), but not c.* (a row)
        col = self.column_ref(ref, scope)
        return col.bare and ROW not in col.sources and UNKNOWN not in col.sources

    def sink(self, base: str, f: Node, scope: Scope, ctes: Ctes) -> None:
        """A value handed to a sink (`SINKS`): ``set_config(name, value)`` keeps it in a
        setting, ``pg_notify(channel, payload)`` sends it to listeners, ``setval`` and the
        large-object writers store it: all outside any result the masker sees."""
        what, index = SINKS[base]
        args = f.get("args") or []
        if len(args) <= index:
            return
        sources = self.expr(args[index], scope, ctes).sources
        if sources:
            target = args[0].get("A_Const", {}).get("sval", {}).get("sval") if isinstance(args[0], dict) else None
            assert self.sinks is not None
            self.sinks.append((f"{what} {target or '?'}", sources))

    def sublink(self, node: Any, scope: Scope, ctes: Ctes) -> Col:
        return Col(every_source(self.query_outputs(node, scope, ctes)), False)

    def column_ref(self, f: Node, scope: Scope) -> Col:
        fields = f.get("fields") or []
        names = [ident(x) for x in fields]
        if len(names) == 2 and names[-1] is None and names[0] is not None:  # t.* in an expression: row(t.*)
            rel = scope.find(names[0])
            return whole_row(rel) if rel is not None else Col(frozenset({UNKNOWN}), False)
        if not names or names[-1] is None:
            return NOTHING  # count(*): reveals no value
        column = names[-1]
        if len(names) == 1:
            col = scope.resolve(column)
            rel = scope.find(column)
            if rel is not None:  # maybe a whole-row reference to a FROM item
                whole = whole_row(rel)
                col = Col(col.sources | whole.sources, col.bare and not (whole.sources - {ROW}))
            return col
        qual = names[-2]
        rel = scope.find(qual) if qual is not None else None
        if rel is None:
            return Col(frozenset({column}), True)
        hit = rel.column(column)
        if hit is None:
            return Col(frozenset({column}), True)
        return hit[0]
