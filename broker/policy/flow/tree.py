"""The parse tree as libpg_query's JSON has it, and the one walker every pass shares.

A node is ``{"TypeName": {fields}}``, except where a field's C type names the node type
(``relation`` is a bare RangeVar, ``larg``/``rarg`` bare SelectStmts). `walk` visits a tree
iteratively, so no tree is too deep for Python's stack; what nests queries inside queries
(`Walker.select`) counts its depth against `MAX_QUERY_DEPTH` and gives up with `TooDeep`,
which every caller turns into its fail-closed answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH", "MAX_QUERY_DEPTH", "Node", "TooDeep", "ident", "ident_list", "loads", "relname",
    "select_fields", "walk",
]  # fmt: skip

Node = dict[str, Any]

#: Queries nested in queries (subqueries, CTEs, set operations) deeper than this are not
#: followed: the statement reads as one the analysis cannot follow (fail closed).
MAX_QUERY_DEPTH = 64


class TooDeep(Exception):
    """A statement nests queries deeper than `MAX_QUERY_DEPTH`."""


#: What a visitor answers for one (key, value): descend into the value (True), skip it
#: (False), or descend into these items instead.
Descend = bool | Iterable[Any]


def walk(root: Any, visit: Callable[[str, Any], Descend]) -> None:
    """Call ``visit(key, value)`` for every entry of every dict under `root` (lists are
    walked through), depth first, without recursion."""
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            answer = visit(key, value)
            if answer is True:
                if isinstance(value, (dict, list)):
                    stack.append(value)
            elif answer is not False:
                stack.extend(answer)


def relname(node: Any) -> str:
    if isinstance(node, dict) and "RangeVar" in node:
        node = node["RangeVar"]
    return str(node.get("relname", "?")) if isinstance(node, dict) else "?"


def ident(node: Any) -> str | None:
    """The text of a ``{"String": {"sval": ...}}`` node, or None."""
    if isinstance(node, dict) and "String" in node:
        value = node["String"].get("sval", "")
        return str(value)
    return None


def ident_list(items: Any) -> tuple[str, ...]:
    out = []
    for item in items or ():
        name = ident(item)
        if name is not None:
            out.append(name)
    return tuple(out)


def select_fields(node: Any) -> Node | None:
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


# -- decoding -------------------------------------------------------------------------------

#: JSON nested deeper than this is not decoded: the statement reads as one too deep to check.
MAX_JSON_DEPTH = 100_000
_TOKEN = re.compile(
    r'\s*(?:([{}\[\],:])|("(?:[^"\\]|\\.)*")|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(true|false|null))', re.DOTALL
)
_LITERALS = {"true": True, "false": False, "null": None}


def loads(text: str) -> Any:
    """libpg_query's JSON as Python objects. The C decoder recurses once per level, so a long
    left-deep chain (``a || b || c ...``) can exceed Python's recursion limit: such text is
    decoded here without recursion, up to `MAX_JSON_DEPTH` levels (`TooDeep` beyond), rather
    than by raising the process-wide recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        return _loads_deep(text)


def _loads_deep(text: str) -> Any:
    stack: list[Any] = []  # open containers; for an object, [dict, pending key]
    root: Any = None
    done = False
    pos, end = 0, len(text)
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos:].strip():
                raise ValueError(f"unexpected JSON at offset {pos}")
            break
        pos = match.end()
        punct, string, number, literal = match.groups()
        if punct in (",", ":"):
            continue
        if punct in ("{", "["):
            if len(stack) >= MAX_JSON_DEPTH:
                raise TooDeep(f"nested more than {MAX_JSON_DEPTH} levels")
            stack.append([{}, None] if punct == "{" else [[]])
            continue
        if punct in ("}", "]"):
            value = stack.pop()[0]
        elif string is not None:
            value = json.loads(string)
        elif number is not None:
            value = json.loads(number)
        else:
            value = _LITERALS[literal]
        if not stack:
            root, done = value, True
            continue
        top = stack[-1]
        if isinstance(top[0], list):
            top[0].append(value)
        elif top[1] is None:
            top[1] = value  # a key; its value comes next
        else:
            top[0][top[1]] = value
            top[1] = None
    if not done or stack:
        raise ValueError("truncated JSON")
    return root
