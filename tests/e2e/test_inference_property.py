"""Property: what the gateway lets an agent run does not depend on masked data.

For random SELECTs over the seeded demo schema (customers ``c``, maybe orders ``o`` joined on
``customer_id``, maybe a ``generate_series`` ``g``), drawn by hypothesis from a small grammar
(`statement`): select lists of plain and masked columns and functions of them (reverse,
substr, upper, md5, ascii, length, nullif, ``||`` ...), CASE, aggregates (count, min, max,
sum, string_agg ... ORDER BY, FILTER), window functions, set-returning functions, WHERE
predicates (comparisons, LIKE, equality with constants, IN lists, IS NULL, AND/OR/NOT,
EXISTS / IN / scalar subqueries), JOIN ... ON conditions, LATERAL generate_series, GROUP BY,
HAVING, DISTINCT, UNION / INTERSECT / EXCEPT, ORDER BY expressions and positions, LIMIT and
OFFSET (constants and scalar subqueries), queries over a FROM-subquery or CTE, maybe wrapped
in ``select count(*) from (...)``.
Each statement goes through the gateway (simple protocol, prepared, or binary results):

1. refused (42501 from jitgate, rule masking/inference or another): fine;
2. neither its rows nor an error's text holds a raw masked value from ``customers`` (nor
   its reverse, upper or lower case, md5 or digit-translated form), and every output the
   grammar knows to be derived from a masked column is masked (text: stars, or NULL / empty;
   any other type: NULL);
3. when it ran (rows or an error): the same statement with every masked column reference
   replaced by a constant of its type (``c.ssn`` -> ``'000-00-0000'::text``), run straight
   on PostgreSQL, answers the same: the same error SQLSTATE, or the same rows as a multiset
   (and in the same order when the statement orders them), comparing plain outputs by value
   (digits and stars alike: the content detectors may mask a digit run of a plain value)
   and masked outputs as the gateway shows them: NULL, empty or masked. The *safe forms*
   (``col = const``, ``col IN (<= 16 constants)``, ``col IS [NOT] NULL``, ``count(col)``,
   ``count(DISTINCT col)`` of a masked column as stored; and ``SELECT DISTINCT`` or
   ``UNION`` of such columns, which tell what ``count(DISTINCT col)`` tells) keep their columns in the
   constant variant: the result may depend on masked data through them, and through nothing
   else. How the gateway shows a NULL and an empty derived value is read from the gateway
   once (`Rendering`), so the property holds it to what it shows for those, not to today's
   rendering.

So a statement the gateway lets through whose rows, row count, order, NULLs or errors follow
a masked value (``where substr(ssn, 1, 1) = '6'``, ``order by ssn limit 1``) fails the
property; `test_the_comparison_detects_dependence` checks that on PostgreSQL directly.
`test_counterexamples_found_by_the_property` keeps the minimal forms of what it found.

Runs: ``.venv/bin/python -m pytest tests/e2e/test_inference_property.py`` (1,500 examples,
about 25 s); ``HYPOTHESIS_PROFILE=fuzz`` runs 20,000 (about 5 minutes; no per-test timeout).
``INFERENCE_PROPERTY_SKIP=distinct,union,...`` leaves grammar features out (names in
`FEATURES`), to look past a known counterexample for the next one.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

_FUZZ = os.environ.get("HYPOTHESIS_PROFILE", "default") == "fuzz"
PROPERTY = settings(
    max_examples=20_000 if _FUZZ else 1500,
    deadline=None,
    suppress_health_check=list(HealthCheck) if _FUZZ else [HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY_TIMEOUT = 0 if _FUZZ else 120

FEATURES = frozenset(
    {
        "distinct",
        "union",
        "intersect",
        "nullif",
        "division",
        "srf",
        "window",
        "subquery",
        "lateral",
        "group",
        "limit",
        "wrap",
        "join",
        "case",
        "safe",
        "jsonpath",
        "empty",
        "null",  # off: a masked empty / NULL text output counts as any masked value
    }
)
SKIP = frozenset(f.strip() for f in os.environ.get("INFERENCE_PROPERTY_SKIP", "").split(",") if f.strip())
assert SKIP <= FEATURES, f"unknown features in INFERENCE_PROPERTY_SKIP: {sorted(SKIP - FEATURES)}"


def on(feature: str) -> bool:
    return feature not in SKIP


#: Masked columns of customers and the constant that replaces each in the constant variant.
MASKED = {
    "ssn": "000-00-0000",
    "email": "nobody@example.com",
    "phone": "+1-000-555-0000",
    "card_number": "0000000000000000",
    "api_key": "sk_live_000000000000000000000000",
    "password_hash": "$2b$12$" + "0" * 53,
}
TEXTLIKE = ("text", "json")
_DIGITS = str.maketrans("0123456789", "abcdefghij")

# -- the grammar --------------------------------------------------------------------------


@dataclass(frozen=True)
class X:
    """An expression, rendered twice: as is (`real`) and with every masked column reference
    a constant (`const`)."""

    real: str
    const: str
    type: str  # text | int | num | bool | json
    masked: bool = False  # the gateway's lineage derives it from a masked column: masked as an output
    reads: bool = False  # reads a masked column anywhere
    safe: bool = False  # uses a safe form on a masked column
    agg: bool = False
    bare: bool = False  # a masked column as stored
    constant: bool = False  # a literal


def lit(sql: str, type_: str, constant: bool = False) -> X:
    return X(sql, sql, type_, constant=constant)


def fn(template: str, *args: X, type_: str, masked: bool | None = None, safe: bool = False) -> X:
    """`template` with {} for each argument, rendered both ways. A `safe` form keeps its
    masked columns in the constant variant too: the result may depend on them there."""
    return X(
        template.format(*(a.real for a in args)),
        template.format(*(a.real if safe else a.const for a in args)),
        type_,
        any(a.masked for a in args) if masked is None else masked,
        any(a.reads for a in args),
        safe or any(a.safe for a in args),
        any(a.agg for a in args),
    )


@dataclass(frozen=True)
class Scope:
    """The columns an expression may read, and what it may contain."""

    text: tuple[str, ...]
    masked: tuple[str, ...]  # qualified: c.ssn
    ints: tuple[str, ...]
    nums: tuple[str, ...]
    outer: str = "c"  # the customers alias a correlated subquery refers to
    sub: int = 1  # subqueries left
    name: str = "c2"  # the next subquery's alias
    hot: bool = True  # masked columns as likely as others (outputs); less so in control positions


def cool(sc: Scope) -> Scope:
    """`sc` for a control position: fewer masked columns, or nearly every statement is refused."""
    return replace(sc, hot=False)


def customers_scope(alias: str = "c", sub: int = 1) -> Scope:
    return Scope(
        text=(f"{alias}.full_name",),
        masked=tuple(f"{alias}.{m}" for m in MASKED),
        ints=(f"{alias}.id",),
        nums=(),
        outer=alias,
        sub=sub,
        name=f"{alias}2" if alias == "c" else f"{alias}x",
    )


def with_orders(sc: Scope, alias: str = "o") -> Scope:
    return Scope(
        sc.text + (f"{alias}.status",),
        sc.masked,
        sc.ints + (f"{alias}.id", f"{alias}.customer_id"),
        sc.nums + (f"{alias}.amount",),
        sc.outer,
        sc.sub,
        sc.name,
    )


def with_series(sc: Scope) -> Scope:
    return Scope(sc.text, sc.masked, sc.ints + ("g",), sc.nums, sc.outer, sc.sub, sc.name)


def masked_col(ref: str) -> X:
    column = ref.split(".")[-1]
    if column not in MASKED:  # an output of a FROM-subquery or CTE: its constant variant is constant already
        return X(ref, ref, "text", masked=True, reads=True)
    # concat() is STABLE: the planner does not fold it, so an expression over the constant is
    # evaluated when a row needs it, as one over the column is (folded, `100 / (0 - strpos(
    # '000-00-0000', 'a'))` fails at planning even under LIMIT 0, where the column's never runs).
    const = "concat('" + MASKED[column].replace("'", "''") + "'::text)"
    return X(ref, f"({const})", "text", masked=True, reads=True, bare=True)


TEXT_LITERALS = ("'a'", "'6'", "'-'", "'4'", "'e'", "' '", "'x-'", "'3'", "'0'", "'C'")
LIKE_PATTERNS = ("'6%'", "'%6%'", "'%@example.net'", "'_3%'", "'%a%'", "'C%'")
CMP = ("=", "<>", "<", ">", "<=", ">=")


@st.composite
def text_leaf(draw: Any, sc: Scope) -> X:
    kinds = ["masked", "masked", "plain", "lit"] if sc.hot else ["masked", "plain", "plain", "lit", "lit"]
    kind = draw(st.sampled_from(kinds))
    if kind == "masked":
        return masked_col(draw(st.sampled_from(sc.masked)))
    if kind == "plain":
        return lit(draw(st.sampled_from(sc.text)), "text")
    return lit(draw(st.sampled_from(TEXT_LITERALS)), "text", constant=True)


@st.composite
def int_leaf(draw: Any, sc: Scope) -> X:
    if draw(st.booleans()):
        return lit(draw(st.sampled_from(sc.ints)), "int")
    value = draw(st.one_of(st.integers(0, 12), st.sampled_from([18, 26, 48, 51, 52, 54, 55])))
    return lit(str(value), "int", constant=True)


@st.composite
def text_expr(draw: Any, sc: Scope, depth: int = 2) -> X:
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        return draw(text_leaf(sc))
    # One character of a masked column ("char") is what an attacker probes with; nullif may
    # turn it into a NULL. (hypothesis favours the first entries: those go first.)
    ops = ["char", "nullif", "char"] if on("nullif") else ["char"]
    ops += ["reverse", "upper", "lower", "md5", "substr", "left", "split_part", "concat", "replace", "cast"]
    ops += ["case"] * on("case") + ["sub"] * (on("subquery") and sc.sub > 0)
    op = draw(st.sampled_from(ops))
    t = lambda: draw(text_expr(sc, depth - 1))  # noqa: E731
    if op in ("reverse", "upper", "lower", "md5"):
        return fn(op + "({})", t(), type_="text")
    if op == "char":
        column = masked_col(draw(st.sampled_from(sc.masked)))
        return fn(f"substr({{}}, {draw(st.integers(1, 12))}, 1)", column, type_="text")
    if op == "substr":
        start = draw(st.one_of(st.integers(1, 12), st.sampled_from([19, 27])))
        return fn(f"substr({{}}, {start}, {draw(st.integers(1, 3))})", t(), type_="text")
    if op == "left":
        return fn(f"left({{}}, {draw(st.integers(1, 4))})", t(), type_="text")
    if op == "split_part":
        return fn(f"split_part({{}}, '-', {draw(st.integers(1, 3))})", t(), type_="text")
    if op == "concat":
        return fn("({} || {})", t(), t(), type_="text")
    if op == "replace":
        return fn(f"replace({{}}, {draw(st.sampled_from(TEXT_LITERALS))}, 'z')", t(), type_="text")
    if op == "cast":
        return fn("({})::text", draw(int_expr(sc, depth - 1)), type_="text")
    if op == "nullif":
        pool = st.sampled_from([*TEXT_LITERALS, *(f"'{d}'" for d in range(10))])
        other = t() if draw(st.integers(0, 2)) == 0 else lit(draw(pool), "text", constant=True)
        first = t() if draw(st.booleans()) else masked_col(draw(st.sampled_from(sc.masked)))
        if draw(st.booleans()):
            first = fn(f"substr({{}}, {draw(st.integers(1, 12))}, 1)", first, type_="text")
        return fn("nullif({}, {})", first, other, type_="text")
    if op == "case":
        return fn("(case when {} then {} else {} end)", draw(bool_expr(sc, depth - 1)), t(), t(), type_="text")
    inner = customers_scope(sc.name, sc.sub - 1)
    value = draw(text_expr(inner, depth - 1))
    return fn(f"(select {{}} from customers {sc.name} where {sc.name}.id = {sc.outer}.id)", value, type_="text")


@st.composite
def int_expr(draw: Any, sc: Scope, depth: int = 2) -> X:
    if depth <= 0 or draw(st.integers(0, 3)) == 0:
        return draw(int_leaf(sc))
    ops = ["length", "ascii", "strpos", "plus", "mod", "greatest"]
    ops += ["division"] * on("division") + ["case"] * on("case") + ["count"] * (on("subquery") and sc.sub > 0)
    op = draw(st.sampled_from(ops))
    t = lambda: draw(text_expr(sc, depth - 1))  # noqa: E731
    i = lambda: draw(int_expr(sc, depth - 1))  # noqa: E731
    if op in ("length", "ascii"):
        return fn(op + "({})", t(), type_="int")
    if op == "strpos":
        return fn(f"strpos({{}}, {draw(st.sampled_from(TEXT_LITERALS))})", t(), type_="int")
    if op == "plus":
        return fn("({} + {})", i(), i(), type_="int")
    if op == "mod":
        return fn(f"({{}} % {draw(st.integers(2, 7))})", i(), type_="int")
    if op == "greatest":
        return fn(draw(st.sampled_from(["greatest", "least"])) + "({}, {})", i(), i(), type_="int")
    if op == "division":
        return fn("(100 / ({} - {}))", i(), i(), type_="int")
    if op == "case":
        return fn("(case when {} then {} else {} end)", draw(bool_expr(sc, depth - 1)), i(), i(), type_="int")
    name = sc.name.replace("c", "o", 1)
    inner = with_orders(customers_scope(sc.outer, sc.sub - 1), name)
    cond = draw(bool_expr(Scope(inner.text, inner.masked, inner.ints, inner.nums, sc.outer, 0, name), depth - 1))
    return fn(
        f"(select count(*) from orders {name} where {name}.customer_id = {sc.outer}.id and {{}})",
        cond,
        type_="int",
        masked=False,
    )


@st.composite
def bool_expr(draw: Any, sc: Scope, depth: int = 2) -> X:
    ops = ["cmp_text", "cmp_int", "like"]
    ops += ["eq_const", "in_list", "is_null"] * on("safe")
    if sc.nums:
        ops.append("cmp_num")
    if depth > 0:
        ops += ["not", "and", "or", "null_computed"]
        if on("subquery") and sc.sub > 0:
            ops += ["exists", "in_sub", "masked_in_sub"]
    op = draw(st.sampled_from(ops))
    t = lambda: draw(text_expr(sc, max(depth - 1, 0)))  # noqa: E731
    i = lambda: draw(int_expr(sc, max(depth - 1, 0)))  # noqa: E731
    b = lambda: draw(bool_expr(sc, depth - 1))  # noqa: E731
    if op == "cmp_text":
        left, cmp, right = t(), draw(st.sampled_from(CMP)), t()
        guess = cmp == "=" and ((left.bare and right.constant) or (right.bare and left.constant))  # a safe form
        return fn(f"({{}} {cmp} {{}})", left, right, type_="bool", safe=guess)
    if op == "cmp_int":
        return fn(f"({{}} {draw(st.sampled_from(CMP))} {{}})", i(), i(), type_="bool")
    if op == "cmp_num":
        return fn(f"({draw(st.sampled_from(sc.nums))} {draw(st.sampled_from(CMP))} {{}})", i(), type_="bool")
    if op == "like":
        negate = draw(st.sampled_from(["", "not "]))
        return fn(f"({{}} {negate}like {draw(st.sampled_from(LIKE_PATTERNS))})", t(), type_="bool")
    if op == "eq_const":
        col = masked_col(draw(st.sampled_from(sc.masked)))
        value = draw(st.sampled_from(["'637-16-6681'", "'carmen.muller1@example.net'", "'x'", "'4242424242424242'"]))
        return fn(f"({{}} = {value})", col, type_="bool", safe=col.bare)
    if op == "in_list":
        col = masked_col(draw(st.sampled_from(sc.masked)))
        n = draw(st.integers(1, 20))
        items = ", ".join(f"'{k:03d}-00-0000'" for k in range(n))
        return fn(f"({{}} in ({items}))", col, type_="bool", safe=col.bare and n <= 16)
    if op == "is_null":
        col = masked_col(draw(st.sampled_from(sc.masked)))
        negate = draw(st.sampled_from(["", "not "]))
        return fn(f"({{}} is {negate}null)", col, type_="bool", masked=not col.bare, safe=col.bare)
    if op == "null_computed":
        arg = t()  # a bare column: a safe form
        return fn("({} is null)", arg, type_="bool", masked=False if arg.bare else None, safe=arg.bare)
    if op == "not":
        return fn("(not {})", b(), type_="bool")
    if op in ("and", "or"):
        return fn(f"({{}} {op} {{}})", b(), b(), type_="bool")
    inner_name = sc.name
    if op == "exists":
        name = inner_name.replace("c", "o", 1)
        inner = with_orders(customers_scope(sc.outer, sc.sub - 1), name)
        inner = Scope(inner.text, inner.masked, inner.ints, inner.nums, sc.outer, 0, name)
        return fn(
            f"exists (select 1 from orders {name} where {name}.customer_id = {sc.outer}.id and {{}})",
            draw(bool_expr(inner, depth - 1)),
            type_="bool",
            masked=False,
        )
    inner = customers_scope(inner_name, sc.sub - 1)
    if op == "in_sub":
        return fn(
            f"({sc.outer}.id in (select {inner_name}.id from customers {inner_name} where {{}}))",
            draw(bool_expr(inner, depth - 1)),
            type_="bool",
            masked=False,
        )
    column = draw(st.sampled_from(list(MASKED)))
    return fn(
        f"({{}} in (select {{}} from customers {inner_name} where {inner_name}.id < {draw(st.integers(1, 5))}))",
        masked_col(f"{sc.outer}.{column}"),
        masked_col(f"{inner_name}.{column}"),
        type_="bool",
    )


@st.composite
def scalar_expr(draw: Any, sc: Scope, depth: int = 2) -> X:
    kind = draw(st.sampled_from(["text", "text", "int", "bool"] + ["num"] * bool(sc.nums)))
    if kind == "text":
        return draw(text_expr(sc, depth))
    if kind == "int":
        return draw(int_expr(sc, depth))
    if kind == "num":
        return lit(draw(st.sampled_from(sc.nums)), "num")
    return draw(bool_expr(sc, depth - 1))


@st.composite
def typed_expr(draw: Any, sc: Scope, type_: str) -> X:
    if type_ == "text":
        return draw(text_expr(sc))
    if type_ == "int":
        return draw(int_expr(sc))
    if type_ == "num":
        return lit(draw(st.sampled_from(sc.nums)) if sc.nums else "(c.id * 1.5)", "num")
    return draw(bool_expr(sc, 1))


@st.composite
def aggregate(draw: Any, sc: Scope) -> X:
    ops = ["count_star", "count", "count_distinct", "min", "max", "sum", "string_agg", "bool_or"]
    op = draw(st.sampled_from(ops))
    if op == "count_star":
        out = lit("count(*)", "int")
    elif op in ("count", "count_distinct"):
        arg = draw(text_expr(sc, 1)) if on("safe") else draw(text_expr(sc, 1).filter(lambda a: not a.bare))
        distinct = "distinct " if op == "count_distinct" else ""
        out = fn(f"count({distinct}{{}})", arg, type_="int", masked=arg.masked and not arg.bare, safe=arg.bare)
    elif op in ("min", "max"):
        arg = draw(st.one_of(text_expr(sc, 1), int_expr(sc, 1)))
        out = fn(op + "({})", arg, type_=arg.type)
    elif op == "sum":
        out = fn("sum({})", draw(int_expr(sc, 1)), type_="num")
    elif op == "string_agg":
        value, key = draw(text_expr(sc, 1)), draw(scalar_expr(sc, 1))
        keys = ", ".join(k for k in (sc.ints[0], *sc.ints[1:2]))
        out = fn(f"string_agg({{}}, ',' order by {{}}, {keys})", value, key, type_="text")
    else:
        out = fn("bool_or({})", draw(bool_expr(sc, 1)), type_="bool")
    if draw(st.integers(0, 3)) == 0:
        # The gateway's lineage reads a FILTER into an aggregate's value, except count's.
        cond = draw(bool_expr(sc, 1))
        masked = out.masked or (cond.masked and not op.startswith("count"))
        out = X(
            f"{out.real} filter (where {cond.real})",
            f"{out.const} filter (where {cond.const})",
            out.type,
            masked,
            out.reads or cond.reads,
            out.safe or cond.safe,
        )
    return X(out.real, out.const, out.type, out.masked, out.reads, out.safe, agg=True)


@st.composite
def window(draw: Any, sc: Scope, keys: str) -> X:
    op = draw(st.sampled_from(["row_number", "rank", "count", "sum", "lag", "first_value"]))
    k = draw(scalar_expr(cool(sc), 1))
    if op == "row_number":
        return fn(f"row_number() over (order by {{}}, {keys})", k, type_="int")
    if op == "rank":
        return fn("rank() over (order by {})", k, type_="int")
    if op == "count":
        return fn("count(*) over (partition by {})", k, type_="int", masked=False)
    if op == "sum":
        return fn("sum({}) over (partition by {})", draw(int_expr(sc, 1)), k, type_="num")
    value = draw(text_expr(sc, 1))
    if op == "lag":
        return fn(f"lag({{}}) over (order by {keys})", value, type_="text")
    return fn(f"first_value({{}}) over (partition by {{}} order by {keys})", value, k, type_="text")


@st.composite
def set_returning(draw: Any, sc: Scope) -> X:
    ops = ["generate_series", "regexp_split_to_table", "string_to_table", "unnest"] + ["jsonpath"] * on("jsonpath")
    op = draw(st.sampled_from(ops))
    if op == "generate_series":
        return fn("generate_series(1, least(greatest({}, 0), 3))", draw(int_expr(sc, 1)), type_="int")
    value, sep = draw(text_expr(sc, 1)), draw(st.sampled_from(["'-'", "'6'", "'e'"]))
    if op == "unnest":
        return fn(f"unnest(string_to_array({{}}, {sep}))", value, type_="text")
    if op == "jsonpath":
        return fn(f"jsonb_path_query_tz(to_jsonb(string_to_array({{}}, {sep})), '$[*]')", value, type_="json")
    return fn(f"{op}({{}}, {sep})", value, type_="text")


@dataclass(frozen=True)
class Output:
    type: str
    masked: bool


@dataclass(frozen=True)
class Statement:
    real: str
    const: str
    outputs: tuple[Output, ...]
    reads: bool
    safe: bool
    ordered: bool  # the top level has ORDER BY: compare the order too

    def __repr__(self) -> str:  # hypothesis shows the falsifying example by this
        return f"Statement({self.real!r})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


def join_parts(parts: Sequence[str | X], sep: str = " ") -> tuple[str, str, bool, bool]:
    real = sep.join(p if isinstance(p, str) else p.real for p in parts)
    const = sep.join(p if isinstance(p, str) else p.const for p in parts)
    xs = [p for p in parts if isinstance(p, X)]
    return real, const, any(x.reads for x in xs), any(x.safe for x in xs)


@st.composite
def from_clause(draw: Any) -> tuple[list[str | X], Scope, str]:
    """The FROM items, the scope they make and the row keys (a total order of the rows)."""
    sc = customers_scope()
    parts: list[str | X] = ["from customers c"]
    keys = ["c.id"]
    kind = draw(st.sampled_from(["plain", "join", "join", "series"] + ["lateral"] * on("lateral")))
    if kind == "join" and on("join"):
        sc = with_orders(sc)
        parts.append("join orders o on o.customer_id = c.id")
        keys.append("o.id")
        if draw(st.integers(0, 2)) == 0:
            parts += ["and", draw(bool_expr(cool(sc), 1))]
    elif kind == "series":
        parts.append("cross join generate_series(1, 2) g")
        sc, keys = with_series(sc), keys + ["g"]
    elif kind == "lateral":
        parts += ["cross join lateral generate_series(1, least(greatest(", draw(int_expr(sc, 1)), ", 0), 3)) g"]
        sc, keys = with_series(sc), keys + ["g"]
    return parts, sc, ", ".join(keys)


@st.composite
def limit_clause(draw: Any, sc: Scope) -> list[str | X]:
    if not on("limit") or draw(st.integers(0, 2)) > 0:
        return []
    out: list[str | X] = []
    for word in ("limit", "offset"):
        kind = draw(st.sampled_from(["none", "const", "const", "sub"] if on("subquery") else ["none", "const"]))
        if kind == "const":
            out.append(f"{word} {draw(st.integers(0, 30))}")
        elif kind == "sub":
            inner = customers_scope("l" + word[0], 0)
            value = draw(int_expr(inner, 1))
            out += [
                f"{word} (select least(greatest(",
                value,
                f", 0), 30) from customers {inner.outer} where {inner.outer}.id = {draw(st.integers(1, 3))})",
            ]
    return out


def order_positions(outputs: Sequence[Output]) -> list[str]:
    return [str(i + 1) for i, o in enumerate(outputs) if not o.masked]


@st.composite
def row_query(
    draw: Any,
    *,
    distinct: bool = False,
    nested: bool = False,
    types: Sequence[str] | None = None,
    keep_bare: bool = False,
) -> Statement:
    parts, sc, keys = draw(from_clause())
    if types is None:
        targets = draw(st.lists(scalar_expr(sc), min_size=1, max_size=4))
    else:
        targets = [draw(typed_expr(sc, t)) for t in types]
    if not distinct and not nested:
        if on("window") and draw(st.integers(0, 3)) == 0:
            targets.append(draw(window(sc, keys)))
        if on("srf") and draw(st.integers(0, 3)) == 0:
            targets.append(draw(set_returning(sc)))
    if distinct or keep_bare:
        # DISTINCT (and UNION) of masked columns as stored tells what count(DISTINCT col)
        # tells: a safe form. Computed ones are compared by value: they must not be.
        targets = [replace(t, const=t.real, safe=True) if t.bare else t for t in targets]
    outputs = tuple(Output(t.type, t.masked) for t in targets)
    select: list[str | X] = ["select distinct" if distinct else "select"]
    for n, t in enumerate(targets):
        select += [t, f"as v{n + 1}" + ("," if n + 1 < len(targets) else "")]
    body: list[str | X] = [*select, *parts]
    if draw(st.booleans()):
        body += ["where", draw(bool_expr(cool(sc)))]
    ordered = False
    if not nested:
        limit = draw(limit_clause(sc))
        if limit or draw(st.booleans()):
            ordered = True
            order: list[str | X] = ["order by"]
            if not distinct and draw(st.booleans()):
                order += [draw(scalar_expr(cool(sc), 1)), ","]
            if draw(st.booleans()) and len(targets) > 0:
                n = draw(st.integers(1, len(targets)))
                order.append(f"{n}," if draw(st.booleans()) else f"v{n},")  # a position or an output's name
            tail = order_positions(outputs) + ([] if distinct else [keys])
            if not tail:  # DISTINCT with masked outputs only: order by the first
                tail = ["1"]
            order.append(", ".join(tail))
            body += order + limit
    real, const, reads, safe = join_parts(body)
    return Statement(real, const, outputs, reads, safe, ordered)


@st.composite
def aggregate_query(draw: Any) -> Statement:
    parts, sc, _ = draw(from_clause())
    sc = Scope(sc.text, sc.masked, sc.ints, sc.nums, sc.outer, 0, sc.name)  # no correlated subqueries
    keys = scalar_expr(sc, 1).filter(lambda k: not k.constant)  # (GROUP BY 'a' is an error)
    group_keys = draw(st.lists(keys, min_size=0, max_size=2)) if on("group") else []
    aggs = draw(st.lists(aggregate(sc), min_size=1, max_size=3))
    targets = [*group_keys, *aggs]
    outputs = tuple(Output(t.type, t.masked) for t in targets)
    body: list[str | X] = ["select"]
    for n, t in enumerate(targets):
        body += [t, f"as v{n + 1}" + ("," if n + 1 < len(targets) else "")]
    body += parts
    if draw(st.booleans()):
        body += ["where", draw(bool_expr(cool(sc), 1))]
    if group_keys:
        body.append("group by")
        if draw(st.booleans()):
            body.append(", ".join(str(i + 1) for i in range(len(group_keys))))
        else:
            for n, key in enumerate(group_keys):
                body += [key] + ([","] if n + 1 < len(group_keys) else [])
        if draw(st.integers(0, 2)) == 0:
            having = draw(aggregate(cool(sc)))
            op = draw(st.sampled_from(CMP))
            value = "'m'" if having.type == "text" else ("true" if having.type == "bool" else "3")
            body += ["having", fn(f"({{}} {op} {value})", having, type_="bool")]
    limit = draw(limit_clause(sc))
    ordered = bool(limit) or draw(st.booleans())
    if ordered:
        body.append("order by " + ", ".join(order_positions(outputs) or ["1"]))
        body += limit
    real, const, reads, safe = join_parts(body)
    return Statement(real, const, outputs, reads, safe, ordered)


@st.composite
def set_operation(draw: Any) -> Statement:
    ops = ["union all"] + ["union"] * on("union")
    ops += ["intersect", "except", "intersect all", "except all"] * on("intersect")
    op = draw(st.sampled_from(ops))
    left = draw(row_query(nested=True, keep_bare=op == "union"))
    right = draw(row_query(nested=True, types=[o.type for o in left.outputs], keep_bare=op == "union"))
    outputs = tuple(Output(a.type, a.masked or b.masked) for a, b in zip(left.outputs, right.outputs, strict=True))
    real, const = f"({left.real}) {op} ({right.real})", f"({left.const}) {op} ({right.const})"
    ordered = draw(st.booleans())
    if ordered:
        order = " order by " + ", ".join(order_positions(outputs) or ["1"])
        real, const = real + order, const + order
    return Statement(real, const, outputs, left.reads or right.reads, left.safe or right.safe, ordered)


@st.composite
def derived_query(draw: Any) -> Statement:
    """A query over a FROM-subquery or CTE ``s``: names resolve through it."""
    inner = draw(row_query(nested=True).filter(lambda q: any(o.masked and o.type == "text" for o in q.outputs)))
    cols = [(f"s.v{i + 1}", o) for i, o in enumerate(inner.outputs)]
    sc = Scope(
        text=tuple(r for r, o in cols if o.type == "text" and not o.masked) or ("'t'",),
        masked=tuple(r for r, o in cols if o.type == "text" and o.masked),
        ints=tuple(r for r, o in cols if o.type == "int" and not o.masked) or ("1",),
        nums=(),
        outer="s",
        sub=0,
    )
    targets = draw(st.lists(st.one_of(text_expr(sc, 1), int_expr(sc, 1)), min_size=1, max_size=3))
    outputs = tuple(Output(t.type, t.masked) for t in targets)
    cte = draw(st.booleans())
    body: list[str | X] = [
        X(f"with s as ({inner.real}) select", f"with s as ({inner.const}) select", "text") if cte else "select"
    ]
    for n, t in enumerate(targets):
        body += [t, f"as v{n + 1}" + ("," if n + 1 < len(targets) else "")]
    body.append("from s" if cte else X(f"from ({inner.real}) s", f"from ({inner.const}) s", "text"))
    if draw(st.booleans()):
        body += ["where", draw(bool_expr(cool(sc), 1))]
    ordered = draw(st.booleans())
    if ordered:
        body.append("order by " + ", ".join(order_positions(outputs) or ["1"]))
        body += draw(limit_clause(sc))
    real, const, reads, safe = join_parts(body)
    return Statement(real, const, outputs, reads or inner.reads, safe or inner.safe, ordered)


@st.composite
def statement(draw: Any) -> Statement:
    shapes = [row_query(), row_query(), aggregate_query(), set_operation(), derived_query()]
    if on("distinct"):
        shapes.append(row_query(distinct=True))
    stmt = draw(st.one_of(shapes))
    if on("wrap") and draw(st.integers(0, 7)) == 0:
        stmt = Statement(
            f"select count(*) from ({stmt.real}) x",
            f"select count(*) from ({stmt.const}) x",
            (Output("int", False),),
            stmt.reads,
            stmt.safe,
            False,
        )
    return stmt


# -- running and comparing ------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    rows: list[tuple[Any, ...]] | None = None
    sqlstate: str | None = None
    text: str = ""  # the error's words, all of them

    @property
    def refused(self) -> bool:
        return self.sqlstate == "42501" and "jitgate" in self.text


def run(conn: psycopg.Connection[Any], sql: str, mode: str = "simple") -> Outcome:
    try:
        if mode == "prepared":
            cur = conn.execute(sql, prepare=True)
        elif mode == "binary":
            cur = conn.execute(sql, binary=True)
        else:
            cur = conn.execute(sql)
        return Outcome(rows=cur.fetchall() if cur.description is not None else [])
    except psycopg.Error as exc:
        diag = exc.diag
        words = " ".join(str(x) for x in (exc, diag.message_detail, diag.message_hint, diag.context) if x)
        return Outcome(sqlstate=exc.sqlstate, text=words)


@dataclass(frozen=True)
class Rendering:
    """How the gateway shows a masked derived text value that is NULL, and one that is empty
    (canonical: NULL / EMPTY / MASKED); anything else becomes MASKED."""

    null: str
    empty: str


def canon_text_shown(value: Any) -> str:
    """A masked text output as the gateway showed it; fails on what is no mask."""
    if value is None:
        return "NULL" if on("null") else "MASKED"
    if value == "":
        return "EMPTY" if on("empty") else "MASKED"
    text = str(value)
    assert "*" in text, f"a masked output came back unmasked: {text!r}"
    return "MASKED"


_STARRED = re.compile(r"[0-9*]")


def canon(rows: Sequence[tuple[Any, ...]], outputs: Sequence[Output], shown: Rendering | None) -> list[tuple[str, ...]]:
    """Rows as comparable strings: plain outputs by value; masked ones as the gateway shows
    them (`shown` None: these are the gateway's rows, else raw rows rendered like it)."""
    out = []
    for row in rows:
        assert len(row) == len(outputs), (row, outputs)
        values = []
        for value, o in zip(row, outputs, strict=True):
            if not o.masked:
                # The content detectors may mask digits of a plain value (a Luhn-valid run in
                # an md5): digits and stars compare alike.
                values.append(repr(_STARRED.sub("#", value) if isinstance(value, str) else value))
            elif o.type not in TEXTLIKE:
                assert shown is not None or value is None, f"a masked {o.type} output came back: {value!r}"
                values.append("X")
            elif shown is None:
                values.append(canon_text_shown(value))
            else:
                shown_as = shown.null if value is None else shown.empty if value == "" else "MASKED"
                values.append(shown_as if on("null" if value is None else "empty") else "MASKED")
        out.append(tuple(values))
    return out


def unmasked(rows: list[tuple[str, ...]], outputs: Sequence[Output]) -> list[tuple[str, ...]]:
    return [tuple(v for v, o in zip(row, outputs, strict=True) if not o.masked) for row in rows]


def depends(
    stmt: Statement, shown: Outcome, constant: Outcome, rendering: Rendering, *, raw: bool = False
) -> str | None:
    """Why `shown` (the gateway's answer, or with `raw` PostgreSQL's, masked here) differs from
    the constant variant's answer; None when it does not."""
    if shown.rows is None or constant.rows is None:
        if shown.sqlstate != constant.sqlstate:
            return f"error {shown.sqlstate} with the data, {constant.sqlstate} with constants"
        return None
    got = canon(shown.rows, stmt.outputs, rendering if raw else None)
    want = canon(constant.rows, stmt.outputs, rendering)
    if Counter(got) != Counter(want):
        extra, missing = Counter(got) - Counter(want), Counter(want) - Counter(got)
        return (
            f"rows differ: {len(got)} with the data, {len(want)} with constants; only with the data: "
            f"{list(extra.elements())[:3]}; only with constants: {list(missing.elements())[:3]}"
        )
    if stmt.ordered and unmasked(got, stmt.outputs) != unmasked(want, stmt.outputs):
        return "rows come back in another order"
    return None


def known_error_channel(stmt: Statement, shown: Outcome, constant: Outcome) -> bool:
    """The one difference the README lists as not covered (`test_counterexamples_found_by_the_property`
    keeps it as a strict xfail, "error"): whether computing a masked output divides by zero.
    Only when a division may be in a select list, and division by zero is the only error."""
    text = stmt.real
    divisions = [m.start() for m in re.finditer(re.escape("100 / ("), text)]
    # (a text test: a scalar subquery's FROM before the division hides it; then any division
    # at all with a masked output counts. A division in a WHERE of a statement with no masked
    # output, the control channel the gateway refuses, is still held to the property.)
    in_outputs = any(text.rfind("select ", 0, d) > text.rfind(" from ", 0, d) for d in divisions) or "(select " in text
    return (
        {shown.sqlstate, constant.sqlstate} <= {None, "22012"} and any(o.masked for o in stmt.outputs)
        and bool(divisions) and in_outputs and not text.startswith("select count(*) from (")
    )


def forbidden_values(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(f"select {', '.join(MASKED)} from customers").fetchall()
    out: set[str] = set()
    for row in rows:
        for value in row:
            if not value:
                continue
            out |= {value, value[::-1], value.upper(), value.lower(), hashlib.md5(value.encode()).hexdigest()}
            if any(c.isdigit() for c in value):
                out.add(value.translate(_DIGITS))
    return out


def leaks(text: str, forbidden: set[str]) -> list[str]:
    return [v for v in forbidden if v in text][:3]


@dataclass(repr=False)
class Harness:
    gw: psycopg.Connection[Any]
    up: psycopg.Connection[Any]
    forbidden: set[str]
    rendering: Rendering
    stats: Counter[str]

    def __repr__(self) -> str:  # hypothesis shows the fixture too
        return "Harness()"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def check(self, stmt: Statement, mode: str, *, hypothesis: bool = True) -> None:
        say = (lambda _: None) if not hypothesis else event  # noqa: E731
        if hypothesis:
            note(f"mode: {mode}\nstatement: {stmt.real}\nconstant variant: {stmt.const}")
        answer = run(self.gw, stmt.real, mode)
        words = answer.text + ("" if answer.rows is None else "\n".join(map(repr, answer.rows)))
        # (psycopg quotes the statement's own text around an error's position: not a leak)
        leaked = leaks(words, {v for v in self.forbidden if v not in stmt.real})
        assert not leaked, f"raw masked values came back: {leaked}"
        if answer.refused:
            rule = re.search(r"\(([a-z-]+/[a-z-]+)\)", answer.text)
            self.stats[f"refused {rule.group(1) if rule else '?'}"] += 1
            say("refused")
            return
        if answer.rows is not None:
            canon(answer.rows, stmt.outputs, None)  # every masked output is masked
        if not stmt.reads:
            self.stats["allowed, not compared (reads no masked column)"] += 1
            say("allowed, not compared")
            return
        self.stats[
            "allowed, compared" + (" (safe forms)" if stmt.safe else "") + (" (error)" if answer.rows is None else "")
        ] += 1
        say("allowed, compared")
        constant = run(self.up, stmt.const)
        if answer.rows is not None:
            assert constant.sqlstate != "42601", f"the constant variant does not parse: {constant.text}"
        why = depends(stmt, answer, constant, self.rendering)
        # (Random statements only: the kept counterexamples hold the known channel as an xfail.)
        if why is not None and hypothesis and known_error_channel(stmt, answer, constant):
            self.stats["allowed, known channel (division by zero in a masked output)"] += 1
            say("known channel")
            return
        assert why is None, f"allowed, but the result depends on masked data: {why}"


@pytest.fixture(scope="module")
def harness(gateway: Any, upstream: Any) -> Any:
    with (
        psycopg.connect(gateway.dsn(), autocommit=True) as gw,
        psycopg.connect(upstream.dsn("demo"), autocommit=True) as up,
    ):
        up.execute("set statement_timeout = '20s'")
        # How the gateway shows a masked derived value that is NULL or empty.
        row = gw.execute("select nullif(c.ssn, c.ssn), substr(c.ssn, 100) from customers c where c.id = 1").fetchone()
        assert row is not None
        rendering = Rendering(canon_text_shown(row[0]), canon_text_shown(row[1]))
        stats: Counter[str] = Counter()
        yield Harness(gw, up, forbidden_values(up), rendering, stats)
        print("\ninference property:", dict(stats))


@pytest.mark.timeout(PROPERTY_TIMEOUT)
@PROPERTY
@given(stmt=statement(), mode=st.sampled_from(["simple", "prepared", "binary"]))
def test_allowed_statements_do_not_depend_on_masked_data(harness: Harness, stmt: Statement, mode: str) -> None:
    harness.check(stmt, mode)


# -- the harness checks itself -----------------------------------------------------------

_SSN = masked_col("c.ssn")
_ID = Output("int", False)


def _rows_query(where: X | None, order: str | X = "c.id", limit: str = "", *outputs: X) -> Statement:
    targets: list[str | X] = ["select c.id"]
    for x in outputs:
        targets += [",", x]
    body: list[str | X] = [*targets, "from customers c"]
    if where is not None:
        body += ["where", where]
    body += ["order by", order, limit]
    real, const, reads, safe = join_parts(body)
    return Statement(real, const, (_ID, *(Output(x.type, x.masked) for x in outputs)), True, safe, True)


SELF_CHECKS: list[tuple[str, Callable[[], Statement], bool]] = [
    ("where", lambda: _rows_query(fn("substr({}, 1, 1) = '6'", _SSN, type_="bool")), True),
    ("order by + limit", lambda: _rows_query(None, fn("{}, c.id", _SSN, type_="text"), "limit 5"), True),
    ("order", lambda: _rows_query(None, fn("{}, c.id", _SSN, type_="text")), True),
    ("error", lambda: _rows_query(None, "c.id", "", fn("100 / (ascii({}) - 54)", _SSN, type_="int")), True),
    ("masked outputs only", lambda: _rows_query(None, "c.id", "", fn("reverse({})", _SSN, type_="text")), False),
    ("plain where", lambda: _rows_query(lit("c.id < 10", "bool"), "c.id", "", _SSN), False),
]


@pytest.mark.parametrize(("name", "make", "dependent"), SELF_CHECKS, ids=[c[0] for c in SELF_CHECKS])
def test_the_comparison_detects_dependence(harness: Harness, name: str, make: Any, dependent: bool) -> None:
    """Straight from PostgreSQL (as if the gateway had let them through, outputs masked here):
    statements that filter, order or fail by a masked value differ from their constant
    variant; statements that only show it do not."""
    if SKIP:
        pytest.skip("INFERENCE_PROPERTY_SKIP changes how masked outputs compare")
    stmt = make()
    raw, constant = run(harness.up, stmt.real), run(harness.up, stmt.const)
    assert constant.sqlstate is None, constant.text
    why = depends(stmt, raw, constant, harness.rendering, raw=True)
    assert (why is not None) == dependent, (stmt.real, why)


def test_the_constant_variant_reads_no_masked_column() -> None:
    stmt = _rows_query(fn("substr({}, 1, 1) = '6'", _SSN, type_="bool"))
    assert "c.ssn" in stmt.real and "c.ssn" not in stmt.const and "'000-00-0000'::text" in stmt.const


# -- counterexamples the property found (minimal forms) ------------------------------------------

_COLUMN = re.compile(r"\b(c2?)\.(" + "|".join(MASKED) + r")\b")


def _statement(real: str, outputs: Sequence[Output], ordered: bool = False) -> Statement:
    """`real`, with its constant variant made by replacing each ``c.col`` / ``c2.col``."""
    const = _COLUMN.sub(lambda m: "('" + MASKED[m.group(2)] + "'::text)", real)
    return Statement(real, const, tuple(outputs), True, False, ordered)


_TEXT, _INT = Output("text", True), Output("int", False)
COUNTEREXAMPLES = [
    # DISTINCT is no control position: the row count tells how many distinct values a
    # derived expression has; with UNION ALL of a guess, one bit per statement.
    ("distinct", "select count(*) from (select distinct substr(c.ssn, 1, 1) from customers c) x", [_INT]),
    (
        "distinct-guess",
        "select distinct v from (select substr(c.ssn, 1, 1) v from customers c where c.id = 1 union all select '6') x",
        [_TEXT],
    ),
    # UNION (not ALL) removes duplicates by comparing values: one bit per row per query.
    (
        "union",
        "select c.id, (select count(*) from (select substr(c.ssn, 1, 1) union select '6') u) "
        "from customers c order by c.id",
        [Output("int", False), Output("int", False)],
    ),
    # A masked derived text output showed NULL as NULL and '' as '': one bit per row and column
    # (now every derived text value shows as ********, NULL and '' included).
    (
        "null-output",
        "select c.id, nullif(substr(c.ssn, 1, 1), '6') from customers c order by c.id",
        [Output("int", False), _TEXT],
    ),
    (
        "empty-output",
        "select c.id, replace(substr(c.ssn, 1, 1), '6', '') from customers c order by c.id",
        [Output("int", False), _TEXT],
    ),
    # Whether the statement fails (SQLSTATE 22012 is kept) depends on the value: a channel the
    # README lists as not covered (an error raised while computing a masked output).
    pytest.param(
        "error",
        "select 100 / (ascii(c.ssn) - 54) from customers c where c.id = 1",
        [Output("int", True)],
        id="error",
        marks=pytest.mark.xfail(strict=True, reason="known channel: the SQLSTATE of an error in a masked output"),
    ),
    # A set-returning function (then missing from a list of them; now every function not known
    # to be pure is a control position): the row count follows its argument.
    (
        "unlisted-srf",
        "select count(*) from (select jsonb_path_query_tz(to_jsonb(string_to_array(c.ssn, '6')), "
        "'$[*]') from customers c where c.id = 1) x",
        [_INT],
    ),
]


def test_derived_null_and_empty_values_show_as_masked(harness: Harness) -> None:
    """Whether a derived value is NULL or empty tells nothing: both show as ``********``."""
    if SKIP:
        pytest.skip("INFERENCE_PROPERTY_SKIP changes how masked outputs compare")
    assert harness.rendering == Rendering("MASKED", "MASKED")


@pytest.mark.parametrize(
    ("name", "sql", "outputs"),
    COUNTEREXAMPLES,
    ids=[c[0] if isinstance(c, tuple) else c.values[0] for c in COUNTEREXAMPLES],
)
def test_counterexamples_found_by_the_property(harness: Harness, name: str, sql: str, outputs: list[Output]) -> None:
    """Each goes to review, or (once the gateway hides what it reveals) passes the property."""
    if SKIP:
        pytest.skip("INFERENCE_PROPERTY_SKIP changes how masked outputs compare")
    harness.check(_statement(sql, outputs, ordered="order by" in sql), "simple", hypothesis=False)


@pytest.mark.parametrize(
    "copy",
    [
        "create temp view v_guess as select id, substr(ssn, 1, 1) as ssn from customers",
        "create temp table v_guess as select id, substr(ssn, 1, 1) as ssn from customers",
    ],
    ids=["view", "table"],
)
def test_a_safe_form_over_a_derived_copy_is_no_safe_form(gateway: Any, copy: str) -> None:
    """Found next to the property (it needs a write first): a derived value stored under a
    masked name passes for a stored column, so ``ssn = '6'`` on it counts as a safe form and
    lists every customer whose SSN starts with 6. One of the two must not run."""
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        outcomes = [run(conn, copy)]
        if not outcomes[0].refused:
            outcomes.append(run(conn, "select id from v_guess where ssn = '6' order by id"))
        assert any(o.refused for o in outcomes), [o.rows if o.rows is not None else o.text for o in outcomes]
