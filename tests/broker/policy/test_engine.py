"""PolicyEngine: scopes and the two-level cache, including the property that matters most:
a cached verdict is always the verdict a fresh classification would give."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.policy import (
    Decision,
    PolicyConfigError,
    PolicyEngine,
    Verdict,
    extract,
    judge,
    parse_policy,
    shape,
)
from broker.policy.judge import Policy
from broker.policy.presets import PRESETS


def test_pgbench_statements_share_one_shape_entry() -> None:
    engine = PolicyEngine.preset()
    scope = engine.scope(None, ())
    for aid in (48213, 17, 999_999):
        verdict = engine.classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};")
        assert verdict.decision is Decision.ALLOW
    assert len(scope.shapes) == 1
    assert len(scope.exact) == 1  # only the text that was parsed


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("delete from t where 1 = 1", "review"), ("delete from t where 1 = 2", "allow")),
        (("delete from t where 'a' = 'a'", "review"), ("delete from t where 'a' = 'b'", "allow")),
        (
            ("select set_config('role', 'x', false)", "block"),
            ("select set_config('work_mem', 'x', false)", "allow"),
        ),
        (("set client_encoding = 'latin1'", "block"), ("set client_encoding = 'utf8'", "allow")),
        (("set backslash_quote = 'on'", "block"), ("set backslash_quote = 'safe_encoding'", "allow")),
        (
            ("explain (analyze 'on') delete from t", "review"),
            ("explain (analyze 'off') delete from t", "allow"),
        ),
        (
            ("create function f() returns int language 'c' as 'x'", "block"),
            ("create function f() returns int language 'sql' as 'select 1'", "review"),
        ),
        (
            ("do $$ begin perform pg_read_file('x'); end $$", "block"),
            ("do $$ begin perform now(); end $$", "review"),
        ),
        (
            ("select query_to_xml('select pg_ls_dir(''.'')', true, false, '')", "block"),
            ("select query_to_xml('select 1', true, false, '')", "review"),
        ),
    ],
)
def test_literal_sensitive_verdicts_are_not_shared(
    first: tuple[str, str], second: tuple[str, str]
) -> None:
    assert shape(first[0]) == shape(second[0])  # the point: same shape, different verdicts
    for order in ((first, second), (second, first)):
        engine = PolicyEngine.preset()
        for sql, decision in order:
            assert engine.classify(sql).decision.value == decision, sql
            assert engine.classify(sql).decision.value == decision, sql  # and from the cache


def test_copy_info_is_never_shared_across_options() -> None:
    engine = PolicyEngine.preset()
    a = engine.classify("copy t to stdout with (delimiter ',')")
    b = engine.classify("copy t to stdout with (delimiter ';')")
    assert a.copy is not None and b.copy is not None
    assert (a.copy.delimiter, b.copy.delimiter) == (",", ";")


def test_caches_are_bounded() -> None:
    engine = PolicyEngine.preset(cache_size=3)
    scope = engine.scope(None, ())
    for table in "abcdef":
        engine.classify(f"select * from {table}")
        engine.classify(f"delete from {table} where 1 = 1")
    assert (len(scope.shapes), len(scope.exact)) == (3, 3)
    engine.classify("select * from f")  # the most recent entries survive
    assert len(scope.shapes) == 3


def test_huge_statements_are_not_cached() -> None:
    engine = PolicyEngine.preset()
    scope = engine.scope(None, ())
    sql = "select 1 " + " " * 70_000
    assert engine.classify(sql).decision is Decision.ALLOW
    assert (len(scope.shapes), len(scope.exact)) == (0, 0)


def test_caching_can_be_disabled() -> None:
    engine = PolicyEngine.preset(cache_size=0)
    engine.classify("select 1")
    assert len(engine.scope(None, ()).shapes) == 0


def test_scopes_are_shared_and_ignore_unknown_groups() -> None:
    engine = PolicyEngine(parse_policy("groups: {dba: {preset: read-only}}"))
    assert engine.scope("demo", ["ai-agents", "x"]) is engine.scope(None, ())
    dba = engine.scope("demo", ["ai-agents", "dba"])
    assert dba is engine.scope("other", ["dba"])
    assert dba is not engine.scope(None, ())
    assert engine.classify("insert into t values (1)", groups=["dba"]).decision is Decision.REVIEW


def test_bind_gives_the_proxy_a_callable() -> None:
    engine = PolicyEngine(parse_policy("resources: {prod: {preset: read-only}}"))
    prod = engine.bind("prod")
    assert prod("insert into t values (1)", ()).decision is Decision.REVIEW
    assert engine.bind("dev")("insert into t values (1)", ()).decision is Decision.ALLOW


def test_construction(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match="unknown preset 'strict'"):
        PolicyEngine.preset("strict")
    assert PolicyEngine.load("observe").classify("drop table t").decision is Decision.ALLOW
    path = tmp_path / "p.yaml"
    path.write_text("preset: read-only\n")
    assert PolicyEngine.load(str(path)).classify("create table t (a int)").decision is (
        Decision.REVIEW
    )
    with pytest.raises(PolicyConfigError):
        PolicyEngine.load(str(tmp_path / "missing.yaml"))


# -- the cache never changes an answer ------------------------------------------------------

_VALUES = st.sampled_from(
    [
        "role", "ROLE ", " Role", "session_authorization", "work_mem", "search_path",
        "standard_conforming_strings", "client_encoding", "backslash_quote", "safe_encoding",
        "off", "on", "true", "false", "0",
        "1", "t", "f", "yes", "maybe", "utf8", "UTF-8", "latin1", "sql", "plpgsql", "c",
        "plpython3u", "csv", "text", "binary", ";", "'", "\\", "$$", "", "a b",
        "select 1", "select pg_read_file('x')", "delete from t", "begin perform now(); end",
        "begin perform lo_import('x'); end", "1=1", "/tmp/x",
    ]
) | st.text(alphabet="ab'$\\; 01", max_size=6)  # fmt: skip


@st.composite
def _string_literal(draw: st.DrawFn) -> str:
    value = draw(_VALUES)
    form = draw(st.sampled_from(["plain", "escape", "dollar", "tagged"]))
    if form == "escape":
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if form == "dollar" and "$" not in value:
        return f"$${value}$$"
    if form == "tagged" and "$" not in value:
        return f"$q${value}$q$"
    return "'" + value.replace("'", "''") + "'"


_NUMBERS = st.sampled_from(["0", "1", "2", "17", "48213", "1.0", "0.5", ".5", "1e3", "0x1", "1_0"])

_TEMPLATES = [
    "select * from t where id = {n}",
    "delete from t where {n} = {n}",
    "delete from t where {s} = {s}",
    "delete from t where {s}",
    "update t set a = {n} where {n} in ({n}, {n})",
    "update t set a = {s} where b = {s} or {n} > {n}",
    "select set_config({s}, {s}, false)",
    "set standard_conforming_strings = {s}",
    "set client_encoding = {s}",
    "set backslash_quote = {s}",
    "set role {s}",
    "explain (analyze {s}) delete from t",
    "explain (analyze {n}) delete from t",
    "create function f() returns int language {s} as {s}",
    "do {s}",
    "do language {s} {s}",
    "copy t to stdout with (format {s}, delimiter {s}, null {s})",
    "copy t to {s}",
    "copy ( select {s} ) to stdout",
    "select query_to_xml({s}, true, false, {s})",
    "select {s}, {n} from t where a = {s} and b > {n}",
    "prepare p as delete from t where {n} = {n}",
    "select * from t limit {n}; delete from t where id = {n}",
]


@st.composite
def _statement(draw: st.DrawFn) -> str:
    template = draw(st.sampled_from(_TEMPLATES))
    if draw(st.booleans()):
        template = template.upper()
    parts = template.split(" ")
    out = []
    for word in parts:
        while "{s}" in word:
            word = word.replace("{s}", draw(_string_literal()), 1)
        while "{n}" in word:
            word = word.replace("{n}", draw(_NUMBERS), 1)
        out.append(word)
    separators = st.sampled_from([" ", " ", " ", "  ", "\n", " /* c */ ", " -- c\n", "\t"])
    sql = out[0]
    for word in out[1:]:
        sql += draw(separators) + word
    return sql


_SHARED = PolicyEngine.preset("agent-safe", cache_size=64)  # small: evictions happen too
_READ_ONLY = PolicyEngine.preset("read-only")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_statement(), min_size=1, max_size=6))
def test_cached_verdicts_equal_fresh_ones(statements: list[str]) -> None:
    for engine, preset in ((_SHARED, "agent-safe"), (_READ_ONLY, "read-only")):
        policy = Policy(PRESETS[preset])
        for sql in statements:
            fresh = judge(policy, extract(sql))
            cached = engine.classify(sql)
            assert cached == fresh, sql
            assert engine.classify(sql) == fresh, sql


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_statement(), _statement())
def test_same_shape_and_literal_free_means_same_verdict(a: str, b: str) -> None:
    if shape(a) is None or shape(a) != shape(b):
        return
    facts_a, facts_b = extract(a), extract(b)
    if facts_a.literal_sensitive or facts_b.literal_sensitive:
        return
    policy = Policy(PRESETS["agent-safe"])
    assert judge(policy, facts_a) == judge(policy, facts_b), (a, b)


def test_verdicts_are_immutable_and_hashable() -> None:
    verdict = PolicyEngine.preset().classify("select 1")
    assert isinstance(verdict, Verdict)
    assert hash(verdict) == hash(PolicyEngine.preset().classify("select 1"))
