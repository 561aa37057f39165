"""The built-in presets, statement by statement (design.md, "Default policy")."""

from __future__ import annotations

import pytest

from broker.policy import Decision, PolicyEngine, Verdict

ALLOW, REVIEW, BLOCK = Decision.ALLOW, Decision.REVIEW, Decision.BLOCK

_ENGINES: dict[str, PolicyEngine] = {}


def classify(sql: str, preset: str = "agent-safe") -> Verdict:
    engine = _ENGINES.get(preset)
    if engine is None:
        engine = _ENGINES[preset] = PolicyEngine.preset(preset)
    return engine.classify(sql)


# design.md's table: what `jitgate policy check --sql S --json` must answer.
DESIGN_EXAMPLES = [
    ("select * from customers where id = 1", ALLOW),
    ("begin; update orders set status='x' where id=4; commit", ALLOW),
    ("delete from customers", REVIEW),
    ("DELETE FROM customers WHERE 1=1", REVIEW),
    ("with d as (delete from orders returning *) select count(*) from d", REVIEW),
    ("drop table customers", REVIEW),
    ("select 1; drop table customers", REVIEW),
    ("/* harmless */ ALTER SYSTEM SET fsync = off", BLOCK),
    ("select pg_catalog.pg_read_file('/etc/passwd')", BLOCK),
    ("copy customers to program 'curl ...'", BLOCK),
    ("SET ROLE postgres", BLOCK),
    ("selec * form customers", BLOCK),
]


@pytest.mark.parametrize(("sql", "decision"), DESIGN_EXAMPLES)
def test_design_examples(sql: str, decision: Decision) -> None:
    assert classify(sql).decision is decision


def test_unparseable_names_the_parser_error() -> None:
    verdict = classify("selec * form customers")
    assert verdict.rule == "agent-safe/unparseable"
    assert 'syntax error at or near "selec"' in verdict.reason


ALLOWED = [
    "select * from t",
    "SELECT a, count(*) FROM t GROUP BY a HAVING count(*) > 1 ORDER BY 2 LIMIT 5",
    "values (1), (2)",
    "table t",
    "with x as (select 1) select * from x",
    "select * from t for update",
    "select nextval('s')",
    "show work_mem",
    "show all",
    "explain select * from t",
    "explain delete from t",  # not run: EXPLAIN without ANALYZE only plans
    "explain (format json) update t set a = 1",
    "explain (analyze off) delete from t",
    "explain analyze select * from t",
    "begin",
    "start transaction isolation level serializable",
    "commit",
    "rollback",
    "end",
    "abort",
    "savepoint s",
    "release savepoint s",
    "rollback to savepoint s",
    "set work_mem = '64MB'",
    "set local statement_timeout = 1000",
    "set search_path to public, app",
    "set time zone 'UTC'",
    "set transaction read only",
    "set constraints all deferred",
    "reset work_mem",
    "reset all",
    "reset role",
    "reset session authorization",
    "set client_encoding = 'UTF8'",
    "set names 'utf-8'",
    "set standard_conforming_strings = on",
    # The pinned lexer settings: their pinned value is a no-op, and RESET / DEFAULT return
    # to it (the gateway sends it at start-up, which outranks database and role defaults).
    "set client_encoding to default",
    "set names default",
    "reset client_encoding",
    "set local client_encoding = 'unicode'",
    "set client_encoding from current",
    "reset standard_conforming_strings",
    "set standard_conforming_strings to default",
    "set session standard_conforming_strings = true",
    "set backslash_quote = safe_encoding",
    "set backslash_quote = 'SAFE_ENCODING'",
    "reset backslash_quote",
    "select set_config('client_encoding', 'utf-8', true)",
    "select pg_catalog.set_config('standard_conforming_strings', 'on', false)",
    "select set_config('backslash_quote', 'safe_encoding', false)",
    # Only a WARNING, and only while standard_conforming_strings is off.
    "set escape_string_warning = off",
    "select * from pg_settings where name = 'client_encoding'",
    "update app.pg_settings set v = 1 where id = 2",  # a table of the same name elsewhere
    "select set_config('work_mem', '1MB', false)",
    "select current_setting('role')",
    "discard all",
    "declare c cursor for select * from t",
    "fetch 10 from c",
    "move next in c",
    "close c",
    "close all",
    "prepare p as select * from t where id = $1",
    "execute p(1)",
    "deallocate p",
    "deallocate all",
    "insert into t values (1)",
    "insert into t select * from u",
    "insert into t (id, a) values (1, 2) on conflict (id) do update set a = excluded.a",
    "update t set a = 1 where id = 2",
    "delete from t where id = 3",
    "delete from t where id in (select id from u)",
    "delete from t where id = 1 and 1 = 1",
    "delete from t where 1 = 0",
    "update t set a = 1 where current of c",
    "create table t (a int primary key, b text default 'x')",
    "create temp table t (a int)",
    "create index on t (a)",
    "create unique index concurrently i on t (a)",
    "create view v as select 1",
    "create or replace view v as select * from t",
    "select * into new_t from t",
    "create table x as select * from t",
    "create materialized view m as select 1",
    "listen ch",
    "unlisten *",
    # NOTIFY / pg_notify: only on listed channels (test_session_hygiene.py)
    "copy t to stdout",
    "copy (select * from t) to stdout with (format csv)",
    "select '; select pg_read_file(''x'')'",  # a string, not a call
    "select $$; select pg_read_file('x')$$",
    "select * from t where id = 1 /* ; select pg_read_file('x') */",
    "select 1 -- ; drop table t",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed(sql: str) -> None:
    verdict = classify(sql)
    assert verdict.decision is ALLOW, verdict


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- only a comment", "/* */ ;"])
def test_empty_is_allowed(sql: str) -> None:
    verdict = classify(sql)
    assert (verdict.decision, verdict.rule, verdict.statement_count) == (ALLOW, "empty", 0)


REVIEWED = [
    ("delete from t", "write-without-where"),
    ("update t set a = 1", "write-without-where"),
    ("update t set a = 1 from u", "write-without-where"),
    ("DELETE FROM t WHERE 1=1", "write-without-where"),
    ("delete from t where true", "write-without-where"),
    ("delete from t where 'a' = 'a'", "write-without-where"),
    ("delete from t where 1 = 1 or id = 5", "write-without-where"),
    ("delete from t where not false", "write-without-where"),
    ("delete from t where id = id", "write-without-where"),
    ("delete from t where 't'", "write-without-where"),
    ("delete from t where 'yes'::boolean", "write-without-where"),
    ("delete from t where 1 in (1, 2)", "write-without-where"),
    ("delete from t where exists (select 1)", "write-without-where"),
    ("delete from t where 2 > 1", "write-without-where"),
    ("delete from t where 1 = '1'", "write-without-where"),
    ("delete from t where 1 + 1 = 2", "write-without-where"),
    ("delete from t where null is null", "write-without-where"),
    ("delete from t where (1 = 1) is true", "write-without-where"),
    ("delete from t where 1 is distinct from 2", "write-without-where"),
    ("with d as (delete from orders returning *) select count(*) from d", "write-without-where"),
    (
        "with u as (update t set a = 1 returning *) insert into log select * from u",
        "write-without-where",
    ),
    ("explain analyze delete from t", "write-without-where"),
    ("explain (analyze, buffers) update t set a = 1", "write-without-where"),
    ("explain (analyze true) delete from t", "write-without-where"),
    (
        "explain analyze with d as (delete from t returning 1) select * from d",
        "write-without-where",
    ),
    ("copy (delete from t returning *) to stdout", "write-without-where"),
    ("prepare p as delete from t", "write-without-where"),
    ("truncate t", "truncate"),
    ("truncate table a, b cascade", "truncate"),
    ("drop table t", "drop"),
    ("drop index i", "drop"),
    ("drop view v", "drop"),
    ("drop schema s cascade", "drop"),
    ("drop function f()", "drop"),
    ("drop extension pgcrypto", "drop"),
    ("drop owned by x", "drop"),
    ("alter table t add column b int", "alter"),
    ("alter table t rename to u", "alter"),
    ("alter index i rename to j", "alter"),
    ("alter database d set work_mem = '1MB'", "alter"),
    ("grant select on t to u", "grant"),
    ("revoke select on t from u", "grant"),
    ("grant r to u", "grant"),
    ("alter default privileges grant select on tables to x", "grant"),
    ("do $$ begin null; end $$", "do"),
    ("call p()", "call"),
    ("merge into t using s on t.id = s.id when matched then delete", "merge"),
    ("copy t from stdin", "copy-from"),
    ("copy t (a) from stdin with (format csv)", "copy-from"),
    ("select query_to_xml('select 1', true, false, '')", "dynamic-sql"),
    ("create function f() returns int language sql as 'select 1'", "other"),
    ("create function f() returns int language plpgsql as $$ begin return 1; end $$", "other"),
    ("create procedure p() language sql as $$ select 1 $$", "other"),
    ("create trigger t after insert on x for each row execute function f()", "other"),
    ("create rule r as on insert to t do instead nothing", "other"),
    ("vacuum t", "other"),
    ("analyze t", "other"),
    ("lock table t", "other"),
    ("comment on table t is 'x'", "other"),
    ("cluster t", "other"),
    ("reindex table t", "other"),
    ("refresh materialized view m", "other"),
    ("create schema s", "other"),
    ("create sequence s", "other"),
    ("create database d", "other"),
    ("checkpoint", "other"),
    ("import foreign schema s from server x into y", "other"),
]


@pytest.mark.parametrize(("sql", "rule"), REVIEWED)
def test_reviewed(sql: str, rule: str) -> None:
    verdict = classify(sql)
    assert (verdict.decision, verdict.rule) == (REVIEW, f"agent-safe/{rule}"), verdict


BLOCKED = [
    ("alter system set fsync = off", "alter-system"),
    ("AlTeR sYsTeM reset all", "alter-system"),
    ("create role r", "roles"),
    ("create user u with password 'x'", "roles"),
    ("create group g", "roles"),
    ("alter role r superuser", "roles"),
    ("alter user u set role = 'x'", "roles"),
    ("drop role r", "roles"),
    ("drop user if exists u", "roles"),
    ("set role postgres", "set-role"),
    ("set local role postgres", "set-role"),
    ("set session role x", "set-role"),
    ("set role none", "set-role"),
    ("set \"role\" = 'x'", "set-role"),
    ("set session authorization 'postgres'", "set-role"),
    ("-- comment\nSET/**/ROLE\tpostgres", "set-role"),
    ("select set_config('role', 'postgres', false)", "set-role"),
    ("select set_config(' ROLE\t', 'postgres', false)", "set-role"),
    ("SELECT pg_catalog.SET_CONFIG('Session_Authorization', 'x', true)", "set-role"),
    (
        "select set_config(setting_name => 'role', new_value => 'x', is_local => false)",
        "set-role",
    ),
    ("select set_config('role'::text, 'x', false)", "set-role"),
    ("select set_config(E'\\x72ole', 'x', false)", "set-role"),
    ("select set_config(U&'\\0072ole', 'x', false)", "set-role"),
    ("select 1 from t where set_config('role', 'x', false) is not null", "set-role"),
    ("alter database d set role = 'postgres'", "set-role"),
    ("create function f() returns int language sql set role = 'x' as 'select 1'", "set-role"),
    ("alter function f() set session_authorization = 'x'", "set-role"),
    ("select set_config(lower('ROLE'), 'x', false)", "dynamic-setting"),
    ("select set_config('ro' || 'le', 'x', false)", "dynamic-setting"),
    ("set standard_conforming_strings = off", "lexer-setting"),
    ("set standard_conforming_strings to 0", "lexer-setting"),
    ("select set_config('standard_conforming_strings', 'off', false)", "lexer-setting"),
    ("set client_encoding = 'SJIS'", "lexer-setting"),
    ("set names 'latin1'", "lexer-setting"),
    ("SET client_encoding TO latin9", "lexer-setting"),
    ("set local client_encoding to 'BIG5'", "lexer-setting"),
    ("set session \"Client_Encoding\" = 'gbk'", "lexer-setting"),
    ("set session standard_conforming_strings = false", "lexer-setting"),
    ("set standard_conforming_strings = 'of'", "lexer-setting"),
    ("set backslash_quote = on", "lexer-setting"),
    ("set backslash_quote to off", "lexer-setting"),
    ("set local backslash_quote = true", "lexer-setting"),
    ("select pg_catalog.set_config('backslash_quote', 'on', true)", "lexer-setting"),
    ("select set_config('client_encoding', enc, false) from t", "lexer-setting"),
    ("select set_config('standard_conforming_strings', null, false)", "lexer-setting"),
    (
        "select set_config(setting_name => 'client_encoding', new_value => 'SJIS', is_local => false)",
        "lexer-setting",
    ),
    ("alter database d set client_encoding = 'BIG5'", "lexer-setting"),
    ("alter database d set backslash_quote = on", "lexer-setting"),
    ("alter role current_user set standard_conforming_strings = off", "roles"),
    ("create function f() returns int language sql set client_encoding = 'GBK' as 'select 1'", "lexer-setting"),
    (
        "create function f() returns int language sql set standard_conforming_strings = off as 'select 1'",
        "lexer-setting",
    ),
    ("alter procedure p() set backslash_quote = on", "lexer-setting"),
    ("do $$ begin perform set_config('standard_conforming_strings', 'off', false); end $$", "lexer-setting"),
    ("do $$ begin set local client_encoding = 'SJIS'; end $$", "lexer-setting"),
    (
        "create function f() returns void language plpgsql as $$ begin set backslash_quote = on; end $$",
        "lexer-setting",
    ),
    # pg_settings' ON UPDATE rule calls set_config(name, setting): names chosen by a WHERE.
    ("update pg_settings set setting = 'off' where name = 'standard_conforming_strings'", "dynamic-setting"),
    ("UPDATE pg_catalog.PG_SETTINGS set setting = $1 where name = $2", "dynamic-setting"),
    ("with u as (update pg_settings set setting = 'SJIS' where name = 'client_encoding') select 1", "dynamic-setting"),
    ("prepare p as update pg_settings set setting = $1 where name = $2", "dynamic-setting"),
    ("explain analyze update pg_settings set setting = 'off'", "dynamic-setting"),
    ("create rule r as on insert to t do also update pg_settings set setting = 'off'", "dynamic-setting"),
    (
        "create function f() returns void language sql as $$ update pg_settings set setting = 'x' where name = 'y' $$",
        "dynamic-setting",
    ),
    # A simple view over pg_settings is updatable the same way.
    ("create view v as select * from pg_settings", "dynamic-setting"),
    ("create or replace view v as select name, setting from pg_catalog.pg_settings", "dynamic-setting"),
    # A fast-path FunctionCall of set_config by OID is judged as its bare call.
    ('SELECT "pg_catalog"."set_config"()', "dynamic-setting"),
    ("copy t to '/tmp/x'", "server-copy"),
    ("copy t from '/etc/passwd'", "server-copy"),
    ("copy t from program 'id'", "server-copy"),
    ("copy (select 1) to '/tmp/x'", "server-copy"),
    ("create extension dblink", "extensions"),
    ("create extension if not exists plpython3u", "extensions"),
    ("create language plperlu", "extensions"),
    ("alter extension x update", "extensions"),
    ("load 'auto_explain'", "load"),
    ("create function f() returns int language plpython3u as $$ return 1 $$", "untrusted-language"),
    ("create function f() returns int as 'lib', 'sym' language c", "untrusted-language"),
    (
        "create function f(text) returns text language internal as 'pg_read_file'",
        "untrusted-language",
    ),
    ("create function f() returns int language 'C' as 'lib'", "untrusted-language"),
    ("create or replace procedure p() language plperlu as $$ 1 $$", "untrusted-language"),
    ("do language plpython3u $$ import os $$", "untrusted-language"),
    ("drop database d", "drop-database"),
    ("drop database if exists d with (force)", "drop-database"),
    ("create server s foreign data wrapper postgres_fdw", "foreign-servers"),
    ("alter server s options (set host 'evil')", "foreign-servers"),
    ("create user mapping for current_user server s", "foreign-servers"),
    ("create foreign data wrapper w", "foreign-servers"),
    ("create subscription s connection 'host=x' publication p", "foreign-servers"),
    ("create tablespace t location '/tmp/x'", "tablespace"),
    ("select 1; select 2; alter system set x = 1", "alter-system"),
]


@pytest.mark.parametrize(("sql", "rule"), BLOCKED)
def test_blocked(sql: str, rule: str) -> None:
    verdict = classify(sql)
    assert (verdict.decision, verdict.rule) == (BLOCK, f"agent-safe/{rule}"), verdict


FILE_AND_PROCESS_FUNCTIONS = [
    "pg_read_file('x')", "pg_read_binary_file('x')", "pg_ls_dir('.')", "pg_ls_logdir()",
    "pg_ls_waldir()", "pg_stat_file('x')", "lo_import('/x')", "lo_export(1, '/x')",
    "pg_terminate_backend(1)", "pg_cancel_backend(1)", "pg_reload_conf()",
    "pg_rotate_logfile()", "pg_promote()", "dblink('host=x', 'select 1')",
    "dblink_exec('host=x', 'drop table t')", "dblink_connect('x')", "pg_file_write('x', 'y')",
    "pg_logical_slot_get_changes('s', null, null)",
]  # fmt: skip


@pytest.mark.parametrize("call", FILE_AND_PROCESS_FUNCTIONS)
@pytest.mark.parametrize("schema", ["", "pg_catalog.", "public."])
def test_file_and_process_functions(call: str, schema: str) -> None:
    verdict = classify(f"select {schema}{call}")
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/server-functions")


# Functions hidden anywhere in a statement.
NESTED = [
    "select * from (select pg_read_file('x')) s",
    "select 1 where exists (select lo_import('/x'))",
    "select pg_ls_dir('.')::text",
    "select cast(pg_ls_dir('.') as text)",
    "create table t (a text default pg_read_file('x'))",
    "alter table t add column b text default pg_read_file('x')",
    "create index on t ((pg_read_file(a)))",
    "with x as (select pg_read_file('x')) select * from x",
    "insert into t values (pg_read_file('x'))",
    "insert into t select pg_stat_file('x')",
    "update t set a = pg_read_file('x') where id = 1",
    "delete from t where a = pg_read_file('x')",
    "select * from t order by pg_read_file('x')",
    "select * from t group by pg_read_binary_file('x')",
    "values (pg_ls_logdir())",
    "select * from pg_ls_waldir()",
    "select * from rows from (pg_ls_dir('.'))",
    "select array[pg_read_file('x')]",
    "select case when true then pg_read_file('x') end",
    "select coalesce(null, pg_read_file('x'))",
    "select (select (select pg_read_file('x')))",
    "select f(pg_read_file('x'))",
    "select count(*) filter (where pg_read_file('x') is not null) from t",
    "select * from t where a in (select pg_read_file('x'))",
    "select * from t join lateral (select pg_read_file('x')) s on true",
    "select row(pg_read_file('x'))",
    "select 1 limit (select length(pg_read_file('x')))",
    "explain select pg_read_file('x')",
    "prepare p as select pg_read_file($1)",
    "execute p(pg_read_file('x'))",
    "declare c cursor for select pg_read_file('x')",
    "copy (select pg_read_file('x')) to stdout",
    "call p(pg_read_file('x'))",
    "create view v as select pg_read_file('x')",
    "select \"pg_read_file\"('x')",
    "select PG_READ_FILE('x')",
    "select Pg_Catalog.Pg_Read_File('x')",
    "select pg_catalog . pg_read_file ('x')",
    "select/**/pg_read_file('x')",
    "select U&\"pg\\005fread_file\"('x')",
    "select U&\"pg!005fread_file\" UESCAPE '!' ('x')",
    "select 1; select pg_read_file('x')",
    "do $$ begin perform pg_read_file('x'); end $$",
    "do $body$ declare x text := pg_ls_dir('.'); begin null; end $body$",
    "do $$ begin execute 'select pg_read_file(''x'')'; end $$",
    "create function f() returns text language sql as $$ select pg_read_file('x') $$",
    "create function f() returns text language sql begin atomic select pg_read_file('x'); end",
    "create function f() returns text language plpgsql as $$ begin return lo_import('x'); end $$",
    "select query_to_xml('select pg_read_file(''/etc/passwd'')', true, false, '')",
    "select query_to_xml(query => 'select pg_ls_dir(''.'')', nulls => true, tableforest => "
    "false, targetns => '')",
]


@pytest.mark.parametrize("sql", NESTED)
def test_nested_function_bypasses(sql: str) -> None:
    verdict = classify(sql)
    assert verdict.decision is BLOCK, verdict
    assert verdict.rule == "agent-safe/server-functions"


def test_a_statement_list_takes_the_strictest_part() -> None:
    verdict = classify("select 1; delete from t; alter system set x = 1; drop table u")
    assert (verdict.decision, verdict.rule, verdict.statement_count) == (
        BLOCK,
        "agent-safe/alter-system",
        4,
    )
    tie = classify("truncate a; drop table b")
    assert (tie.decision, tie.rule) == (REVIEW, "agent-safe/truncate")  # first of equals


@pytest.mark.parametrize(
    ("sql", "setting"),
    [
        ("set client_encoding to latin9", "client_encoding"),
        ("set names 'SJIS'", "client_encoding"),
        ("select set_config('standard_conforming_strings', 'off', false)", "standard_conforming_strings"),
        ("set backslash_quote = on", "backslash_quote"),
    ],
)
def test_lexer_setting_reason_names_the_setting_and_why(sql: str, setting: str) -> None:
    reason = classify(sql).reason
    assert reason.startswith(f"{setting} is pinned by the gateway"), reason
    assert "client_encoding UTF8" in reason and "standard_conforming_strings on" in reason
    assert "backslash_quote safe_encoding" in reason and "UTF-8" in reason


def test_reasons_name_what_they_saw() -> None:
    assert "orders" in classify("delete from orders").reason
    assert "always true" in classify("delete from orders where 1=1").reason
    assert "pg_read_file" in classify("select pg_read_file('x')").reason
    assert "plpython3u" in classify("do language plpython3u $$ 1 $$").reason


# -- observe ------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "decision"), DESIGN_EXAMPLES)
def test_observe_allows_and_reports_the_shadow_decision(sql: str, decision: Decision) -> None:
    verdict = classify(sql, "observe")
    assert verdict.decision is ALLOW
    assert verdict.rule == "observe/shadow"
    assert verdict.shadow_decision is decision
    assert verdict.reason.startswith(f"would {decision.value}: agent-safe/")


def test_observe_still_refuses_changing_the_lexing_settings() -> None:
    """The gateway's own reading of the session depends on them, in every mode."""
    verdict = classify("SET client_encoding TO 'LATIN9'", "observe")
    assert verdict.decision is Decision.BLOCK and verdict.rule.endswith("/lexer-setting")


def test_observe_shadows_prepared_statements_too() -> None:
    verdict = classify("prepare p as delete from t", "observe")
    ((name, inner),) = verdict.prepares
    assert (name, inner.decision, inner.shadow_decision) == ("p", ALLOW, REVIEW)


# -- read-only ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "insert into t values (1)",
        "update t set a = 1 where id = 1",
        "delete from t where id = 1",
        "create table t (a int)",
        "create index on t (a)",
        "select * into x from t",
        "copy t from stdin",
        "explain analyze delete from t where id = 1",
        "with d as (insert into t values (1) returning *) select * from d",
        "prepare p as insert into t values ($1)",
        "merge into t using s on t.id = s.id when matched then delete",
        "grant select on t to u",
    ],
)
def test_read_only_reviews_every_write(sql: str) -> None:
    verdict = classify(sql, "read-only")
    assert verdict.decision is REVIEW, verdict
    assert verdict.rule.startswith("read-only/")


@pytest.mark.parametrize(
    "sql",
    ["select * from t", "explain delete from t", "begin", "set work_mem = '1MB'",
     "copy t to stdout", "show all", "declare c cursor for select 1", "execute p"],
)  # fmt: skip
def test_read_only_allows_reads(sql: str) -> None:
    assert classify(sql, "read-only").decision is ALLOW


@pytest.mark.parametrize(("sql", "rule"), BLOCKED[:12])
def test_read_only_keeps_blocks(sql: str, rule: str) -> None:
    verdict = classify(sql, "read-only")
    assert (verdict.decision, verdict.rule) == (BLOCK, f"read-only/{rule}")
