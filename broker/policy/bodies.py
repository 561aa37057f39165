"""The SQL inside PL/pgSQL code (DO blocks, CREATE FUNCTION ... LANGUAGE plpgsql).

A DO block or a new function is reviewed anyway; looking inside only lets the policy go
further and *block* one that calls, say, ``pg_read_file`` or ``lo_import``. This is
best-effort by nature: SQL built at run time (``EXECUTE 'sel' || 'ect ...'``) cannot be seen,
which is why such code needs a human in the first place.
"""

from __future__ import annotations

import re
from typing import Any

from pglast import parser as pg

from .flow.tree import TooDeep, loads, walk

__all__ = ["do_block_sql", "plpgsql_sql"]

_PARSE_DEFAULT = 0
_PARSE_EXPR = 2
_ASSIGN_MODES = (3, 4, 5)
_STRING_LITERAL = re.compile(r"\s*'((?:[^']|'')*)'\s*", re.DOTALL)


def plpgsql_sql(create_function: str) -> list[str] | None:
    """SQL embedded in a ``CREATE FUNCTION ... LANGUAGE plpgsql`` statement's body, or None
    if the body does not compile."""
    try:
        tree = loads(pg.parse_plpgsql_json(create_function))
    except (pg.ParseError, ValueError, RecursionError, TooDeep):
        return None
    found: list[str] = []
    _collect(tree, found)
    return found


def do_block_sql(body: str) -> list[str] | None:
    """SQL embedded in the body of a ``DO`` block (PL/pgSQL), or None if it does not compile."""
    tag = "jitgate"
    while f"${tag}$" in body:
        tag += "_"
    return plpgsql_sql(
        f"CREATE FUNCTION jitgate_do() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$"
    )


def _collect(node: Any, found: list[str]) -> None:
    def visit(key: str, value: Any) -> bool:
        if key == "PLpgSQL_expr" and isinstance(value, dict):
            found.extend(_as_statements(value))
            return False
        if key == "PLpgSQL_stmt_dynexecute" and isinstance(value, dict):
            # EXECUTE 'literal SQL': the literal is the statement that will run.
            query = value.get("query", {}).get("PLpgSQL_expr", {}).get("query", "")
            literal = _STRING_LITERAL.fullmatch(query)
            if literal:
                found.append(literal.group(1).replace("''", "'"))
        return True

    walk(node, visit)


def _as_statements(expr: dict[str, Any]) -> list[str]:
    query = str(expr.get("query", ""))
    mode = expr.get("parseMode", _PARSE_DEFAULT)
    if mode == _PARSE_DEFAULT:
        return [query]
    if mode in _ASSIGN_MODES:
        # "target := expression" (or "="): only the expression can call anything.
        for operator in (":=", "="):
            if operator in query:
                query = query.split(operator, 1)[1]
                break
    return [f"SELECT {query}"]
