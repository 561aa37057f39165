"""Is a WHERE clause always true? Best-effort folding of constant expressions.

``DELETE FROM t WHERE 1=1`` deletes every row just like ``DELETE FROM t``, so the policy
treats a WHERE clause that is true whatever the row as missing. `is_always_true` recognises
what an agent (or a prompt injection) plausibly writes: literals (``true``, ``'t'``,
``'yes'``), comparisons of constants (``1=1``, ``'a'='a'``, ``2>1``, ``1 IN (1,2)``,
``1 IS NOT DISTINCT FROM 1``), a column compared with itself (``id = id``), boolean
operators (``1=1 OR id=5``, ``NOT false``), casts (``'1'::bool``), ``IS [NOT] NULL`` /
``IS TRUE`` tests on constants, ``EXISTS (SELECT 1)``, and simple integer arithmetic. It is
not a theorem prover: ``WHERE id > 0`` passes as a real filter.

Every read of a literal's value goes through `Reader.value`, which tells the classifier that
its verdict depends on a literal, so it is not shared with statements of the same shape
(see `normalize`). Structure is checked first, so ``WHERE aid = 48213`` never reads 48213.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Reader", "const_value", "is_always_true", "parse_bool"]

Node = dict[str, Any]


class _Unknown:
    """The expression's value depends on the row, or on something not folded here."""


UNKNOWN = _Unknown()


def const_value(fields: Node) -> object:
    """The Python value of an ``A_Const`` node's fields (None for NULL)."""
    if fields.get("isnull"):
        return None
    for key in ("ival", "sval", "boolval", "fval", "bsval"):
        if key in fields:
            inner = fields[key]
            # libpg_query omits default values: {"ival": {}} is 0, {"sval": {}} is ''.
            default: object = {"ival": 0, "sval": "", "boolval": False, "fval": "0"}.get(key, "")
            value = inner.get(key, default) if isinstance(inner, dict) else inner
            if key == "fval":
                try:
                    return float(str(value).replace("_", ""))
                except ValueError:
                    return UNKNOWN
            if key == "bsval":
                return UNKNOWN  # bit strings are not booleans: leave them alone
            return value
    return UNKNOWN


def parse_bool(text: str) -> bool | None:
    """PostgreSQL's boolin: prefixes of true/yes/false/no, on/off (or "of"), 1/0; else None."""
    s = text.strip().lower()
    if not s:
        return None
    if s in ("1", "on"):
        return True
    if s in ("0", "of", "off"):
        return False
    if "true".startswith(s) or "yes".startswith(s):
        return True
    if "false".startswith(s) or "no".startswith(s):
        return False
    return None


class Reader:
    """Folds constants, reporting each literal it reads through `on_read`."""

    __slots__ = ("_on_read",)

    def __init__(self, on_read: Callable[[], None]) -> None:
        self._on_read = on_read

    def value(self, node: Node) -> object:
        """The value of a constant expression, or UNKNOWN."""
        if not _is_constant(node):
            return UNKNOWN
        return self._value(node)

    def _value(self, node: Node) -> object:
        ((name, f),) = node.items()
        if name == "A_Const":
            self._on_read()
            return const_value(f)
        if name == "TypeCast":
            value = self._value(f["arg"])
            return _cast(value, _type_name(f.get("typeName", {})))
        if name == "A_Expr":  # integer + - * of constants
            left = self._value(f["lexpr"]) if "lexpr" in f else 0
            right = self._value(f["rexpr"])
            op = _op_name(f)
            if isinstance(left, int) and isinstance(right, int) and not isinstance(left, bool):
                if op == "+":
                    return left + right
                if op == "-":
                    return left - right
                if op == "*":
                    return left * right
            return UNKNOWN
        return UNKNOWN

    def truth(self, node: Node) -> bool | None:
        """True/False when `node` is a constant condition, None when it depends on the row."""
        ((name, f),) = node.items()
        if name == "BoolExpr":
            op = f.get("boolop")
            args = f.get("args", [])
            if op == "NOT_EXPR":
                inner = self.truth(args[0]) if args else None
                return None if inner is None else not inner
            results = [self.truth(arg) for arg in args]
            if op == "OR_EXPR":
                if any(r is True for r in results):
                    return True
                return False if all(r is False for r in results) else None
            if any(r is False for r in results):
                return False
            return True if all(r is True for r in results) else None
        if name == "A_Expr":
            return self._comparison(f)
        if name == "NullTest":
            value = self.value(f["arg"])
            if value is UNKNOWN:
                return None
            is_null = value is None
            return is_null if f.get("nulltesttype") == "IS_NULL" else not is_null
        if name == "BooleanTest":
            inner = self.truth(f["arg"])
            if inner is None:
                return None
            test = f.get("booltesttype", "IS_TRUE")
            return {
                "IS_TRUE": inner,
                "IS_NOT_TRUE": not inner,
                "IS_FALSE": not inner,
                "IS_NOT_FALSE": inner,
            }.get(test)
        if name == "SubLink" and f.get("subLinkType") == "EXISTS_SUBLINK":
            return self._exists(f.get("subselect", {}))
        value = self.value(node)
        if value is UNKNOWN:
            return None
        return _as_bool(value)

    def _comparison(self, f: Node) -> bool | None:
        kind = f.get("kind")
        op = _op_name(f)
        left_node, right_node = f.get("lexpr"), f.get("rexpr")
        if left_node is None or right_node is None:
            return None
        if kind == "AEXPR_OP" and op in ("=", "<=", ">=") and _same_column(left_node, right_node):
            return True  # id = id holds for every row where id is not null
        if kind == "AEXPR_IN":
            items = (
                right_node.get("List", {}).get("items") if isinstance(right_node, dict) else None
            )
            if not isinstance(items, list):
                return None  # IN (subquery) and friends
            left = self.value(left_node)
            rights = [self.value(item) for item in items]
            if left is UNKNOWN or left is None or any(r is UNKNOWN for r in rights):
                return None
            found = any(_compare(left, "=", r) is True for r in rights)
            return found if op == "=" else not found
        if kind not in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT"):
            return None
        if not (_is_constant(left_node) and _is_constant(right_node)):
            return None
        left, right = self._value(left_node), self._value(right_node)
        if left is UNKNOWN or right is UNKNOWN:
            return None
        if kind == "AEXPR_DISTINCT":
            same = _compare(left, "=", right) if None not in (left, right) else left is right
            return None if same is None else not same
        if kind == "AEXPR_NOT_DISTINCT":
            return _compare(left, "=", right) if None not in (left, right) else left is right
        if left is None or right is None:
            return False  # comparisons with NULL are never true
        return _compare(left, op, right)

    def _exists(self, subselect: Node) -> bool | None:
        select = subselect.get("SelectStmt")
        if not isinstance(select, dict):
            return None
        # SELECT 1 with nothing that could make it return no row.
        blockers = ("fromClause", "whereClause", "havingClause", "limitCount", "limitOffset")
        if any(key in select for key in blockers) or "larg" in select:
            return None
        return True


def is_always_true(where: Node, on_read: Callable[[], None]) -> bool:
    """Whether a WHERE clause holds for every row (so it filters nothing)."""
    return Reader(on_read).truth(where) is True


def _is_constant(node: Any) -> bool:
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((name, f),) = node.items()
    if name == "A_Const":
        return True
    if name == "TypeCast":
        return _is_constant(f.get("arg"))
    if name == "A_Expr" and f.get("kind") == "AEXPR_OP" and _op_name(f) in ("+", "-", "*"):
        return ("lexpr" not in f or _is_constant(f["lexpr"])) and _is_constant(f.get("rexpr"))
    return False


def _op_name(f: Node) -> str:
    names = f.get("name", [])
    if not names:
        return ""
    last = names[-1]
    return str(last.get("String", {}).get("sval", "")) if isinstance(last, dict) else ""


def _type_name(type_name: Node) -> str:
    names = type_name.get("names", [])
    if not names:
        return ""
    return str(names[-1].get("String", {}).get("sval", "")).lower()


def _cast(value: object, type_name: str) -> object:
    if value is UNKNOWN or value is None:
        return value
    if type_name in ("bool", "boolean"):
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        if isinstance(value, str):
            parsed = parse_bool(value)
            return UNKNOWN if parsed is None else parsed
        return UNKNOWN
    if type_name in ("int2", "int4", "int8", "integer", "smallint", "bigint", "int"):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                return UNKNOWN
        return value if isinstance(value, int) else UNKNOWN
    if type_name in ("text", "varchar", "bpchar", "name"):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return UNKNOWN


def _as_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return False  # WHERE NULL selects nothing
    if isinstance(value, str):
        return parse_bool(value)  # an untyped literal in WHERE is read as boolean
    return None


def _compare(left: object, op: str, right: object) -> bool | None:
    left, right = _unify(left, right)
    if left is UNKNOWN:
        return None
    try:
        if op == "=":
            return bool(left == right)
        if op in ("<>", "!="):
            return bool(left != right)
        if op == "<":
            return bool(left < right)  # type: ignore[operator]
        if op == ">":
            return bool(left > right)  # type: ignore[operator]
        if op == "<=":
            return bool(left <= right)  # type: ignore[operator]
        if op == ">=":
            return bool(left >= right)  # type: ignore[operator]
    except TypeError:
        return None
    return None


def _unify(left: object, right: object) -> tuple[object, object]:
    """Give both sides one type, as PostgreSQL resolves an untyped literal against the other."""
    if type(left) is type(right):
        return left, right
    for a, b, flip in ((left, right, False), (right, left, True)):
        if isinstance(a, bool) and isinstance(b, str):
            parsed = parse_bool(b)
            if parsed is None:
                return UNKNOWN, UNKNOWN
            return (parsed, a) if flip else (a, parsed)
        if isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, str):
            try:
                number = float(b.strip())
            except ValueError:
                return UNKNOWN, UNKNOWN
            return (number, a) if flip else (a, number)
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        if not isinstance(left, bool) and not isinstance(right, bool):
            return left, right
    return UNKNOWN, UNKNOWN


def _same_column(left: Any, right: Any) -> bool:
    return (
        isinstance(left, dict)
        and "ColumnRef" in left
        and isinstance(right, dict)
        and "ColumnRef" in right
        and left["ColumnRef"].get("fields") == right["ColumnRef"].get("fields")
    )
