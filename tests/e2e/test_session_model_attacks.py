"""Attacks on the gateway's model of the upstream session, through the real proxy.

Each test speaks the wire protocol itself (raw socket, the agent's token only), under the
default agent-safe policy, and checks the effect on the server with a separate admin
connection: the role the session acts as, the rows, the settings. The gateway keeps its own
picture of the server's session (what is in flight, which statement and portal names exist,
how the server tokenizes SQL); every test here makes that picture drift from the server's
and asserts that nothing leaks or runs because of it (/work/shared/protocol-notes.md, "Where
a proxy's model drifts from the server's").

The module runs its own gateway in front of a fresh copy of the demo database, logging in
upstream as a login role of its own (a member of demo_rw and of one more role, the one a
role switch would reach), so settings it manages to change (ALTER ROLE ... SET) or rows it
manages to write cannot disturb other tests. The schema has two functions an application
might have: `jg_open(refcursor)` opens a cursor over masked columns, `jg_secret(int)` returns
an API key.
"""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from proxy.protocol import messages as m
from proxy.protocol.frames import split_messages
from tests.e2e.conftest import Gateway, _resource, start_gateway, stop_gateway
from tests.e2e.scratch import TestReviewer, scratch_database

pytestmark = pytest.mark.e2e

RESOURCE = "attack"

Msg = tuple[str, bytes]


# ------------------------------------------------------------------ wire-protocol helpers


def bind(statement: str = "", portal: str = "") -> bytes:
    """Bind without parameters, all results in text."""
    return m.frame(b"B", m.cstr(portal) + m.cstr(statement) + struct.pack("!hhh", 0, 0, 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.frame(b"E", m.cstr(portal) + struct.pack("!i", max_rows))


def function_call(oid: int, *args: str) -> bytes:
    """A fast-path FunctionCall with text arguments and a text result."""
    body = struct.pack("!Ihh", oid, 1, 0) + struct.pack("!h", len(args))
    for arg in args:
        data = arg.encode()
        body += struct.pack("!i", len(data)) + data
    return m.frame(b"F", body + struct.pack("!h", 0))


def fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by code (S severity, C SQLSTATE, M message)."""
    return dict(m.parse_fields(body))


def errors(msgs: list[Msg]) -> list[dict[str, str]]:
    return [fields(body) for kind, body in msgs if kind == "E"]


def rows(msgs: list[Msg]) -> list[list[str | None]]:
    return [[None if v is None else v.decode() for v in m.parse_data_row(body)] for kind, body in msgs if kind == "D"]


class Wire:
    """A raw protocol-3.0 client: frames out, messages in, and every byte it ever received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.received = bytearray()
        self.closed = False

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def _fill(self, deadline: float) -> bool:
        """Read what arrives before `deadline`; False once the proxy closed or time is up."""
        if self.closed:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionError:
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        self.received += data
        return True

    def read(self, ready: int = 1, timeout: float = 8.0, until: bytes = b"Z") -> list[Msg]:
        """Messages up to and including the `ready`-th ReadyForQuery (or other message of a
        type in `until`), or all there are when the connection ends or `timeout` passes."""
        deadline = time.monotonic() + timeout
        out: list[Msg] = []
        seen = 0
        while True:
            msgs, used = split_messages(self.buf)
            for i, (kind, body) in enumerate(msgs):
                out.append((chr(kind), body))
                if kind in until:
                    seen += 1
                    if seen == ready:
                        # Give back what follows, for the next read.
                        rest = b"".join(m.frame(bytes([k]), b) for k, b in msgs[i + 1 :])
                        self.buf = bytearray(rest) + self.buf[used:]
                        return out
            del self.buf[:used]
            if not self._fill(deadline):
                return out

    def drain(self, timeout: float = 0.5) -> list[Msg]:
        """Whatever else arrives within `timeout` (answers the client did not wait for)."""
        return self.read(ready=1_000_000, timeout=timeout)

    def query(self, text: str, timeout: float = 8.0) -> list[Msg]:
        self.send(m.query_message(text))
        return self.read(timeout=timeout)

    def close(self) -> None:
        if not self.closed:
            try:
                self.sock.sendall(m.TERMINATE)
            except OSError:
                pass
        self.sock.close()


def connect(gw: Gateway, token: str, **params: str) -> tuple[Wire, list[Msg]]:
    """Start a session as the agent; returns the client and what start-up answered (a
    refused start-up ends with an ErrorResponse and a closed connection)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    wire = Wire(sock)
    wire.send(m.build_startup_message({"user": "agent", "database": RESOURCE, **params}))
    first = wire.read(timeout=10, until=b"RE")
    if not first or first[0][0] != "R":
        return wire, first
    wire.send(m.password_message(token.encode() + b"\0"))
    return wire, first + wire.read(ready=1, timeout=10)


# ------------------------------------------------------------------ the gateway under test


@dataclass
class Env:
    gw: Gateway
    upstream: Upstream
    db: str
    login: str  # the upstream role the gateway logs in as
    target: str  # a role `login` is a member of: where a role switch would land
    token: str
    reviewer: TestReviewer
    pii: dict[str, list[str]] = field(default_factory=dict)  # column -> raw values

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.upstream.dsn(self.db), autocommit=True)

    def connect(self, **params: str) -> Wire:
        wire, start = connect(self.gw, self.token, **params)
        assert start and start[-1][0] == "Z", start
        return wire

    def forbidden(self, *, reversed_too: bool = True) -> set[str]:
        out: set[str] = set()
        for values in self.pii.values():
            for value in values:
                out.add(value)
                if reversed_too:
                    out.add(value[::-1])
        return out

    def leaked(self, data: bytes | bytearray) -> list[str]:
        text = bytes(data).decode("utf-8", "replace")
        return sorted(v for v in self.forbidden() if v in text)


@pytest.fixture(scope="module")
def env(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Env]:
    reviewer = TestReviewer()
    with scratch_database(upstream, demo_roles, "jg_attack", extra_roles=1) as scratch:
        (target,) = scratch.extra_roles
        with psycopg.connect(upstream.dsn(scratch.db), autocommit=True) as admin:
            admin.execute("create table jg_whoami (who name not null default current_user, tag text)")
            admin.execute("create table jg_scratch (id int primary key, note text)")
            admin.execute("grant select, insert, update, delete on jg_whoami, jg_scratch to public")
            admin.execute("create table jg_notes as select id, notes from customers")  # to restore
            # What an application's schema may hold: a refcursor opener and a lookup function.
            admin.execute(
                "create function jg_open(c refcursor) returns refcursor language plpgsql as"
                " $$ begin open c for select ssn, reverse(api_key) from customers; return c; end $$"
            )
            admin.execute(
                "create function jg_secret(i int) returns text language sql as"
                " $$ select api_key from customers where id = i $$"
            )
            cols = ("ssn", "api_key", "card_number", "email")
            got = admin.execute(f"select {', '.join(cols)} from customers order by id").fetchall()
        pii = {col: [row[i] for row in got if row[i]] for i, col in enumerate(cols)}
        with tempfile.TemporaryDirectory(prefix="jitgate-attacks-") as tmp:
            extra = {RESOURCE: _resource(upstream, scratch.login, scratch.password, dbname=scratch.db)}
            gw = start_gateway(upstream, demo_roles, Path(tmp), extra=extra, review=reviewer)
            try:
                yield Env(gw, upstream, scratch.db, scratch.login, target, gw.issue(RESOURCE), reviewer, pii)
            finally:
                stop_gateway(gw)


@pytest.fixture(autouse=True)
def _pristine(env: Env) -> Iterator[None]:
    """Every test starts from the seeded rows and no role-level settings."""
    with env.admin() as admin:
        admin.execute("delete from jg_scratch")
        admin.execute("insert into jg_scratch select g, 'keep' from generate_series(1, 20) g")
        admin.execute("delete from jg_whoami")
    env.reviewer.reset()
    yield
    with env.admin() as admin:
        admin.execute(sql.SQL("alter role {} reset all").format(sql.Identifier(env.login)))
        admin.execute(sql.SQL("alter role {} in database {} reset all").format(
            sql.Identifier(env.login), sql.Identifier(env.db)
        ))
        admin.execute(
            "update customers c set notes = n.notes from jg_notes n"
            " where n.id = c.id and c.notes is distinct from n.notes"
        )


def _oid(env: Env, signature: str) -> int:
    with env.admin() as admin:
        row = admin.execute("select %s::regprocedure::oid::int", (signature,)).fetchone()
    assert row is not None
    return int(row[0])


def _whoami(env: Env, wire: Wire, tag: str) -> str | None:
    """The role the server runs this session's statements as, read by the admin from a row
    the session inserted (the session's own answers pass through the gateway)."""
    wire.query(f"insert into jg_whoami (tag) values ('{tag}')")
    with env.admin() as admin:
        row = admin.execute("select who from jg_whoami where tag = %s", (tag,)).fetchone()
    return None if row is None else str(row[0])


# ------------------------------------------------------------------ 1. FunctionCall lookup


def test_function_lookup_cannot_be_answered_by_pipelined_rows(env: Env) -> None:
    """A failing FunctionCall and a slow Query in one write; once the call's error is back
    (the slow query still running), a FunctionCall of set_config('role', <a role the login
    is a member of>, false). The gateway's catalog lookup of the second call's OID must not
    take the slow query's rows (shaped like a lookup answer naming pg_catalog.upper) as its
    answer, so set_config is judged as set_config and never runs. (All three in one write,
    the second call was refused as pipelined even before the fix.)"""
    failing = _oid(env, "pg_catalog.int4div(int4,int4)")
    set_config = _oid(env, "pg_catalog.set_config(text,text,boolean)")
    wire = env.connect()
    try:
        assert rows(wire.query("select current_user, current_setting('role')")) == [[env.login, "none"]]
        # 1/0 fails at the server: ErrorResponse, ReadyForQuery; the Query runs after it.
        wire.send(function_call(failing, "1", "0"), m.query_message("select 'pg_catalog', 'upper' from pg_sleep(0.3)"))
        first = wire.read(ready=1)
        assert [e.get("C") for e in errors(first)] == ["22012"], first
        # While the slow query still runs: the call the attack is about.
        wire.send(function_call(set_config, "role", env.target, "false"))
        second = wire.read(ready=2, timeout=6)
        second += wire.drain()
        kinds = [k for k, _ in second]
        assert "V" not in kinds, f"set_config ran through the fast path: {second}"
        codes = [(e.get("S"), e.get("C")) for e in errors(second)]
        assert ("ERROR", "42501") in codes or (("FATAL", "08P01") in codes and wire.closed), second
        if not wire.closed:
            # PostgreSQL answers the slow query with its row, and the gateway relays it.
            assert ["pg_catalog", "upper"] in rows(second), second
            assert rows(wire.query("select current_user, current_setting('role')")) == [[env.login, "none"]]
            assert _whoami(env, wire, "fastpath") == env.login
    finally:
        wire.close()


# ------------------------------------------------------------------ 2. error before Sync


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "after-the-error"])
def test_query_skipped_after_an_extended_error_does_not_shift_masking(env: Env, split: bool) -> None:
    """An error in an extended batch makes the server skip everything up to Sync, a simple
    Query included: it gets no answer. A gateway that still expects one is off by one for
    every later result, and masks the wrong rows."""
    wire = env.connect()
    try:
        failing = [m.parse_message("", "select 1/0"), bind(), execute(), m.FLUSH]
        skipped = [m.query_message("select 'skipped'"), m.SYNC]
        if split:
            wire.send(*failing)
            got = wire.read(until=b"E")  # ParseComplete, ErrorResponse; no ReadyForQuery before Sync
            assert [e.get("C") for e in errors(got)] == ["22012"], got
            wire.send(*skipped)
            wire.read(ready=1)
        else:
            wire.send(*failing, *skipped)
            wire.read(ready=1)
        pii = "select id, ssn, api_key, card_number, email from customers order by id"
        wire.send(m.query_message(pii))
        simple = wire.read(ready=1)
        wire.send(m.parse_message("", pii), bind(), m.describe_message("P", ""), execute(), m.SYNC)
        extended = wire.read(ready=1)
        wire.send(m.query_message("select 'end'"))
        wire.read(ready=1)
        wire.drain()
        leaked = env.leaked(wire.received)
        assert not leaked, f"{len(leaked)} raw values reached the client, e.g. {leaked[:3]}"
        # The rows came, masked: the check above is not passing because nothing came back.
        assert len(rows(simple)) == 200 or len(rows(extended)) == 200, (simple[:3], extended[:3])
    finally:
        wire.close()


# ------------------------------------------------------------------ 3. cursor as a portal


@pytest.mark.parametrize("describe", [False, True], ids=["execute", "describe-execute"])
def test_execute_of_a_declared_cursor_is_masked_or_refused(env: Env, describe: bool) -> None:
    """A cursor opened by SQL DECLARE is a portal of the same name: protocol Execute of it,
    without any Bind the gateway saw, returns its rows."""
    wire = env.connect()
    try:
        opened = wire.query("begin; declare c cursor for select ssn, api_key, reverse(api_key) from customers")
        assert not errors(opened), opened
        wire.send(*([m.describe_message("P", "c")] if describe else []), execute("c"), m.SYNC)
        got = wire.read(ready=1)
        wire.query("rollback")
        leaked = env.leaked(wire.received)
        assert not leaked, f"{len(leaked)} raw or reversed values reached the client, e.g. {leaked[:3]}"
        assert rows(got) or errors(got), got
    finally:
        wire.close()


def test_execute_of_a_cursor_opened_by_a_function_is_masked_or_refused(env: Env) -> None:
    """A refcursor a function opened is a portal nobody declared or bound through the gateway."""
    wire = env.connect()
    try:
        opened = wire.query("begin; select jg_open('oc')")
        assert not errors(opened), opened
        wire.send(execute("oc"), m.SYNC)
        got = wire.read()
        wire.query("rollback")
        leaked = env.leaked(wire.received)
        assert not leaked, f"{len(leaked)} raw or reversed values reached the client, e.g. {leaked[:3]}"
        assert rows(got) or errors(got), got
    finally:
        wire.close()


def test_portal_name_redeclared_by_sql_is_masked_by_what_it_now_is(env: Env) -> None:
    """A protocol portal closed by SQL CLOSE and declared again as a cursor by SQL DECLARE:
    Execute of the name returns the cursor's rows."""
    wire = env.connect()
    try:
        assert not errors(wire.query("begin"))
        wire.send(
            m.parse_message("", "select id, full_name from customers where id = 1"),
            bind("", "p"),
            m.describe_message("P", "p"),
            execute("p", 1),
            m.SYNC,
        )
        assert not errors(wire.read())
        again = wire.query("close p; declare p cursor for select id, reverse(api_key) from customers")
        assert not errors(again), again
        wire.send(execute("p"), m.SYNC)
        got = wire.read()
        wire.query("rollback")
        leaked = env.leaked(wire.received)
        assert not leaked, f"{len(leaked)} raw or reversed values reached the client, e.g. {leaked[:3]}"
        assert rows(got) or errors(got), got
    finally:
        wire.close()


# ------------------------------------------------------------------ 4. statement names


@pytest.mark.parametrize("how", ["one-query", "two-queries", "described"])
def test_statement_name_redefined_by_sql_is_judged_by_what_it_now_is(env: Env, how: str) -> None:
    """SQL DEALLOCATE/PREPARE change what a protocol statement name means: Bind of the name
    then runs the new statement, whose rows must be masked by what it is."""
    wire = env.connect()
    try:
        first = [m.parse_message("s", "select id from customers where id = 1")]
        if how == "described":
            first.append(m.describe_message("S", "s"))
        wire.send(*first, m.SYNC)
        assert not errors(wire.read()), "the Parse"
        redefine = "prepare s as select reverse(api_key), api_key as id from customers"
        if how == "two-queries":
            assert not errors(wire.query("deallocate s"))
            assert not errors(wire.query(redefine))
        else:
            assert not errors(wire.query(f"deallocate s; {redefine}"))
        wire.send(bind("s"), execute(), m.SYNC)
        got = wire.read()
        wire.drain()
        leaked = env.leaked(wire.received)
        assert not leaked, f"{len(leaked)} raw or reversed keys reached the client, e.g. {leaked[:3]}"
        assert rows(got) or errors(got), got
    finally:
        wire.close()


# ------------------------------------------------------------------ 5. approvals and names

REDEFINE = "prepare s as delete from jg_scratch where true"


@pytest.mark.parametrize(
    "first",
    ["delete from orders where true", "select id from jg_scratch where id = 1"],
    ids=["approved-write", "allowed-read"],
)
def test_statement_name_redefined_by_sql_does_not_inherit_a_review(env: Env, first: str) -> None:
    """A protocol statement that was approved once (or allowed) keeps its name; SQL DEALLOCATE
    and PREPARE give the name a different statement. Executing it through protocol
    Bind/Execute must be reviewed as what it now is, not run on the old statement's approval
    or verdict. The reviewer approves the first Parse and the PREPARE once each (a PREPARE
    runs nothing; SQL EXECUTE of it would be reviewed again) and denies anything else."""
    env.reviewer.approve = [first, REDEFINE]
    wire = env.connect()
    try:
        wire.send(m.parse_message("s", first), m.SYNC)
        parsed = wire.read(timeout=10)
        assert not errors(parsed), parsed
        assert not errors(wire.query("deallocate s"))
        prepared = wire.query(REDEFINE, timeout=10)
        assert not errors(prepared), prepared
        wire.send(bind("s"), execute(), m.SYNC)
        got = wire.read(timeout=10)
        with env.admin() as admin:
            left = admin.execute("select count(*) from jg_scratch").fetchone()
            orders = admin.execute("select count(*) from orders").fetchone()
        assert left == (20,), f"the redefined statement ran without review: {got}; reviews: {env.reviewer.seen}"
        assert orders is not None and orders[0] > 0
        assert errors(got), got
    finally:
        wire.close()


# ------------------------------------------------------------------ 6. lexer settings


def _setting(wire: Wire, name: str) -> str:
    got = rows(wire.query(f"show {name}"))
    assert len(got) == 1, got
    return str(got[0][0])


@pytest.mark.parametrize(
    ("statement", "setting"),
    [
        ("SET client_encoding TO latin9", "client_encoding"),
        ("select set_config('standard_conforming_strings','off',false)", "standard_conforming_strings"),
        ("SET standard_conforming_strings = off", "standard_conforming_strings"),
        ("SET backslash_quote = on", "backslash_quote"),
        ("ALTER ROLE CURRENT_USER SET standard_conforming_strings = off", "standard_conforming_strings"),
        ("select set_config('client_encoding','LATIN1',false)", "client_encoding"),
    ],
)
def test_lexer_settings_are_refused_and_stay(env: Env, statement: str, setting: str) -> None:
    wire = env.connect()
    try:
        before = _setting(wire, setting)
        got = wire.query(statement)
        codes = [e.get("C") for e in errors(got)]
        assert codes and codes[0] in ("42501", "0A000"), got
        assert rows(wire.query("select 1")) == [["1"]]  # the session goes on
        assert _setting(wire, setting) == before
        assert not wire.closed
    finally:
        wire.close()
    with env.admin() as admin:  # and nothing for later sessions either
        stored = admin.execute(
            "select setconfig from pg_db_role_setting where setrole = %s::regrole", (env.login,)
        ).fetchall()
    assert stored == [], stored
    later = env.connect()
    try:
        assert _setting(later, "standard_conforming_strings") == "on"
        assert _setting(later, "backslash_quote") == "safe_encoding"
    finally:
        later.close()


# ------------------------------------------------------------------ 7. hidden statements

#: With standard_conforming_strings on (the gateway's reading) this is one SELECT of two
#: strings; with it off, 'a\' || ' is one string and the UPDATE after it is code.
HIDDEN = "select 'a\\' || '; update customers set notes = $$x$$ where true; --'"

#: Ways a client might get standard_conforming_strings off in its session.
SCS_OFF: dict[str, tuple[dict[str, str], list[str]]] = {
    "set": ({}, ["set standard_conforming_strings = off"]),
    "set_config": ({}, ["select set_config('standard_conforming_strings', 'off', false)"]),
    "alter-role-then-reconnect": ({}, ["alter role current_user set standard_conforming_strings = off"]),
    "startup-options": ({"options": "-c standard_conforming_strings=off"}, []),
    "startup-parameter": ({"standard_conforming_strings": "off"}, []),
    # PostgreSQL splits `options` at any white space; the gateway re-quotes only spaces.
    "startup-options-tab": ({"options": '-c "application_name=x\t-c\tstandard_conforming_strings=off"'}, []),
    "startup-options-newline": ({"options": '-c "application_name=x\n-c\nstandard_conforming_strings=off"'}, []),
}


@pytest.mark.parametrize("route", list(SCS_OFF))
def test_no_statement_hides_behind_standard_conforming_strings(env: Env, route: str) -> None:
    params, statements = SCS_OFF[route]
    wire, start = connect(env.gw, env.token, **params)
    try:
        if start and start[-1][0] == "Z":
            for statement in statements:
                wire.query(statement)
            if route.endswith("reconnect"):
                wire.close()
                wire = env.connect()
            if not wire.closed:
                wire.query(HIDDEN)
    finally:
        wire.close()
    with env.admin() as admin:
        changed = admin.execute(
            "select count(*) from customers c join jg_notes n using (id) where c.notes is distinct from n.notes"
        ).fetchone()
    assert changed == (0,), f"the hidden UPDATE ran via {route}"


# ------------------------------------------------------------------ found while probing


@pytest.mark.parametrize(
    "sep", ["\t", "\n", "\r", "\v", "\f"], ids=["tab", "newline", "return", "vtab", "formfeed"]
)
def test_startup_options_cannot_smuggle_a_role(env: Env, sep: str) -> None:
    """The allow-list of start-up settings reads `options` with shell quoting; PostgreSQL
    splits it at any isspace() byte. White space inside a quoted allowed value (or \\v, \\f,
    which shell quoting does not split at even unquoted) must not become a second
    `-c role=...` at the server."""
    options = f'-c "application_name=x{sep}-c{sep}role={env.target}"'
    wire, start = connect(env.gw, env.token, options=options)
    try:
        if start and start[-1][0] == "Z" and not wire.closed:
            assert rows(wire.query("select current_user"))[0] == [env.login]
            assert _whoami(env, wire, f"startup-{ord(sep)}") == env.login
        else:
            assert [e.get("C") for e in errors(start)], start
    finally:
        wire.close()


def test_fast_path_result_is_masked_like_the_same_call_in_sql(env: Env) -> None:
    """`select jg_secret(1)` comes back masked; the same function called through the fast
    path answers with a FunctionCallResponse, which must not carry the raw value either."""
    secret = _oid(env, "jg_secret(int)")
    wire = env.connect()
    try:
        assert rows(wire.query("select jg_secret(1)")) == [["********"]]
        wire.send(function_call(secret, "1"))
        got = wire.read()
        leaked = env.leaked(wire.received)
        assert not leaked, f"the fast path returned {leaked}"
        assert any(k == "V" for k, _ in got) or errors(got), got
    finally:
        wire.close()


#: Ways the server closes a cursor without a CLOSE the gateway sees, then a Query to run next.
CLOSERS: dict[str, list[str]] = {
    "commit": ["begin; declare c cursor for select id, full_name from customers; commit", "begin"],
    "rollback": ["begin; declare c cursor for select id, full_name from customers; rollback", "begin"],
    "rollback-to-savepoint": ["begin; savepoint a; declare c cursor for select id, full_name from customers",
                              "rollback to a"],
    "error": ["begin; declare c cursor for select id, full_name from customers", "select 1/0", "rollback", "begin"],
    "close-all": ["begin; declare c cursor for select id, full_name from customers; close all"],
    "close-in-same-query": ["begin; declare c cursor for select id, full_name from customers; close c"],
    "discard-all": ["declare c cursor with hold for select id, full_name from customers", "discard all", "begin"],
}


@pytest.mark.parametrize("read", ["fetch", "execute"])
@pytest.mark.parametrize("closer", list(CLOSERS))
def test_cursor_closed_by_the_server_is_forgotten(env: Env, closer: str, read: str) -> None:
    """A cursor ends with its transaction (or subtransaction, or CLOSE ALL): the name is free
    on the server, and a function may open a refcursor under it. The rows of that new
    cursor must not be masked by what the old one was declared for."""
    wire = env.connect()
    try:
        for text in CLOSERS[closer]:
            wire.query(text)
        assert rows(wire.query("select jg_open('c')")) == [["c"]]
        if read == "fetch":
            got = wire.query("fetch 3 from c")
        else:
            wire.send(execute("c", 3), m.SYNC)
            got = wire.read()
        wire.query("rollback")
        leaked = env.leaked(wire.received)
        assert not leaked, f"{len(leaked)} raw or reversed values reached the client, e.g. {leaked[:3]}"
        assert rows(got) or errors(got), got
    finally:
        wire.close()


# ------------------------------------------------------------------ names the session redefines
#
# Each scenario is a function of a Wire, so the same bytes can be sent straight to PostgreSQL
# (where they return reversed API keys) as well as through the gateway (where they must not).


def _no_leak(env: Env, wire: Wire, got: list[Msg]) -> None:
    wire.drain()
    leaked = env.leaked(wire.received)
    assert not leaked, f"{len(leaked)} raw or reversed values reached the client, e.g. {leaked[:3]}"
    assert rows(got) or any(k == "d" for k, _ in got) or errors(got), got


#: A temporary object shadows the public table of the same name (the module's public
#: jg_notes(id, notes) and jg_scratch(id, note): harmless columns); COPY must read what the
#: server reads, the temporary one.
COPY_TEMP: dict[str, tuple[str, str]] = {
    "temp-table": (
        "create temp table jg_notes as select id, reverse(api_key) as api_key from customers",
        "copy jg_notes to stdout",
    ),
    "temp-table-binary": (
        "create temp table jg_notes as select id, reverse(api_key) as api_key from customers",
        "copy jg_notes (id, api_key) to stdout (format binary)",
    ),
    "temp-view-binary": (
        "create temp view jg_scratch as select id, reverse(api_key) api_key from customers",
        "copy (select * from jg_scratch) to stdout (format binary)",
    ),
}


def copy_from_temp(wire: Wire, variant: str) -> list[Msg]:
    create, copy = COPY_TEMP[variant]
    made = wire.query(create, timeout=10)
    assert not errors(made), made
    return wire.query(copy)


@pytest.mark.parametrize("variant", list(COPY_TEMP))
def test_copy_reads_the_temporary_object_that_shadows_a_table(env: Env, variant: str) -> None:
    env.reviewer.approve = [COPY_TEMP[variant][0]]  # in case creating it goes to review
    wire = env.connect()
    try:
        _no_leak(env, wire, copy_from_temp(wire, variant))
    finally:
        wire.close()


#: SQL PREPARE/EXECUTE/DEALLOCATE in one or two Queries: EXECUTE runs the statement the name
#: has at that point, not the one it has when the Query ends.
PREPARE_AGAIN: dict[str, list[str]] = {
    "two-queries": [
        "prepare p as select reverse(api_key) k from customers where id = 1",
        "execute p; deallocate p; prepare p as select 'x'::text k",
    ],
    "one-query": [
        "prepare p as select reverse(api_key) k from customers where id = 1; execute p; deallocate p;"
        " prepare p as select 'x'::text k; execute p",
    ],
    "cursor": [
        "begin; declare c cursor for select reverse(api_key) k from customers order by id",
        "fetch 2 from c; close c; declare c cursor for select 'x'::text k",
    ],
}


def redefine_in_query(wire: Wire, variant: str) -> list[Msg]:
    got: list[Msg] = []
    for text in PREPARE_AGAIN[variant]:
        got += wire.query(text)
    wire.query("rollback")
    return got


@pytest.mark.parametrize("variant", list(PREPARE_AGAIN))
def test_sql_name_redefined_later_in_the_query_masks_what_ran(env: Env, variant: str) -> None:
    wire = env.connect()
    try:
        _no_leak(env, wire, redefine_in_query(wire, variant))
    finally:
        wire.close()


#: A protocol portal over SQL EXECUTE / FETCH holds its rows from the first Execute; the SQL
#: name it ran is then redefined, and a second Execute returns more of the old rows.
PORTAL_OVER_NAME: dict[str, tuple[str, str, str]] = {
    "execute": (
        "begin; prepare p as select id, reverse(api_key) k from customers order by id",
        "execute p",
        "deallocate p; prepare p as select 1 as id, 'x'::text k",
    ),
    "fetch": (
        "begin; declare c cursor for select id, reverse(api_key) k from customers order by id",
        "fetch 10 from c",
        "close c; declare c cursor for select 1, 'x'",
    ),
}


def portal_over_redefined_name(wire: Wire, variant: str) -> list[Msg]:
    setup, text, redefine = PORTAL_OVER_NAME[variant]
    opened = wire.query(setup)
    assert not errors(opened), opened
    wire.send(m.parse_message("s", text), bind("s", "P1"), execute("P1", 1), m.SYNC)
    got = wire.read()
    wire.query(redefine)
    wire.send(execute("P1", 3), m.SYNC)
    got += wire.read()
    wire.query("rollback")
    return got


@pytest.mark.parametrize("variant", list(PORTAL_OVER_NAME))
def test_portal_over_a_sql_name_keeps_the_mask_of_what_it_ran(env: Env, variant: str) -> None:
    wire = env.connect()
    try:
        _no_leak(env, wire, portal_over_redefined_name(wire, variant))
    finally:
        wire.close()
