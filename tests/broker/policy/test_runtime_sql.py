"""Code the gateway cannot read is blocked: SQL built at run time inside DO blocks and function
bodies, and bodies (or executed strings) that do not parse. A red team approved
``do $$ ... execute r; $$`` where ``r`` held ``ALTER ROLE demo_rw PASSWORD ...``, read from a
table, and logged in upstream with the password it had set."""

from __future__ import annotations

import pytest

from broker.policy import Decision, PolicyEngine, Verdict, extract, judge
from broker.policy.judge import Policy
from broker.policy.presets import PRESETS
from broker.policy.rules import Match, Rule

ALLOW, REVIEW, BLOCK = Decision.ALLOW, Decision.REVIEW, Decision.BLOCK
ENGINE = PolicyEngine.preset("agent-safe")


def classify(sql: str) -> Verdict:
    return ENGINE.classify(sql)


REPRO = "do $$declare r text; begin select v into r from cfg where k = 'a'; execute r; end$$"

RUNTIME_SQL = [
    REPRO,
    "do $$declare q text := 'select 1'; begin execute q; end$$",
    "do $$declare n text := 'demo_rw'; begin execute format('ALTER ROLE %I PASSWORD %L', n, 'x'); end$$",
    # format() and || of constants are not evaluated: write the constant itself
    "do $$begin execute format('select %s', 1); end$$",
    "do $$begin execute 'select ' || '1'; end$$",
    "do $$declare c refcursor; q text; begin open c for execute q; end$$",
    "do $$declare r record; q text; begin for r in execute q loop null; end loop; end$$",
    "create function f(q text) returns setof int language plpgsql as $$begin return query execute q; end$$",
    "create function f(q text) returns void language plpgsql as $$begin execute q using 1; end$$",
    "create or replace function pg_temp.f(q text) returns void language plpgsql as $$begin execute q; end$$",
    "create procedure p(q text) language plpgsql as $$begin execute 'select ' || q; end$$",
    "create function f() returns trigger language plpgsql as $$begin execute tg_argv[0]; return new; end$$",
    # a string-running function given a query that is not a literal, in a body or not
    "do $$declare q text; begin perform query_to_xml(q, true, true, ''); end$$",
    "select query_to_xml(v, true, true, '') from cfg",
    "select query_to_xml(query => v, nulls => true, tableforest => false, targetns => '') from cfg",
    "select * from crosstab((select v from cfg limit 1)) as t(a text, b int)",
    "select ts_stat(v) from cfg",
    "select ts_rewrite('a'::tsquery, v) from cfg",
    # was review, with the query unread: a way around the server-functions guard
    "select query_to_xml('select pg_read' || '_file(''/etc/passwd'')', true, true, '')",
    # dynamic SQL one literal deeper
    "do $f$ begin execute 'do $$declare q text; begin execute q; end$$'; end $f$",
    "create function f() returns void language sql as $f$ do $$declare q text; begin execute q; end$$ $f$",
]


@pytest.mark.parametrize("sql", RUNTIME_SQL)
def test_sql_built_at_run_time_is_blocked(sql: str) -> None:
    verdict = classify(sql)
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/runtime-sql"), verdict
    assert "runs SQL built at run time, which the gateway cannot check" in verdict.reason


UNREADABLE = [
    "do $$ begin garbage; end $$",
    "create function f() returns int language plpgsql as $$ begin retrun 1; end $$",
    "create function f() returns int language sql as 'selec 1'",
    "do $$begin execute 'selec 1'; end$$",
]


@pytest.mark.parametrize("sql", UNREADABLE)
def test_code_that_does_not_parse_is_blocked(sql: str) -> None:
    verdict = classify(sql)
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/unreadable-code"), verdict


CONSTANT_EXECUTE = [
    ("do $$begin execute 'ALTER ROLE demo_rw PASSWORD ''x'''; end$$", "roles"),
    ("do $$begin execute $q$set role postgres$q$; end$$", "set-role"),
    ("do $$begin execute E'select set_config(\\'role\\', \\'postgres\\', false)'; end$$", "set-role"),
    ("do $$declare r record; begin for r in execute 'select pg_ls_dir(''.'')' loop end loop; end$$",
     "server-functions"),
    ("create function f() returns setof text language plpgsql as "
     "$$begin return query execute 'select pg_read_file(''x'')'; end$$", "server-functions"),
    ("do $$declare c refcursor; begin open c for execute 'alter system set fsync = off'; end$$",
     "alter-system"),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "rule"), CONSTANT_EXECUTE)
def test_a_constant_execute_is_judged_as_its_statement(sql: str, rule: str) -> None:
    verdict = classify(sql)
    assert (verdict.decision, verdict.rule) == (BLOCK, f"agent-safe/{rule}"), verdict


def test_a_harmless_constant_execute_is_reviewed_as_a_do_block() -> None:
    verdict = classify("do $$begin execute 'delete from orders where id = 1'; end$$")
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/do"), verdict
    assert verdict.reason == "a DO block runs procedural code: DELETE FROM orders"


def test_the_review_card_lists_what_a_do_block_runs() -> None:
    verdict = classify(
        "do $$ begin update orders set status = 'x' where id = 1; "
        "insert into audit values (1); perform count(*) from customers; end $$"
    )
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/do"), verdict
    assert verdict.reason == (
        "a DO block runs procedural code: UPDATE orders, INSERT INTO audit, SELECT FROM customers"
    )


def test_a_do_block_without_sql_says_so() -> None:
    verdict = classify("do $$ declare x int := 1; begin if x > 0 then null; end if; end $$")
    assert verdict.reason == "a DO block runs procedural code: no SQL statement"


def test_function_calls_are_listed() -> None:
    verdict = classify("do $$ declare x int := 1; begin perform pg_temp.f(x); end $$")
    assert verdict.reason == "a DO block runs procedural code: SELECT pg_temp.f()"


def test_a_long_list_is_cut_short() -> None:
    body = " ".join(f"delete from t{i} where id = 1;" for i in range(20))
    verdict = classify(f"do $$ begin {body} end $$")
    assert verdict.reason.endswith("DELETE FROM t5 and 14 more"), verdict.reason


def test_static_sql_in_a_function_is_still_reviewed() -> None:
    verdict = classify(
        "create function f() returns void language plpgsql as "
        "$$ begin update orders set status = 'x' where id = 1; end $$"
    )
    assert verdict.decision is REVIEW, verdict


def test_an_assignment_target_is_read_too() -> None:
    # a[<subscript>] := ...: the subscript runs, and is not part of the expression.
    verdict = classify("do $$declare a int[]; begin a[length(pg_read_file('x'))] := 1; end$$")
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/server-functions"), verdict


def test_untrusted_languages_stay_blocked() -> None:
    verdict = classify("create function f() returns void language plpython3u as $$plpy.execute(q)$$")
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/untrusted-language")
    verdict = classify("do language plperl $$ spi_exec_query($q) $$")
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/untrusted-language")


def test_literal_queries_for_string_running_functions_are_still_read() -> None:
    verdict = classify("select query_to_xml('select 1', true, true, '')")
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/dynamic-sql"), verdict
    # connectby names a table and columns, not SQL: only their being literals matters
    verdict = classify("select * from connectby('t', 'id', 'parent', '1', 0) as t(id int, p int, l int)")
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/dynamic-sql"), verdict
    # arguments that are not SQL may be anything
    verdict = classify("select ts_rewrite(q, 'a'::tsquery, 'b'::tsquery) from t")
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/dynamic-sql"), verdict
    verdict = classify("select query_to_xml('select 1', n, f, ns) from t")
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/dynamic-sql"), verdict


def test_calling_a_function_is_not_reviewed_again() -> None:
    # What it runs was judged when it was created through the gateway (see the README).
    assert classify("select pg_temp.f()").decision is ALLOW


def test_an_operator_can_override_the_guard() -> None:
    # ... and the card then says what will run: the expression, not a guess.
    rule = Rule(
        "ops/trusted-dynamic", Match(kinds=frozenset({"runtime_sql"})), REVIEW, "runs {body}",
        override=True,
    )
    verdict = judge(Policy(PRESETS["agent-safe"], (rule,)), extract(REPRO))
    assert (verdict.decision, verdict.rule) == (REVIEW, "ops/trusted-dynamic")
    assert verdict.reason == "runs SELECT FROM cfg, EXECUTE r"


def test_facts_tag_the_code_itself() -> None:
    (statement,) = extract(REPRO).statements
    assert "runtime_sql" in statement.subjects[0].tags
    assert statement.subjects[0].kind == "do"
    assert "cfg" in statement.tables
