"""What the classifier reads from a parse tree."""

from __future__ import annotations

import pytest

from broker.policy.facts import LEXER_SETTINGS, PINNED_LEXER_VALUES, StatementFacts, extract, is_pinned_value
from broker.policy.model import CopyInfo


def one(sql: str) -> StatementFacts:
    facts = extract(sql)
    assert facts.error is None, facts.error
    (statement,) = facts.statements
    return statement


def kinds(sql: str) -> list[str]:
    return [s.kind for s in one(sql).subjects]


def test_parse_error_is_reported_not_raised() -> None:
    facts = extract("selec 1")
    assert facts.statements == []
    assert facts.error is not None and "syntax error" in facts.error


def test_statement_lists_and_empty_strings() -> None:
    assert [s.kind for s in extract("begin; select 1; commit").statements] == [
        "transaction",
        "select",
        "transaction",
    ]
    assert extract("").statements == []
    assert extract(" ; -- nothing").statements == []


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select 1", ["select"]),
        ("with d as (delete from t returning *) select * from d", ["select", "delete"]),
        (
            "with a as (with b as (update t set x = 1 returning *) select * from b) select 1",
            ["select", "update"],
        ),
        ("insert into t select * from u", ["insert"]),
        ("explain delete from t", ["explain"]),
        ("explain analyze delete from t", ["explain", "delete"]),
        ("explain (analyze 0) delete from t", ["explain"]),
        ("explain (analyze 'on') delete from t", ["explain", "delete"]),
        ("prepare p as update t set a = 1", ["prepare", "update"]),
        ("copy (delete from t returning *) to stdout", ["copy_to", "delete"]),
        ("select set_config('work_mem', '1MB', false)", ["select", "set"]),
        (
            "select query_to_xml('delete from t', true, false, '')",
            ["select", "dynamic_sql", "delete"],
        ),
        ("drop table t", ["drop_table"]),
        ("alter table t add column a int", ["alter_table"]),
        ("alter index i rename to j", ["alter_index"]),
        ("create materialized view m as select 1", ["create_materialized_view"]),
        ("select 1 into t", ["select_into"]),
        ("create user u", ["create_role"]),
        ("grant r to u", ["grant_role"]),
        ("reset all", ["reset"]),
        ("move c", ["move"]),
        ("vacuum t", ["vacuum"]),
        ("create aggregate a (sfunc = f, stype = int)", ["create_aggregate"]),
    ],
)
def test_subjects(sql: str, expected: list[str]) -> None:
    assert kinds(sql) == expected


@pytest.mark.parametrize(
    ("sql", "where"),
    [
        ("delete from t", "missing"),
        ("delete from t where 1 = 1", "always_true"),
        ("delete from t where id = 1", "present"),
        ("update t set a = 1 where a = a", "always_true"),
        ("update t set a = 1 where a = b", "present"),
    ],
)
def test_where_state(sql: str, where: str) -> None:
    assert one(sql).subjects[0].where == where


def test_tables_exclude_cte_names_and_keep_schemas() -> None:
    facts = one("with d as (delete from s.orders returning *) select * from d join c on true")
    assert set(facts.tables) == {"s.orders", "c"}
    assert "d" not in facts.tables
    assert set(one("drop table a, s.b").tables) == {"a", "s.b"}
    assert set(one("select * into n from o").tables) == {"n", "o"}


def test_functions_as_written() -> None:
    facts = one("select pg_catalog.lower(x), upper(y) from t order by abs(z)")
    assert set(facts.functions) == {"pg_catalog.lower", "upper", "abs"}
    assert "p" in one("call p(1)").functions


def test_settings() -> None:
    (subject,) = one("set role postgres").subjects
    assert (subject.kind, subject.setting) == ("set", "role")
    (subject,) = one("reset role").subjects
    assert (subject.kind, subject.setting) == ("reset", "role")
    subject = one("select set_config(' ROLE ', 'x', true)").subjects[1]
    assert subject.setting == "role"
    subject = one("select set_config(current_user, 'x', true)").subjects[1]
    assert "dynamic_setting" in subject.tags
    subject = one("set standard_conforming_strings = off").subjects[0]
    assert "unsafe_lexer_setting" in subject.tags
    subject = one("set standard_conforming_strings = on").subjects[0]
    assert "unsafe_lexer_setting" not in subject.tags


def test_pinned_lexer_values_are_the_only_safe_ones() -> None:
    assert set(PINNED_LEXER_VALUES) == LEXER_SETTINGS
    for setting, value in PINNED_LEXER_VALUES.items():
        assert is_pinned_value(setting, value)


@pytest.mark.parametrize(
    ("setting", "value", "pinned"),
    [
        ("client_encoding", "UTF8", True),
        ("client_encoding", "'utf-8'", True),  # PostgreSQL drops what is not a letter or digit
        ("client_encoding", "Unicode", True),
        ("client_encoding", "SQL_ASCII", False),
        ("client_encoding", "LATIN9", False),
        ("client_encoding", None, False),
        ("standard_conforming_strings", "on", True),
        ("standard_conforming_strings", True, True),
        ("standard_conforming_strings", 1, True),
        ("standard_conforming_strings", "y", True),
        ("standard_conforming_strings", "of", False),
        ("standard_conforming_strings", 0, False),
        ("backslash_quote", "safe_encoding", True),
        ("backslash_quote", "SAFE_ENCODING", True),
        ("backslash_quote", "on", False),
        ("backslash_quote", "off", False),
        ("backslash_quote", True, False),
        ("escape_string_warning", "off", True),  # not a lexer setting
    ],
)
def test_is_pinned_value(setting: str, value: object, pinned: bool) -> None:
    assert is_pinned_value(setting, value) is pinned


@pytest.mark.parametrize(
    "sql",
    [
        "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
        "update pg_catalog.pg_settings set setting = 'x'",
        "create view v as select * from pg_settings",
        "create rule r as on update to t do instead update pg_settings set setting = 'x'",
    ],
)
def test_settings_view_writes_are_settings_chosen_at_run_time(sql: str) -> None:
    subjects = [s for s in one(sql).subjects if s.kind == "set"]
    assert subjects and all("dynamic_setting" in s.tags and s.setting is None for s in subjects)


@pytest.mark.parametrize(
    "sql",
    [
        "select * from pg_settings",
        "update app.pg_settings set v = 1 where id = 1",
        "explain update pg_settings set setting = 'x'",  # planned, not run
        "create view v as select * from t",
    ],
)
def test_reading_pg_settings_changes_nothing(sql: str) -> None:
    assert not any("dynamic_setting" in s.tags for s in one(sql).subjects)


def test_languages() -> None:
    (subject,) = one("create function f() returns int language PLPGSQL as 'begin end'").subjects
    assert (subject.language, "untrusted_language" in subject.tags) == ("plpgsql", False)
    (subject,) = one("do language plperlu 'x'").subjects
    assert (subject.language, "untrusted_language" in subject.tags) == ("plperlu", True)


def test_prepare_execute_deallocate() -> None:
    facts = one("prepare p (int) as delete from t where id = $1")
    assert facts.prepare is not None
    name, inner = facts.prepare
    assert (name, inner.kind, inner.subjects[0].where) == ("p", "delete", "present")
    assert one("execute p(1)").executes == ["p"]
    assert one("explain analyze execute p").executes == ["p"]
    assert one("explain execute p").executes == []  # planned, not run
    assert one("create table x as execute p").executes == ["p"]
    assert one("deallocate p").deallocates == ["p"]
    assert one("deallocate all").deallocates == [None]
    assert one("discard all").deallocates == [None]
    assert one("discard plans").deallocates == []


@pytest.mark.parametrize(
    ("sql", "sensitive"),
    [
        ("select * from t where id = 1", False),
        ("select 'a', 1.5 from t", False),
        ("update t set a = 'x' where id = 2", False),
        ("set work_mem = '1MB'", False),
        ("delete from t where 1 = 1", True),
        ("delete from t where 1 = 2", True),
        ("select set_config('work_mem', '1MB', false)", True),
        ("set client_encoding = 'utf8'", True),
        ("copy t to stdout with (delimiter ';')", True),
        ("explain (analyze off) delete from t", True),
        ("create function f() returns int language sql as 'select 1'", True),
        ("select query_to_xml('select 1', true, false, '')", True),
        ("selec 1", True),  # parse errors can depend on a literal's contents
    ],
)
def test_literal_sensitivity(sql: str, sensitive: bool) -> None:
    assert extract(sql).literal_sensitive is sensitive


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "copy t to stdout",
            CopyInfo("to_stdout", "text", "\t", "\\N", '"', "\\", False, "t", (), None),
        ),
        (
            "copy t (a, b) from stdin with (format csv, header)",
            CopyInfo("from_stdin", "csv", ",", "", '"', '"', True, "t", ("a", "b"), None),
        ),
        (
            "copy \"Foo\".bar to stdout with csv header delimiter ';' quote '''' escape '\\'",
            CopyInfo("to_stdout", "csv", ";", "", "'", "\\", True, '"Foo".bar', (), None),
        ),
        (
            "copy t to stdout (format text, delimiter E'|', null 'NULL', header match)",
            CopyInfo("to_stdout", "text", "|", "NULL", '"', "\\", True, "t", (), None),
        ),
        (
            "copy t to stdout binary",
            CopyInfo("to_stdout", "binary", "\t", "\\N", '"', "\\", False, "t", (), None),
        ),
        (
            "copy (select a, b from t where c = 'x') to stdout with (format 'csv')",
            CopyInfo(
                "to_stdout",
                "csv",
                ",",
                "",
                '"',
                '"',
                False,
                None,
                (),
                "SELECT a, b FROM t WHERE c = 'x'",
            ),
        ),
        (
            "copy t to '/tmp/x'",
            CopyInfo("file", "text", "\t", "\\N", '"', "\\", False, "t", (), None),
        ),
        (
            "copy t from program 'id'",
            CopyInfo("program", "text", "\t", "\\N", '"', "\\", False, "t", (), None),
        ),
    ],
)
def test_copy_info(sql: str, expected: CopyInfo) -> None:
    assert one(sql).copy == expected


def test_copy_query_in_a_statement_list() -> None:
    facts = extract("select 1; copy (select 'é' as x) to stdout; select 2")
    copy = facts.statements[1].copy
    assert copy is not None and copy.query == "SELECT 'é' AS x"


def test_function_bodies_are_read() -> None:
    plpgsql = one(
        "create function f(a int) returns int language plpgsql as $$ "
        "begin a := 1; delete from t; return pg_backend_pid(); end $$"
    )
    assert "pg_backend_pid" in plpgsql.functions
    assert "delete" in [s.kind for s in plpgsql.subjects]
    sql = one("create function f() returns setof t language sql as 'select * from t'")
    assert "t" in sql.tables


def test_deep_expressions_are_classified() -> None:
    deep = "select " + " || ".join(["'a'"] * 600)
    facts = extract(deep)
    assert facts.error is None and facts.statements[0].kind == "select"
