"""Where a statement's values come from and where they go: lineage, stores, control flow.

Read from one statement's parse tree (libpg_query JSON, as `broker.policy.facts` has it),
without the catalog, failing closed where a value cannot be followed:

- `lineage(stmt)`: per result column, the source column names its value is derived from
  (the masker masks a derived output whole when a source is masked);
- `stored(stmt)`: values written where later reads are not masked (`writes`);
- `controls(stmt)`: values the result depends on other than as an output: WHERE, ORDER BY,
  LIMIT, CASE conditions ... (`controls`).

Modules: `tree` (the JSON tree and the shared iterative walk), `scopes` (FROM items and name
resolution), `functions` (what names of functions and outputs mean), `selects` (the walker),
`writes`, `controls`, `merge` (several statements' lineages as one).

How names resolve, without the catalog:

- through FROM-subqueries, CTEs (recursive ones to a fixpoint), joins and correlated
  subqueries by alias; when several FROM items (or an enclosing query) may hold a name, the
  union of their lineages is taken;
- a column renamed by an alias list (``customers c(a, b)``) has the source `UNKNOWN`;
- a function in FROM (``lateral reverse(c.ssn) r``) may have any column name: every column
  read through it carries the sources of its arguments;
- ``*`` counts as its expansion when that is known (a subquery or CTE without stars);
  otherwise outputs before the first star keep their positions from the start, outputs after
  the last from the end, and derived outputs in between are matched by name
  (`Lineage.loose`; name None matches any column);
- a set operation whose branches' columns cannot be paired makes every derived or renamed
  value of any branch loose with name None;
- ``count(col)``, ``col IS [NOT] NULL`` and ``EXISTS (...)`` reveal no value; of a computed
  argument (``count(nullif(substr(ssn, 1, 1), '6'))``) they do, and take its sources. Every
  other expression (comparisons and CASE included) takes the sources of every column it reads.

A whole-row reference to a table (``c`` in ``select c from customers c``) has the source
`ROW`: shown as is, as text or as JSON it is left to the content detectors, rewritten any
other way (``reverse(c::text)``) it becomes `UNKNOWN`.

Not covered (no catalog): views and functions defined outside the statements seen here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import Lineage
from .controls import MAX_IN_LIST
from .functions import figure_name
from .merge import merge, to_lineage
from .scopes import ROW, UNKNOWN, Out
from .selects import Found, Walker
from .tree import MAX_QUERY_DEPTH, Node, TooDeep
from .writes import stored

__all__ = [
    "MAX_IN_LIST", "MAX_QUERY_DEPTH", "ROW", "UNKNOWN", "TooDeep", "controls", "figure_name",
    "lineage", "merge", "stored",
]  # fmt: skip


def lineage(stmt: Node) -> Lineage | None:
    """The lineage of one statement's result columns; None when none is derived."""
    outs = _statement_outputs(stmt)
    return None if outs is None else to_lineage(outs)


def controls(stmt: Node, on_literal: Callable[[], None] = lambda: None) -> tuple[tuple[str, frozenset[str]], ...]:
    """(how, sources) of every value `stmt`'s result depends on other than as an output
    (`controls`); `on_literal` is told when a literal's value decided one (``ORDER BY 2``).
    Plain EXPLAIN counts too: its row estimates come from the planner's statistics, which
    hold sample values of the columns (``explain ... where ssn > '013038522'``)."""
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return ()
    ((name, f),) = stmt.items()
    found: Found = []
    walker = Walker(controls=found, on_literal=on_literal)
    walker.scan(name, f)
    exceeded = walker.guesses.exceeded()
    if exceeded:
        found.append((f"more than {MAX_IN_LIST} equality guesses", exceeded))
    return tuple(dict.fromkeys(found))


def _statement_outputs(stmt: Node) -> list[Out] | None:
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return None
    ((name, f),) = stmt.items()
    if name == "SelectStmt":
        return Walker().select(f, None, {})
    if name in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
        return Walker().returning(f, None, {})
    if name in ("CopyStmt", "DeclareCursorStmt") and isinstance(f.get("query"), dict):
        return _statement_outputs(f["query"])  # a cursor's rows come back through FETCH
    return None
