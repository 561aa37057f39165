"""Session timeouts: PostgreSQL's reading of a value, and the policy's ceilings on SET."""

from __future__ import annotations

import asyncpg
import pytest

from broker.demo.upstream import Upstream
from broker.policy import Decision, PolicyConfigError, PolicyEngine
from broker.policy.loader import parse_policy
from broker.policy.timeouts import DEFAULT_TIMEOUTS, format_ms, parse_ms

ALLOW, REVIEW, BLOCK = Decision.ALLOW, Decision.REVIEW, Decision.BLOCK

# The server's own reading of each (checked against PostgreSQL below): None is refused.
VALUES = [
    ("5000", 5000), ("5s", 5000), (" 5 s ", 5000), ("5min", 300_000), ("1h", 3_600_000), ("1d", 86_400_000),
    ("1.5s", 1500), ("0.6", 1), ("0.5", 0), ("1.5", 2), ("2.5", 2), ("1e3", 1000), ("100us", 0),
    ("1500us", 2), ("010", 8), ("0x10", 16), ("0", 0), ("-1", -1), ("+7", 7), (".5s", 500),
    ("5S", None), ("5 sec", None), ("abc", None), ("", None), ("inf", None), ("1e400", None),
    ("08", None), ("5ms5", None), ("99999999999", None),
    # a fraction of a unit is rounded to the next smaller unit first (found by red-teaming:
    # '0.004min' read as 240 ms is 0, disabled, for the server)
    ("0.004min", 0), ("0.00001d", 0), ("0.0013h", 0), ("0.0766min", 5000), ("1.5min", 90_000),
    ("0.0004s", 0), ("0.0006s", 1), ("2.5h", 9_000_000),
]  # fmt: skip


@pytest.mark.parametrize(("text", "ms"), VALUES)
def test_values_are_read_as_postgresql_reads_them(text: str, ms: int | None) -> None:
    assert parse_ms(text) == ms


async def test_the_reading_matches_postgresql(upstream: Upstream) -> None:
    conn = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        for text, ms in VALUES:
            try:
                await conn.execute("select set_config('lock_timeout', $1, false)", text)
            except asyncpg.PostgresError:
                assert ms is None or ms < 0, text  # the server refuses negatives (min 0)
                continue
            assert int(await conn.fetchval("select setting from pg_settings where name = 'lock_timeout'")) == ms, text
    finally:
        await conn.close()


def test_literal_kinds() -> None:
    assert parse_ms(250) == 250
    assert parse_ms(5000.5) == 5000  # SET lock_timeout = 5000.5: a numeric literal, rint
    assert parse_ms(True) is None
    assert parse_ms(None) is None
    assert parse_ms(2**40) is None
    assert format_ms(300_000) == "5min" and format_ms(5000) == "5s" and format_ms(1500) == "1500ms"


ENGINE = PolicyEngine.preset()


@pytest.mark.parametrize(
    "sql",
    [
        "set lock_timeout = 1000",
        "set lock_timeout = '5s'",
        "set statement_timeout to '4min'",
        "set local statement_timeout = '1s'",
        "set session idle_in_transaction_session_timeout = 60000",
        "select set_config('lock_timeout', '100ms', true)",
        "reset statement_timeout",
        "set statement_timeout to default",
        "reset all",
        "discard all",
    ],
)
def test_lowering_or_resetting_a_timeout_is_allowed(sql: str) -> None:
    assert ENGINE.classify(sql).decision is ALLOW, sql


def test_a_function_lowering_a_timeout_is_only_reviewed_as_any_function() -> None:
    verdict = ENGINE.classify("create function f() returns int language sql set lock_timeout = '1s' as $$ select 1 $$")
    assert (verdict.decision, verdict.rule) == (REVIEW, "agent-safe/other")


@pytest.mark.parametrize(
    "sql",
    [
        "set statement_timeout = 0",
        "SET statement_timeout = '0'",
        "set lock_timeout = '100us'",  # rounds to 0: disabled
        "set lock_timeout = '0.4'",
        "set lock_timeout = 5001",
        "set lock_timeout = '6s'",
        "set statement_timeout = '1h'",
        "set local statement_timeout = '10min'",
        "set idle_in_transaction_session_timeout = '181s'",
        "set idle_in_transaction_session_timeout = -1",
        "set lock_timeout = 1e9",
        "SET LOCK_TIMEOUT = '1d'",
        "select set_config('statement_timeout', '0', false)",
        "select pg_catalog.set_config('lock_timeout', '1h', true)",
        "select set_config('lock_timeout', $1, false)",  # a parameter: not known statically
        "select set_config('lock_timeout', current_setting('x.y'), false)",
        "select set_config(setting_name => 'statement_timeout', new_value => '0', is_local => false)",
        "create function f() returns int language sql set statement_timeout = 0 as $$ select 1 $$",
        "create function f() returns int language sql set statement_timeout from current as $$ select 1 $$",
        "alter function f() set lock_timeout = '1h'",
        "create procedure p() language sql set lock_timeout = 0 as $$ select 1 $$",
        "alter database demo set statement_timeout = 0",
        "alter role current_user set lock_timeout = 0",
        "select 1; set statement_timeout = 0",
        "do $$ begin set statement_timeout = 0; end $$",
        "do $$ begin perform set_config('lock_timeout', '0', false); end $$",
        "select * from query_to_xml('select set_config(''lock_timeout'', ''0'', false)', true, true, '')",
        "prepare p as select set_config('statement_timeout', '0', false)",
        "explain analyze select set_config('statement_timeout', '0', false)",
    ],
)
def test_raising_or_disabling_a_timeout_is_blocked(sql: str) -> None:
    verdict = ENGINE.classify(sql)
    assert verdict.decision is BLOCK, (sql, verdict)


def test_the_rule_names_the_setting() -> None:
    verdict = ENGINE.classify("set statement_timeout = 0")
    assert verdict.rule == "agent-safe/session-timeouts"
    assert verdict.reason.startswith("statement_timeout may be lowered, not raised")


def test_the_decision_depends_on_the_value_not_only_the_shape() -> None:
    # The shape cache must not hand the verdict of one value to another.
    assert ENGINE.classify("set lock_timeout = 1000").decision is ALLOW
    assert ENGINE.classify("set lock_timeout = 0").decision is BLOCK
    assert ENGINE.classify("set lock_timeout = 2000").decision is ALLOW
    assert ENGINE.classify("set lock_timeout = 9000").decision is BLOCK


POLICY = """
timeouts: {lock_timeout: 2s, statement_timeout: 10min}
resources:
  prod:
    timeouts: {statement_timeout: 30s}
  loose:
    timeouts: {idle_in_transaction_session_timeout: 1h}
"""


def test_ceilings_come_from_the_most_specific_scope() -> None:
    engine = PolicyEngine.from_yaml(POLICY)
    default = DEFAULT_TIMEOUTS["idle_in_transaction_session_timeout"]
    assert engine.timeouts() == {
        "lock_timeout": 2000, "statement_timeout": 600_000, "idle_in_transaction_session_timeout": default,
        "client_connection_check_interval": DEFAULT_TIMEOUTS["client_connection_check_interval"],
    }  # fmt: skip
    assert engine.timeouts("prod")["statement_timeout"] == 30_000
    assert engine.timeouts("prod")["lock_timeout"] == 2000
    assert engine.timeouts("loose")["idle_in_transaction_session_timeout"] == 3_600_000
    assert engine.classify("set statement_timeout = '5min'", resource="prod").decision is BLOCK
    assert engine.classify("set statement_timeout = '5min'", resource="other").decision is ALLOW
    assert engine.classify("set idle_in_transaction_session_timeout = '30min'", resource="loose").decision is ALLOW
    assert engine.classify("set idle_in_transaction_session_timeout = '30min'").decision is BLOCK


def test_an_operator_may_loosen_the_guard_only_with_override() -> None:
    loose = "rules: [{id: any-timeout, match: {kinds: [unsafe_timeout]}, decision: allow, override: true}]"
    assert PolicyEngine.from_yaml(loose).classify("set statement_timeout = 0").decision is ALLOW
    with pytest.raises(PolicyConfigError, match="would loosen preset rule agent-safe/session-timeouts"):
        parse_policy("rules: [{id: t, match: {kinds: [unsafe_timeout]}, decision: allow}]")


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("timeouts: {lock_timeout: 0}", "timeouts.lock_timeout", "0 is not a positive duration"),
        ("timeouts: {lock_timeout: 5 sec}", "timeouts.lock_timeout", "'5 sec' is not a positive duration"),
        ("timeouts: {lock_timout: 5s}", "timeouts.lock_timout", "unknown key (expected one of lock_timeout, "),
        ("resources: {prod: {timeouts: {statement_timeout: -1}}}", "resources.prod.timeouts.statement_timeout",
         "-1 is not a positive duration"),
        ("groups: {dba: {timeouts: {lock_timeout: 1s}}}", "groups.dba.timeouts", "unknown key"),
    ],
)  # fmt: skip
def test_bad_timeouts_name_the_key(text: str, path: str, message: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        parse_policy(text)
    assert any(p == path and m.startswith(message) for p, m in info.value.errors), info.value.errors
