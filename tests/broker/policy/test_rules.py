"""Rule matching."""

from __future__ import annotations

import pytest

from broker.policy.facts import StatementFacts, extract
from broker.policy.model import Decision
from broker.policy.rules import Match, NamePattern, Rule, render_reason


def facts(sql: str) -> StatementFacts:
    (statement,) = extract(sql).statements
    return statement


def matches(match: Match, sql: str) -> bool:
    statement = facts(sql)
    return any(match.matches(subject, statement) for subject in statement.subjects)


@pytest.mark.parametrize(
    ("pattern", "name", "result"),
    [
        ("payments", "payments", True),
        ("payments", "billing.payments", True),  # no schema in the pattern: any schema
        ("billing.payments", "billing.payments", True),
        ("billing.payments", "payments", True),  # unqualified: search_path may resolve there
        ("billing.payments", "public.payments", False),
        ("billing.*", "billing.invoices", True),
        ("audit_*", "audit_log", True),
        ("audit_*", "audits", False),
        ("dblink*", "public.dblink_exec", True),
        ("pg_catalog.pg_read_file", "db.pg_catalog.pg_read_file", True),
    ],
)
def test_name_patterns(pattern: str, name: str, result: bool) -> None:
    assert NamePattern(pattern).matches(name) is result


def test_kinds_match_kinds_and_tags() -> None:
    assert matches(Match(kinds=frozenset({"delete"})), "delete from t where id = 1")
    assert matches(Match(kinds=frozenset({"dml"})), "delete from t where id = 1")
    assert matches(Match(kinds=frozenset({"write"})), "drop table t")
    assert not matches(Match(kinds=frozenset({"write"})), "select 1")
    assert matches(Match(kinds=frozenset({"delete"})), "with d as (delete from t) select 1")


def test_tables_and_functions_anywhere_in_the_statement() -> None:
    tables = Match(tables=(NamePattern("payments"),))
    assert matches(tables, "select * from t where id in (select id from payments)")
    assert not matches(tables, "select * from t")
    functions = Match(functions=(NamePattern("pg_sleep"),))
    assert matches(functions, "select * from t order by pg_catalog.pg_sleep(1)")


def test_where_and_settings() -> None:
    missing = Match(where="missing")
    assert matches(missing, "delete from t")
    assert matches(missing, "delete from t where true")
    assert not matches(missing, "delete from t where id = 1")
    assert not matches(missing, "select 1")  # no WHERE state at all
    assert matches(Match(where="present"), "update t set a = 1 where id = 1")
    search_path = Match(kinds=frozenset({"set"}), settings=frozenset({"search_path"}))
    assert matches(search_path, "set search_path = x")
    assert not matches(search_path, "set work_mem = '1MB'")


def test_an_empty_match_matches_everything() -> None:
    assert matches(Match(), "select 1")


def test_reason_fields() -> None:
    statement = facts("delete from orders where 1 = 1 and pg_sleep(1) is not null or true")
    rule = Rule(
        "r",
        Match(functions=(NamePattern("pg_sleep"),)),
        Decision.REVIEW,
        "{kind} {where} on {tables} calling {functions} ({setting}, {language}, {other})",
    )
    text = render_reason(rule, statement.subjects[0], statement)
    assert text == (
        "DELETE with a WHERE clause that is always true on orders calling pg_sleep "
        "((computed name), (none given), {other})"
    )
