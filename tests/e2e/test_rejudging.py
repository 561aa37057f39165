# ruff: noqa: F811  (the `mode` fixture, imported, is a test argument)
"""Statements judged again after a policy reload, and what the session's end leaves on record:
the third red-team round's attacks, each with the fast path on and off."""

from __future__ import annotations

import time
from dataclasses import replace

import psycopg
import pytest

from broker.demo.upstream import Upstream
from broker.policy import PolicyEngine
from proxy.protocol import messages as m
from tests.e2e.conftest import Gateway
from tests.e2e.test_fastpath_attacks import SYNC, Wire, _recorded, bind, errors, execute, mode  # noqa: F401

pytestmark = pytest.mark.e2e


def _table(upstream: Upstream, table: str, ddl: str = "(v text)") -> None:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"drop table if exists {table}")
        admin.execute(f"create table {table} {ddl}")
        admin.execute(f"grant all on {table} to public")


def _drop(upstream: Upstream, table: str) -> None:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"drop table if exists {table}")


def _count(upstream: Upstream, table: str, where: str = "true") -> int:
    with psycopg.connect(upstream.dsn("demo")) as direct:
        return direct.execute(f"select count(*) from {table} where {where}").fetchone()[0]


def test_a_sql_prepared_statement_is_judged_again_after_a_reload(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """SQL EXECUTE and a protocol Bind of a name made by SQL PREPARE run what its PREPARE text
    makes under the policy now, not the verdict of PREPARE time."""
    table = f"rt3_prep_{mode}"
    _table(upstream, table)
    resources = gateway.server.ctx.resources
    old = resources["demo"]
    try:
        w = Wire(gateway, f"rt3-prep-{mode}")
        assert not errors(w.query(f"PREPARE ins (text) AS INSERT INTO {table} VALUES ($1)"))
        assert not errors(w.query("EXECUTE ins('before')"))
        resources["demo"] = replace(old, policy=PolicyEngine.preset("read-only").bind("demo"))  # SIGHUP
        direct = w.query(f"INSERT INTO {table} VALUES ('direct')")
        assert errors(direct), "control: the reloaded policy refuses the INSERT itself"
        a = w.query("EXECUTE ins('after-sql')")
        for _ in range(3):  # protocol Bind/Execute of the SQL-prepared name (and fast repeats)
            b = w.send(bind("", "ins", [b"after-bind"]), execute(), SYNC)
        counts = {v: _count(upstream, table, f"v = '{v}'") for v in ("before", "direct", "after-sql", "after-bind")}
        assert counts == {"before": 1, "direct": 0, "after-sql": 0, "after-bind": 0}, (counts, errors(a), errors(b))
    finally:
        resources["demo"] = old
        _drop(upstream, table)


def test_a_rehearsed_write_whose_commit_was_sent_when_the_client_left_is_recorded(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """A deferred unique check makes the gateway's COMMIT of a rehearsed unit wait on another
    transaction; the client leaves; the other rolls back; the write commits: it is recorded
    (08006, outcome unknown)."""
    table = f"rt3_defer_{mode}"
    app = f"rt3-defer-{mode}"
    _table(upstream, table, "(id int primary key, k int unique deferrable initially deferred)")
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"insert into {table} values (1, 10)")
    blocker = psycopg.connect(upstream.dsn("demo"))
    try:
        blocker.execute(f"insert into {table} values (2, 99)")  # uncommitted k = 99
        w = Wire(gateway, app)
        w.s.sendall(m.query_message(f"UPDATE {table} SET k = 99 WHERE id = 1"))  # rehearsed; COMMIT waits
        time.sleep(1.0)
        w.s.close()  # the client leaves while the gateway's COMMIT is unanswered
        time.sleep(0.5)
        blocker.rollback()  # COMMIT goes through
        time.sleep(0.5)
        assert _count(upstream, table, "id = 1 and k = 99") == 1  # the UPDATE is committed
        recs = [(r.sql, r.error_sqlstate) for r in _recorded(gateway, app) if r.sql.startswith("UPDATE")]
        assert recs == [(f"UPDATE {table} SET k = 99 WHERE id = 1", "08006")], recs
    finally:
        blocker.close()
        _drop(upstream, table)


def test_a_write_blocked_when_the_client_left_is_recorded(gateway: Gateway, upstream: Upstream, mode: str) -> None:
    """The same wait for a write that is not rehearsed: recorded 08006."""
    table = f"rt3_defer2_{mode}"
    app = f"rt3-defer2-{mode}"
    _table(upstream, table, "(id int primary key, k int unique deferrable initially deferred)")
    blocker = psycopg.connect(upstream.dsn("demo"))
    try:
        blocker.execute(f"insert into {table} values (2, 99)")
        w = Wire(gateway, app)
        w.s.sendall(m.query_message(f"INSERT INTO {table} VALUES (1, 99)"))
        time.sleep(1.0)
        w.s.close()
        time.sleep(0.5)
        blocker.rollback()
        time.sleep(0.5)
        assert _count(upstream, table, "id = 1") == 1
        recs = [(r.sql, r.error_sqlstate) for r in _recorded(gateway, app) if r.sql.startswith("INSERT")]
        assert recs == [(f"INSERT INTO {table} VALUES (1, 99)", "08006")], recs
    finally:
        blocker.close()
        _drop(upstream, table)


def test_what_precedes_a_malformed_message_runs_and_is_recorded(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """A Query followed, in the same read, by a malformed message: PostgreSQL runs the Query,
    then ends the session at the fault; so does the gateway, and the Query is on record
    (08006: its answer never reached the client). It used to be recorded but never sent."""
    table = f"rt3_ghost_{mode}"
    app = f"rt3-ghost-{mode}"
    _table(upstream, table)
    try:
        w = Wire(gateway, app)
        sql = f"INSERT INTO {table} VALUES ('ghost')"
        w.s.sendall(m.query_message(sql) + b"\x01\x00\x00\x00\x04")  # bad message type
        w.until_ready()
        w.s.close()
        time.sleep(0.5)
        recs = [(r.sql, r.error_sqlstate) for r in _recorded(gateway, app) if r.sql == sql]
        assert _count(upstream, table) == 1
        assert recs == [(sql, "08006")], recs
    finally:
        _drop(upstream, table)


def test_a_block_rule_after_a_reload_reaches_sql_and_protocol_prepared_statements(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """The operator reloads a policy that blocks the table outright: the protocol-prepared and
    the SQL-PREPAREd statement are refused from then on, SQL EXECUTE and protocol Bind alike.
    (A WITH HOLD cursor declared before still fetches, its values masked whole: cursors are
    not judged again.)"""
    table = f"rt3_blk_{mode}"
    _table(upstream, table)
    resources = gateway.server.ctx.resources
    old = resources["demo"]
    yaml_text = (
        "preset: agent-safe\n"
        f"rules:\n  - id: freeze\n    match: {{tables: [{table}, customers]}}\n    decision: block\n"
    )
    try:
        w = Wire(gateway, f"rt3-blk-{mode}")
        assert not errors(w.send(m.parse_message("proto", f"INSERT INTO {table} VALUES ($1)"), SYNC))
        assert not errors(w.query(f"PREPARE sqlp (text) AS INSERT INTO {table} VALUES ($1)"))
        resources["demo"] = replace(old, policy=PolicyEngine.from_yaml(yaml_text).bind("demo"))
        assert errors(w.query(f"INSERT INTO {table} VALUES ('direct')"))
        assert errors(w.query("SELECT full_name FROM customers LIMIT 1"))
        p = w.send(bind("", "proto", [b"proto"]), execute(), SYNC)
        assert errors(p), "control: the protocol-prepared statement is judged again"
        s1 = w.query("EXECUTE sqlp('sql-execute')")
        s2 = w.send(bind("", "sqlp", [b"sql-bind"]), execute(), SYNC)
        counts = {v: _count(upstream, table, f"v = '{v}'") for v in ("direct", "proto", "sql-execute", "sql-bind")}
        assert errors(s1) and errors(s2)
        assert counts == dict.fromkeys(counts, 0), counts
    finally:
        resources["demo"] = old
        _drop(upstream, table)

