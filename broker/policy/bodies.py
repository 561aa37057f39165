"""What PL/pgSQL code (a DO block, CREATE FUNCTION ... LANGUAGE plpgsql) runs, from its text.

`plpgsql_code` compiles the body with libpg_query's PL/pgSQL parser and reports two things:

- `Code.statements`: the SQL the body runs, as text the gateway parses and judges as if it
  ran now: its SQL statements, every expression (``x := f()``, ``IF g() ...``, ``PERFORM``),
  and the string of ``EXECUTE 'literal'``;
- `Code.dynamic`: the expressions whose run-time value is run as SQL: ``EXECUTE expr``,
  ``OPEN c FOR EXECUTE expr``, ``RETURN QUERY EXECUTE expr``, ``FOR r IN EXECUTE expr``,
  unless ``expr`` is one string literal. No one can check what those run before they run, so
  the policy blocks them (rule ``<preset>/runtime-sql``).

A body that does not compile gives None: the caller fails closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pglast import parser as pg

from .flow.tree import TooDeep, loads, walk

__all__ = ["Code", "do_block_code", "plpgsql_code"]

_PARSE_DEFAULT = 0
_ASSIGN_MODES = (3, 4, 5)
# PL/pgSQL statements that run a string as SQL, and the field holding its expression.
_DYNAMIC = {
    "PLpgSQL_stmt_dynexecute": "query",
    "PLpgSQL_stmt_dynfors": "query",
    "PLpgSQL_stmt_open": "dynquery",
    "PLpgSQL_stmt_return_query": "dynquery",
}


@dataclass(frozen=True, slots=True)
class Code:
    """What a PL/pgSQL body runs, as far as its text tells (see the module docstring)."""

    statements: tuple[str, ...]
    dynamic: tuple[str, ...]


def plpgsql_code(create_function: str) -> Code | None:
    """What a ``CREATE FUNCTION ... LANGUAGE plpgsql`` statement's body runs, or None if the
    body does not compile."""
    try:
        tree = loads(pg.parse_plpgsql_json(create_function))
    except (pg.ParseError, ValueError, RecursionError, TooDeep):
        return None
    statements: list[str] = []
    dynamic: list[str] = []

    def visit(key: str, value: Any) -> bool:
        if key == "PLpgSQL_expr" and isinstance(value, dict):
            statements.append(_as_statement(value))
            return False
        field = _DYNAMIC.get(key)
        if field is not None and isinstance(value, dict):
            query = value.get(field, {}).get("PLpgSQL_expr", {}).get("query")
            if isinstance(query, str):
                literal = string_literal(query)
                if literal is None:
                    dynamic.append(query.strip())
                else:
                    statements.append(literal)  # the literal is the statement that will run
        return True  # the expression itself, and USING arguments, are evaluated too

    walk(tree, visit)
    return Code(tuple(statements), tuple(dynamic))


def do_block_code(body: str) -> Code | None:
    """What the body of a ``DO`` block (PL/pgSQL) runs, or None if it does not compile."""
    tag = "jitgate"
    while f"${tag}$" in body:
        tag += "_"
    return plpgsql_code(
        f"CREATE FUNCTION jitgate_do() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}$"
    )


def string_literal(expression: str) -> str | None:
    """The value of `expression` if it is one string literal (any quoting, optionally cast),
    else None. Read by PostgreSQL's parser, so ``E'...'`` and ``$q$...$q$`` count too."""
    try:
        tree = loads(pg.parse_sql_json(f"SELECT {expression}"))
    except (pg.ParseError, ValueError, RecursionError, TooDeep):
        return None
    stmts = tree.get("stmts", [])
    if len(stmts) != 1:
        return None
    select = stmts[0].get("stmt", {}).get("SelectStmt", {})
    if set(select) - {"targetList", "limitOption", "op"}:
        return None
    targets = select.get("targetList", [])
    if len(targets) != 1:
        return None
    value = targets[0].get("ResTarget", {}).get("val", {})
    if "TypeCast" in value:
        value = value["TypeCast"].get("arg", {})
    const = value.get("A_Const") if isinstance(value, dict) else None
    if not isinstance(const, dict) or "sval" not in const:
        return None
    return str(const["sval"].get("sval", ""))


def _as_statement(expr: dict[str, Any]) -> str:
    query = str(expr.get("query", ""))
    mode = expr.get("parseMode", _PARSE_DEFAULT)
    if mode == _PARSE_DEFAULT:
        return query
    if mode in _ASSIGN_MODES:
        # "target := expression" (or "="): the target's subscripts run too (a[f()] := 1), so
        # both are kept. The first "=" is the operator's: a target holds none outside a
        # subscript, and one there makes the text unparseable, which blocks it.
        at = query.find("=")
        if at > 0:
            target = query[: at - 1] if query[at - 1] == ":" else query[:at]
            query = f"{target.strip()}, {query[at + 1 :].strip()}"
    return f"SELECT {query}"
