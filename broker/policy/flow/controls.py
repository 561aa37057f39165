"""Control flow: where a statement's result depends on a value other than by showing it.

Masking follows what a query *outputs*; an agent can still read a masked value through which
rows come back, in what order, how many, or how long the query takes::

    select pos, ch from customers c, generate_series(1, 11) pos,
           (select chr(g) ch from generate_series(32, 126) g) v
     where c.id = 1 and substr(c.ssn, pos, 1) = ch

returns the SSN one character per row, although no output is derived from it. So every
position where a value decides *which* rows, *how many* or *in what order* is a control
position, and the walker (`selects.Walker`) records the sources of what it reads there:

- WHERE, JOIN ... ON / USING / NATURAL, HAVING, GROUP BY, ORDER BY, DISTINCT ON, LIMIT,
  OFFSET (`CLAUSES`), with ``ORDER BY 2`` or ``ORDER BY alias`` read as the output they name;
- window PARTITION BY / ORDER BY, an aggregate's FILTER and ORDER BY, CASE conditions;
- the arguments of set-returning functions in a target list and of any function in FROM (it
  may return any number of rows), and of ``pg_sleep`` (a timing channel);
- INTERSECT and EXCEPT (rows come back by comparing every column);
- the WHERE of UPDATE and DELETE, MERGE's join and WHEN conditions, ON CONFLICT ... WHERE:
  the command tag counts the rows they pick, RETURNING shows which;
- all of these in subqueries too, wherever the subquery is (an EXISTS in a SELECT list).

The *safe forms* add nothing, because agents need them and they reveal one yes/no per
guess: equality of a stored column with a constant or a bound parameter (``email = $1``),
``col IN (...)`` with at most `MAX_IN_LIST` constants, ``IS [NOT] NULL``, ``count(col)`` and
``count(DISTINCT col)`` (`selects.Walker.is_bare`: the column as stored, not computed).

Which sources are masked is the masker's call (by name); the proxy sends a statement with a
masked control source to review (`proxy.decide`, rule ``masking/inference``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .functions import is_pure
from .scopes import Out, every_source, expand_outs
from .tree import Node, ident, walk

__all__ = [
    "CLAUSES", "MAX_IN_LIST", "OUTPUT_REFERENCING", "Guesses", "constant_rows", "output_sources", "safe_comparison",
]  # fmt: skip

#: A SELECT's control clauses, and how the approval card names each.
CLAUSES = (
    ("whereClause", "WHERE"),
    ("havingClause", "HAVING"),
    ("groupClause", "GROUP BY"),
    ("sortClause", "ORDER BY"),
    ("distinctClause", "DISTINCT ON"),
    ("limitCount", "LIMIT"),
    ("limitOffset", "OFFSET"),
)
#: Clauses whose items may name an output (by position or output name) instead of a column.
OUTPUT_REFERENCING = frozenset({"groupClause", "sortClause", "distinctClause"})
#: The longest ``IN (...)`` list of constants that counts as a safe form.
MAX_IN_LIST = 16


def output_sources(node: Any, outs: list[Out], on_literal: Callable[[], None]) -> frozenset[str]:
    """The sources of the outputs a GROUP BY / ORDER BY / DISTINCT ON item names: ``2`` (a
    position) or ``alias`` (an output's name), also inside grouping sets. A position is a
    literal's value: `on_literal` is told (``order by 1`` and ``order by 2`` share a shape)."""
    found: set[str] = set()

    def visit(key: str, value: Any) -> Any:
        if key == "A_Const" and isinstance(value, dict):
            position = (value.get("ival") or {}).get("ival") if isinstance(value.get("ival"), dict) else None
            if isinstance(position, int):
                on_literal()
                expanded = expand_outs(outs)
                if expanded is None:
                    found.update(every_source(outs))
                elif 0 < position <= len(expanded) and expanded[position - 1].col is not None:
                    col = expanded[position - 1].col
                    assert col is not None
                    found.update(col.sources)
            return False
        if key == "ColumnRef" and isinstance(value, dict):
            fields = value.get("fields") or []
            name = ident(fields[0]) if len(fields) == 1 else None
            for out in outs:
                if name is not None and out.col is not None and out.name == name:
                    found.update(out.col.sources)
            return False
        return key in ("GroupingSet", "content", "SortBy", "node") or not key[:1].isupper()

    walk(node, visit)
    return frozenset(found)


class Guesses:
    """The safe forms a statement uses, by column: each a guess at a value. More than
    `MAX_IN_LIST` on one column (``ssn = 'a' or ssn = 'b' or ...``, 40 rows of an INSERT ...
    ON CONFLICT on a unique e-mail) count as reading it."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}

    def add(self, column: str, n: int) -> None:
        self._count[column] = self._count.get(column, 0) + n

    def exceeded(self) -> frozenset[str]:
        return frozenset(column for column, n in self._count.items() if n > MAX_IN_LIST)


def constant_rows(rows: list[Any]) -> bool:
    """A VALUES list of constants only."""
    for row in rows:
        items = row.get("List", {}).get("items") if isinstance(row, dict) else None
        if not isinstance(items, list) or not all(_constant(item) or _default(item) for item in items):
            return False
    return True


def _default(node: Any) -> bool:
    return isinstance(node, dict) and "SetToDefault" in node


def safe_comparison(f: Node, is_bare: Callable[[Any], bool]) -> int:
    """How many guesses an A_Expr is, when it is a safe form; 0 when it is not one. A safe
    form compares stored columns with constants or bound parameters for (in)equality: ``col =
    const``, ``const <> col``, ``col = $1``, ``col IS [NOT] DISTINCT FROM const``, ``(a, b) =
    ($1, $2)`` (one guess each), ``col [NOT] IN (const, ...)`` with at most `MAX_IN_LIST`
    items (as many as it lists)."""
    names = f.get("name") or []
    op = ident(names[-1]) if names else None
    kind = f.get("kind")
    left, right = f.get("lexpr"), f.get("rexpr")
    if kind in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") and op in _EQUALITY:
        pairs = _pairs(left, right)
        if pairs and all((_constant(r) and is_bare(lv)) or (_constant(lv) and is_bare(r)) for lv, r in pairs):
            return 1
        return 0
    if kind == "AEXPR_IN":
        items = right.get("List", {}).get("items") if isinstance(right, dict) else right
        if not isinstance(items, list) or not 0 < len(items) <= MAX_IN_LIST:
            return 0
        return len(items) if all(_constant(item) for item in items) and is_bare(left) else 0
    return 0


_EQUALITY = frozenset({"=", "<>", "!="})


def _pairs(left: Any, right: Any) -> list[tuple[Any, Any]]:
    """What an equality compares: the two sides, or ``(a, b) = (c, d)`` pairwise."""
    rows = [side.get("RowExpr", {}).get("args") if isinstance(side, dict) else None for side in (left, right)]
    if rows[0] is not None or rows[1] is not None:
        if rows[0] is None or rows[1] is None or len(rows[0]) != len(rows[1]):
            return []
        return list(zip(rows[0], rows[1], strict=True))
    return [(left, right)]


def _constant(node: Any) -> bool:
    """A literal or a bound parameter, maybe cast, collated, or computed from such alone by
    a `functions.PURE` function or an operator (``lower($1)``, ``'a' || $1``)."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((name, f),) = node.items()
    if name in ("A_Const", "ParamRef"):
        return True
    if not isinstance(f, dict):
        return False
    if name in ("TypeCast", "CollateClause"):
        return _constant(f.get("arg"))
    if name == "FuncCall":
        return is_pure(f) and not f.get("agg_star") and all(_constant(arg) for arg in f.get("args") or ())
    if name == "A_Expr" and f.get("kind") == "AEXPR_OP":
        return all(_constant(side) for side in (f.get("lexpr"), f.get("rexpr")) if side is not None)
    return False
