"""Session hygiene through the real proxy: the gateway's session timeouts, NOTIFY limited to
listed channels, two-phase commit sent to review; each with the ways around it an agent
would try (SET LOCAL, set_config, start-up options, role defaults, the extended protocol,
statement lists)."""

from __future__ import annotations

import select
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.sql
import pytest

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from tests.e2e.conftest import Gateway, _resource, start_gateway, stop_gateway
from tests.wire_client import SYNC, ReadResult, WireClient, WireError, bind, error_fields, execute, parse, query

pytestmark = pytest.mark.e2e

GATEWAY_DEFAULTS = {
    "lock_timeout": "5s",
    "statement_timeout": "5min",
    "idle_in_transaction_session_timeout": "3min",
    "client_connection_check_interval": "10s",
}
POLICY = """
notify_channels: [jobs, launder]
timeouts:
  lock_timeout: 1s
  statement_timeout: 2s
  idle_in_transaction_session_timeout: 1500ms
  client_connection_check_interval: 200ms
"""


@pytest.fixture(scope="module")
def hygiene(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Gateway]:
    """A gateway whose `hygiene` resource lists two channels and sets short timeouts."""
    with tempfile.TemporaryDirectory(prefix="jitgate-hygiene-") as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        extra = {"hygiene": _resource(upstream, demo_roles.rw_user, demo_roles.rw_password, policy=str(policy))}
        gw = start_gateway(upstream, demo_roles, Path(tmp), extra=extra)
        try:
            yield gw
        finally:
            stop_gateway(gw)


def _wire_error(result: ReadResult) -> dict[str, str]:
    """The ErrorResponse's fields (C: SQLSTATE, M: message) of what a WireClient read."""
    errors = [dict(error_fields(msg.body)) for msg in result.messages if msg.kind == "E"]
    assert len(errors) == 1, result
    return errors[0]


def _timeouts(conn: psycopg.Connection) -> dict[str, str]:
    return {name: str(conn.execute(f"show {name}").fetchone()[0]) for name in GATEWAY_DEFAULTS}  # type: ignore[index]


def _refused(conn: psycopg.Connection, sql: str, rule: str, params: object = None) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        conn.execute(sql, params)  # type: ignore[arg-type]
    assert rule in str(err.value), (sql, str(err.value))
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()
    assert conn.execute("select 1").fetchone() == (1,)  # the session goes on


# -- timeouts --------------------------------------------------------------------------------


def test_a_fresh_session_has_the_gateway_timeouts(gateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        assert _timeouts(conn) == GATEWAY_DEFAULTS


def test_the_timeouts_outrank_role_and_database_defaults(gateway, upstream, demo_roles) -> None:
    """Sent at start-up, they win over ALTER ROLE / DATABASE ... SET, and RESET goes back to
    them, not to a default an administrator (or an earlier attacker) left at 0."""
    role = psycopg.sql.Identifier(demo_roles.rw_user)
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("alter role {} in database demo set statement_timeout = 0").format(role))
        admin.execute(psycopg.sql.SQL("alter role {} in database demo set lock_timeout = '1h'").format(role))
        try:
            with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
                assert _timeouts(conn) == GATEWAY_DEFAULTS
                for back in ("reset statement_timeout", "set lock_timeout to default", "reset all", "discard all"):
                    conn.execute(back)
                    assert _timeouts(conn) == GATEWAY_DEFAULTS, back
        finally:
            admin.execute(psycopg.sql.SQL("alter role {} in database demo reset all").format(role))


@pytest.mark.parametrize(
    "sql",
    [
        "SET statement_timeout = 0",
        "set statement_timeout to '10min'",
        "set lock_timeout = '100us'",
        "set session idle_in_transaction_session_timeout = '1h'",
        "select set_config('statement_timeout', '0', false)",
        "select pg_catalog.set_config('lock_timeout', '1d', true)",
        "select 1; set statement_timeout = 0",
        "alter database demo set statement_timeout = 0",
        "update pg_settings set setting = '0' where name = 'statement_timeout'",
        "create function hyg_f() returns int language sql set statement_timeout = 0 as $$ select 1 $$",
    ],
)
def test_raising_or_disabling_a_timeout_is_refused(gateway, sql) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        rule = "dynamic-setting" if "pg_settings" in sql else "agent-safe/session-timeouts"
        _refused(conn, sql, rule)
        assert _timeouts(conn) == GATEWAY_DEFAULTS


def test_set_local_inside_a_transaction_is_refused(gateway) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        conn.execute("select 1")
        _refused(conn, "set local statement_timeout = 0", "agent-safe/session-timeouts")


def test_a_parameter_cannot_carry_the_value_past_the_check(gateway) -> None:
    """The extended protocol: the value is a Bind parameter the policy cannot see: refused."""
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        _refused(conn, "select set_config('statement_timeout', %s, false)", "agent-safe/session-timeouts", ["0"])
        _refused(conn, "select set_config(%s, '0', false)", "dynamic-setting", ["statement_timeout"])
    with WireClient.connect("127.0.0.1", gateway.port, user="agent", database="demo", password=gateway.token()) as c:
        c.send(parse("", "set statement_timeout = 0"), bind("", ""), execute(), SYNC)
        error = _wire_error(c.read(ready=1))
        assert error["C"] == "42501" and "session-timeouts" in error["M"]
        c.send(query("show statement_timeout"))
        assert [msg.body for msg in c.read(ready=1).messages if msg.kind == "D"] == [b"\x00\x01\x00\x00\x00\x045min"]


def test_lowering_a_timeout_is_allowed(gateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        conn.execute("set statement_timeout = '30s'")
        conn.execute("select set_config('lock_timeout', '250ms', false)")
        assert _timeouts(conn)["statement_timeout"] == "30s"
        assert _timeouts(conn)["lock_timeout"] == "250ms"
        conn.execute("reset all")
        assert _timeouts(conn) == GATEWAY_DEFAULTS


@pytest.mark.parametrize(
    "params",
    [
        {"options": "-c statement_timeout=0"},
        {"options": "--lock-timeout=1h"},
        {"statement_timeout": "0"},
        {"idle_in_transaction_session_timeout": "100us"},
    ],
)
def test_start_up_options_cannot_raise_them(gateway, params) -> None:
    with pytest.raises(WireError) as err:
        WireClient.connect("127.0.0.1", gateway.port, user="agent", database="demo", password=gateway.token(),
                           params=params)  # fmt: skip
    assert err.value.sqlstate == "42501"
    assert "may be lowered, not raised" in str(err.value)


def test_start_up_options_may_lower_them(gateway) -> None:
    with psycopg.connect(gateway.dsn(options="-c statement_timeout=20s -c lock_timeout=2s"), autocommit=True) as conn:
        assert _timeouts(conn) == {**GATEWAY_DEFAULTS, "statement_timeout": "20s", "lock_timeout": "2s"}


def test_a_resource_policy_sets_its_own(hygiene) -> None:
    with psycopg.connect(hygiene.dsn("hygiene"), autocommit=True) as conn:
        assert _timeouts(conn) == {
            "lock_timeout": "1s", "statement_timeout": "2s", "idle_in_transaction_session_timeout": "1500ms",
            "client_connection_check_interval": "200ms",
        }  # fmt: skip
        _refused(conn, "set statement_timeout = '3s'", "agent-safe/session-timeouts")
        conn.execute("set statement_timeout = '1s'")


def test_the_server_ends_a_session_idle_in_a_transaction(hygiene) -> None:
    """An agent that opens a transaction, takes a row lock and goes quiet loses it after the
    resource's idle_in_transaction_session_timeout: the server ends the session."""
    with psycopg.connect(hygiene.dsn("hygiene")) as conn:
        conn.execute("select * from orders where id = 1 for update")
        time.sleep(2.5)
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout) as err:
            conn.execute("select 1")
        assert "idle-in-transaction timeout" in str(err.value)
    # the lock is gone: another session takes it at once
    with psycopg.connect(hygiene.dsn("hygiene")) as other:
        other.execute("select * from orders where id = 1 for update nowait")


def test_lock_and_statement_timeouts_apply(hygiene, upstream) -> None:
    with psycopg.connect(upstream.dsn("demo")) as admin:
        admin.execute("select * from orders where id = 2 for update")  # held by someone else
        with psycopg.connect(hygiene.dsn("hygiene"), autocommit=True) as conn:
            started = time.monotonic()
            with pytest.raises(psycopg.errors.LockNotAvailable):
                conn.execute("update orders set status = status where id = 2")
            assert time.monotonic() - started < 4
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(10)")
            assert time.monotonic() - started < 8
        admin.rollback()


# -- NOTIFY ----------------------------------------------------------------------------------


def _notifications(upstream: Upstream, channels: list[str]) -> psycopg.Connection:
    listener = psycopg.connect(upstream.dsn("demo"), autocommit=True)
    for channel in channels:
        listener.execute(psycopg.sql.SQL("listen {}").format(psycopg.sql.Identifier(channel)))
    return listener


def _received(listener: psycopg.Connection, wait: float = 0.5) -> list[tuple[str, str]]:
    select.select([listener.fileno()], [], [], wait)
    listener.execute("select 1")
    return [(n.channel, n.payload) for n in listener.notifies(timeout=0.1)]


@pytest.mark.parametrize(
    "sql",
    [
        "notify jobs",
        "NOTIFY other, 'x'",
        "select pg_notify('jobs', 'x')",
        "select pg_catalog.pg_notify('other', 'x')",
        "select 1; notify jobs",
        "do $$ begin perform pg_notify('jobs', 'x'); end $$",
    ],
)
def test_notify_is_blocked_when_the_policy_lists_no_channel(gateway, upstream, sql) -> None:
    with _notifications(upstream, ["jobs", "other"]) as listener:
        with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
            _refused(conn, sql, "agent-safe/notify-channel")
        assert _received(listener) == []


def test_notify_on_a_listed_channel_reaches_listeners(hygiene, upstream) -> None:
    with _notifications(upstream, ["jobs", "other", "JOBS"]) as listener:
        with psycopg.connect(hygiene.dsn("hygiene"), autocommit=True) as conn:
            conn.execute("notify jobs, 'one'")
            conn.execute("NOTIFY JOBS, 'two'")  # folds to jobs
            conn.execute("select pg_notify('jobs', 'three')")
            for sql in (
                "notify other, 'x'",
                "select pg_notify('JOBS', 'x')",  # a text value does not fold
                "select 1; select pg_notify('other', 'x')",
                "begin; notify jobs, 'x'; notify other, 'y'; commit",
            ):
                _refused(conn, sql, "agent-safe/notify-channel")
            # The channel as a Bind parameter (extended protocol): not known before it runs.
            _refused(conn, "select pg_notify(%s, 'x')", "agent-safe/notify-channel", ["jobs"])
        got = _received(listener)
    assert got == [("jobs", "one"), ("jobs", "two"), ("jobs", "three")]


def test_a_listed_channel_does_not_launder_masked_values(hygiene) -> None:
    """Moved from test_masking_lineage: on a listed channel, a masked value as the payload
    still goes to review, since a listener would receive it unmasked."""
    with psycopg.connect(hygiene.dsn("hygiene"), autocommit=True) as conn:
        _refused(conn, "select pg_notify('launder', reverse(api_key)) from customers where id = 1",
                 "masking/stored-unmasked")  # fmt: skip


# -- two-phase commit ------------------------------------------------------------------------


def test_two_phase_commit_goes_to_review(gateway, upstream) -> None:
    """Without an approval workflow the gateway refuses what needs review, naming the rule."""
    with psycopg.connect(gateway.dsn()) as conn:
        conn.execute("update orders set status = status where id = 3")
        _refused(conn, "prepare transaction 'hyg-gid'", "agent-safe/prepare-transaction")
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        _refused(conn, "commit prepared 'someone-elses'", "agent-safe/finish-prepared")
        _refused(conn, "ROLLBACK PREPARED 'someone-elses'", "agent-safe/finish-prepared")
        _refused(conn, "select 1; rollback prepared 'someone-elses'", "agent-safe/finish-prepared")
    with WireClient.connect("127.0.0.1", gateway.port, user="agent", database="demo", password=gateway.token()) as c:
        c.send(parse("", "commit prepared 'someone-elses'"), bind("", ""), execute(), SYNC)
        error = _wire_error(c.read(ready=1))
        assert error["C"] == "42501" and "finish-prepared" in error["M"]
    with psycopg.connect(upstream.dsn("demo")) as admin:
        assert admin.execute("select count(*) from pg_prepared_xacts").fetchone() == (0,)


def test_a_statement_whose_client_left_ends_upstream(hygiene, upstream: Upstream) -> None:
    """A client that disconnects in the middle of a statement does not leave its backend
    running (found by red-teaming: 15 backends from one token capped at 5): the gateway sets
    client_connection_check_interval, so the server notices the gateway closed the session."""
    marker = "select pg_sleep(1.5) /* jg-left */"
    client = WireClient.connect(
        "127.0.0.1", hygiene.port, user="agent", database="hygiene", password=hygiene.token("hygiene")
    )
    client.send(query(marker))
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        running = "select count(*) from pg_stat_activity where query = %s and state = 'active'"
        deadline = time.monotonic() + 5
        while admin.execute(running, (marker,)).fetchone() != (1,):
            assert time.monotonic() < deadline, "the statement never started upstream"
            time.sleep(0.05)
        client.close()  # the agent goes away mid-statement
        deadline = time.monotonic() + 1.2  # well before pg_sleep(1.5) would end by itself
        while admin.execute(running, (marker,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the backend kept running after its client left"
            time.sleep(0.05)
