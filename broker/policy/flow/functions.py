"""What the analysis knows of functions and of how PostgreSQL names outputs.

Without the catalog, a function is known by its name only (``pg_catalog.upper`` is
``upper``): the lists here name the ones whose arguments go somewhere other than the value
they return.
"""

from __future__ import annotations

from typing import Any

from .tree import Node, ident, select_fields

__all__ = [
    "PURE", "SHAPE_KEEPING", "SINKS", "figure_name", "from_function_name", "function_name_of",
    "is_pure", "keeps_shape",
]  # fmt: skip

NO_NAME = "?column?"
# Functions that keep an argument outside any result, to be read back later unmasked: what
# they put it in, and which argument (0-based) is the value.
SINKS = {
    "set_config": ("setting", 1),  # current_setting() reads it back
    "pg_notify": ("notification on", 1),  # sent to every listener
    "setval": ("sequence", 1),  # currval() / last_value
    "lo_from_bytea": ("large object", 1),  # lo_get() reads it back
    "lo_put": ("large object", 2),
    "lowrite": ("large object", 1),
}
# Functions that show a row's values as they are, so the content detectors still see them.
SHAPE_KEEPING = frozenset({
    "to_json", "to_jsonb", "row_to_json", "json_agg", "jsonb_agg", "array_agg", "array_to_json",
    "jsonb_pretty", "json_build_array", "jsonb_build_array",
})  # fmt: skip
TEXT_TYPES = frozenset({"text", "varchar", "json", "jsonb"})  # not bpchar, name, "char": they cut

# Functions whose arguments go nowhere but into the value they return: no rows, no side
# effect, no state another statement can read (pg_catalog's, by name). Any other function given
# a value (a set-returning one: how many rows; pg_advisory_lock, lo_create, nextval,
# set_config's is_local, setval's is_called: state read back later; pg_sleep: time; a user's
# function: anything) is a control position for it (`selects.Walker.function_controls`).
PURE = frozenset({
    # text
    "lower", "upper", "initcap", "substr", "substring", "left", "right", "length", "char_length",
    "character_length", "octet_length", "bit_length", "trim", "btrim", "ltrim", "rtrim", "lpad",
    "rpad", "replace", "translate", "reverse", "repeat", "concat", "concat_ws", "format",
    "position", "strpos", "split_part", "regexp_replace", "regexp_match", "regexp_like",
    "regexp_count", "regexp_instr", "regexp_substr", "starts_with", "ascii", "chr", "md5",
    "sha224", "sha256", "sha384", "sha512", "encode", "decode", "convert_to", "convert_from",
    "to_hex", "quote_ident", "quote_literal", "quote_nullable", "overlay", "string_to_array",
    "array_to_string", "to_char", "to_number", "to_date", "to_timestamp", "normalize", "unistr",
    "text", "varchar", "bpchar", "int2", "int4", "int8", "numeric", "float4", "float8", "bool",
    # numbers
    "abs", "round", "trunc", "floor", "ceil", "ceiling", "mod", "power", "pow", "sqrt", "cbrt",
    "sign", "exp", "ln", "log", "log10", "div", "gcd", "lcm", "width_bucket", "scale",
    # dates
    "date_trunc", "date_part", "extract", "age", "make_date", "make_time", "make_timestamp",
    "make_timestamptz", "make_interval", "justify_days", "justify_hours", "justify_interval",
    "isfinite", "timezone", "date_bin", "now", "current_date", "clock_timestamp",
    # json, arrays, rows
    "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
    "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object", "jsonb_object",
    "jsonb_extract_path", "jsonb_extract_path_text", "json_extract_path", "json_extract_path_text",
    "jsonb_typeof", "json_typeof", "jsonb_pretty", "jsonb_set", "jsonb_insert", "jsonb_strip_nulls",
    "json_strip_nulls", "jsonb_array_length", "json_array_length", "array_length", "cardinality",
    "array_position", "array_positions", "array_append", "array_prepend", "array_cat",
    "array_remove", "array_replace", "array_upper", "array_lower", "array_ndims", "array_dims",
    "row", "coalesce", "nullif", "greatest", "least",
    # aggregates (their FILTER and ORDER BY are control positions of their own)
    "count", "min", "max", "sum", "avg", "array_agg", "string_agg", "json_agg", "jsonb_agg",
    "json_object_agg", "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and", "bit_or",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
    # window functions (their PARTITION BY and ORDER BY are control positions)
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
})  # fmt: skip


def keeps_shape(node: Any) -> bool:
    """Whether `node` shows a whole-row value as is: the reference itself, a cast to text or
    JSON, ROW(...), or the functions above, nested, with constant extra arguments."""
    if not isinstance(node, dict) or len(node) != 1:
        return False
    ((name, f),) = node.items()
    if name in ("ColumnRef", "A_Const"):
        return True
    if name == "TypeCast":
        # To text or JSON as is; a length (varchar(n), char(n)) cuts values below what the
        # content detectors recognise, so it rewrites them.
        type_name = f.get("typeName") or {}
        names = type_name.get("names") or []
        if not names or type_name.get("typmods") or ident(names[-1]) not in TEXT_TYPES:
            return False
        return keeps_shape(f.get("arg"))
    if name == "RowExpr":
        return all(keeps_shape(arg) for arg in f.get("args") or ())
    if name == "FuncCall":
        return function_name_of(f) in SHAPE_KEEPING and all(keeps_shape(a) for a in f.get("args") or ())
    return False


def is_pure(f: Node) -> bool:
    """A FuncCall of a `PURE` function, unqualified or in pg_catalog (``myschema.lower`` may
    be anything)."""
    names = f.get("funcname") or []
    if len(names) > 2 or (len(names) == 2 and ident(names[0]) != "pg_catalog"):
        return False
    return function_name_of(f) in PURE


def function_name_of(f: Node) -> str | None:
    """A FuncCall's name without its schema: ``pg_catalog.upper`` is ``upper``."""
    return ident((f.get("funcname") or [None])[-1])


def from_function_name(f: Node) -> str | None:
    functions = f.get("functions") or []
    if len(functions) != 1:
        return None
    items = functions[0].get("List", {}).get("items", []) if isinstance(functions[0], dict) else []
    call = items[0].get("FuncCall") if items and isinstance(items[0], dict) else None
    if not isinstance(call, dict):
        return None
    return function_name_of(call)


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
        last = ident(fields[-1]) if fields else None
        return (last, 2) if last is not None else (NO_NAME, 0)
    if kind == "A_Indirection":
        for item in reversed(f.get("indirection") or []):
            label = ident(item)
            if label is not None:
                return label, 2
        return _figure(f.get("arg"))
    if kind == "FuncCall":
        return function_name_of(f), 2
    if kind == "A_Expr":
        return ("nullif", 2) if f.get("kind") == "AEXPR_NULLIF" else (NO_NAME, 0)
    if kind == "TypeCast":
        name, strength = _figure(f.get("arg"))
        if strength <= 1:
            names = (f.get("typeName") or {}).get("names") or []
            type_name = ident(names[-1]) if names else None
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
            inner = select_fields(f.get("subselect"))
            targets = (inner or {}).get("targetList") or []
            target = targets[0].get("ResTarget", {}) if targets else {}
            if target.get("name"):
                return str(target["name"]), 2
            name, _ = _figure(target.get("val"))
            return (name if name is not None else None), 2
        return NO_NAME, 0
    if kind == "CaseExpr":
        name, strength = _figure(f.get("defresult"))
        return (name, strength) if strength > 1 else ("case", 1)
    if kind == "A_ArrayExpr":
        return "array", 2  # FigureColnameInternal: "make ARRAY[] act like a function"
    if kind == "RowExpr":
        return "row", 2
    if kind == "MinMaxExpr":
        return ("greatest" if f.get("op") == "IS_GREATEST" else "least"), 2
    if kind == "SQLValueFunction":
        op = str(f.get("op", ""))
        return (op[6:].lower() if op.startswith("SVFOP_") else None), 2
    if kind in _FIXED_NAMES:
        return _FIXED_NAMES[kind], 2
    if kind in _ANONYMOUS:
        return NO_NAME, 0
    return None, 0
