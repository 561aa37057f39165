"""Differential conformance: the same frontend messages, straight to PostgreSQL and through
the gateway, must get the same backend messages.

A hypothesis strategy generates sequences of raw frontend messages (tests/wire_client.py):
simple queries of several statements (some failing), extended batches over named and unnamed
statements and portals, Flush and Sync in odd places (an error with no Sync yet, then a
Query or a FunctionCall, then Sync), fast-path FunctionCalls that succeed and fail, SQL
cursors (DECLARE/FETCH/CLOSE, and protocol Execute of a DECLAREd cursor's portal), SQL
PREPARE/EXECUTE/DEALLOCATE (with names reused by protocol Parse and Bind), Execute with a row
limit (PortalSuspended), COPY TO STDOUT, COPY FROM STDIN into a temp table, transactions.

- `test_observe_mode_answers_like_postgres`: each sequence is sent on a fresh session
  directly to the upstream (as the role the gateway logs in as, same database) and on a
  fresh session through the gateway's `demo_observe` resource (policy `observe`: everything
  is forwarded, nothing masked); the normalised message streams must be identical.
- `test_agent_safe_never_delivers_a_masked_value`: the same kind of sequences (with more
  reads of the seeded PII in `customers`) through the `demo` resource (policy `agent-safe`,
  masking on): no raw value of a masked column, nor its reverse, may appear in any byte the
  gateway sends.
- `test_generated_sequences_are_deterministic_directly`: the harness checks itself: two
  direct sessions answer every generated sequence identically once normalised.
- Plain regression tests for sequences that broke the gateway's model of the session, each
  pinning PostgreSQL's own answer first; the `masked_` ones send the same shapes with reads
  of masked columns through agent-safe and require that nothing leaks.

The fixture creates schema `conformance` (table `items`, fixed rows, readable by the role
the gateway logs in as) in the `demo` database both sides use, and drops it afterwards; each
session starts with its own temp table `conf_tmp` for writes and COPY FROM STDIN.

Normalised away, because the gateway owns them or they vary between sessions: the
authentication exchange, ParameterStatus, BackendKeyData, NoticeResponses the gateway adds
(``jitgate: ...``), the file/line/routine fields of errors and notices, the upstream role
name (the gateway shows the client's user name instead), temp-schema names (``pg_temp_3``),
table OIDs in RowDescription (renumbered in order of appearance: temp tables differ per
session) and the sender pid of notifications.

Each sequence ends with a fixed trailer (Sync, ``rollback``, ``select 'conformance-end'``)
so the reader knows where the answers end; a gateway that answers less is caught by a quiet
period instead of a hang.

Runs: `.venv/bin/pytest tests/e2e/test_conformance.py` (50-60 examples per property, no
shrinking, well under a minute). `HYPOTHESIS_PROFILE=fuzz` runs thousands of examples and
shrinks a failure to a minimal sequence (no per-test timeout then). The settings are set on
each test rather than registered as global profiles, so that this module does not redefine
the `fuzz` profile of tests/fuzz/test_fuzz.py.
"""

from __future__ import annotations

import difflib
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from broker.demo.seed import DemoRoles
from broker.demo.upstream import MD5_USER, TRUST_USER, Upstream
from proxy.protocol import messages as m
from tests.e2e.conftest import Gateway
from tests.wire_client import (
    FLUSH,
    SYNC,
    Message,
    WireClient,
    bind,
    close,
    copy_data,
    copy_done,
    copy_fail,
    describe,
    error_fields,
    execute,
    function_call,
    parse,
    query,
)

pytestmark = pytest.mark.e2e

# -- run settings ----------------------------------------------------------------------------

_FUZZ = os.environ.get("HYPOTHESIS_PROFILE", "default") == "fuzz"
if _FUZZ:
    PROPERTY = settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
    SELF_CHECK = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    PROPERTY_TIMEOUT = 0  # pytest-timeout: none
else:
    # No shrinking by default: a failing example costs a quiet period per run, and shrinking
    # could take minutes. The fuzz profile shrinks.
    _QUICK = settings(
        deadline=None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    PROPERTY = settings(_QUICK, max_examples=60)
    SELF_CHECK = settings(_QUICK, max_examples=12)
    PROPERTY_TIMEOUT = 120

CLIENT_USER = "conf_agent"
MARKER = "conformance-end"
TRAILER = (SYNC, query("rollback"), query(f"select '{MARKER}'"))
PRELUDE = "create temp table conf_tmp (a int primary key, b text)"
#: How long a reader waits for one more message before it decides none will come: well above
#: the slowest statement the tests send (pg_sleep(0.2)) and a busy gateway's latency; only a
#: gateway that answers less than PostgreSQL pays it.
QUIET = 2.0
TIMEOUT = 15.0

# -- the statements the generator draws from ---------------------------------------------------

ITEMS = "conformance.items"
# qty - 3 is zero in row 4: `10 / (qty - 3)` fails after three rows were sent.
ITEM_ROWS = [(1, "item-1", 5), (2, "item-2", 4), (3, "item-3", 6), (4, "item-4", 3), (5, "item-5", 7), (6, "item-6", 2)]

SELECTS = [
    f"select id, name from {ITEMS} order by id",
    "select g, repeat('x', g) from generate_series(1, 5) g",
    f"select count(*) from {ITEMS}",
    f"select * from {ITEMS} where id = 99",
    "values (1, 'a'), (2, null)",
    "select a, b from conf_tmp order by a",
]
FAILING = [
    "select 1/0",
    f"select id, 10 / (qty - 3) from {ITEMS} order by id",
    "select x from nowhere",
    "selec 1",
    "select 'abc'::int",
]
WRITES = [
    "insert into conf_tmp values (1, 'one')",
    "insert into conf_tmp select g, 'g' || g from generate_series(2, 4) g",
    "delete from conf_tmp where a = 1",
]
MASKED = [
    "select id, ssn, email from customers where id <= 3 order by id",
    "select reverse(api_key) as k, phone from customers where id <= 2 order by id",
    "select card_number, upper(email) as e from customers where id = 1",
    "select c.full_name, c.ssn from customers c where c.id in (1, 2) order by c.id",
    "select string_agg(ssn, ',') from customers where id <= 3",
    "select api_key, password_hash from customers where id = 2",
]
#: Statements with one parameter (text "3" binds it).
WITH_PARAM = [
    "select $1::int + 1",
    f"select name from {ITEMS} where id = $1",
    "insert into conf_tmp values ($1, 'param')",
    "select ssn from customers where id = $1",
]
TXN = ["begin", "commit", "rollback", "savepoint sp", "rollback to savepoint sp", "release savepoint sp"]
COPY_OUT = [
    f"copy (select id, name from {ITEMS} order by id) to stdout",
    "copy (select id, ssn, api_key from customers where id <= 2 order by id) to stdout",
    "copy conf_tmp to stdout",
]
ROW_SOURCES = SELECTS + MASKED + FAILING[:2]

STATEMENT_NAMES = ["", "s1", "q1"]
PORTAL_NAMES = ["", "p1", "c1"]
SQL_PREPARED = ["q1", "s1"]


@dataclass(frozen=True)
class Step:
    label: str
    messages: tuple[bytes, ...]


@dataclass(frozen=True)
class Scenario:
    steps: tuple[Step, ...]
    #: How the bytes are written: 0 all at once, 1 one write per step, 2 cut at `cuts`.
    split: int = 0
    cuts: tuple[int, ...] = ()
    #: Seconds between writes: enough for separate segments, or (regressions) for the
    #: answers to the previous write to arrive first.
    pause: float = 0.002

    def __repr__(self) -> str:
        how = ["one write", "a write per step", f"cut at {list(self.cuts)}"][self.split]
        lines = "".join(f"\n    {i}: {s.label}" for i, s in enumerate(self.steps))
        return f"Scenario({how}):{lines}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # how hypothesis prints a draw
        printer.text(repr(self))

    def writes(self) -> list[bytes]:
        if self.split == 1:
            return [b"".join(s.messages) for s in self.steps] + [b"".join(TRAILER)]
        data = b"".join(msg for s in self.steps for msg in s.messages) + b"".join(TRAILER)
        if self.split == 0:
            return [data]
        points = sorted({c % len(data) for c in self.cuts if c % len(data)})
        return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _step(label: str, *messages: bytes) -> Step:
    return Step(label, tuple(messages))


# -- strategies ----------------------------------------------------------------------------------


def _simple_statements(masked: bool) -> st.SearchStrategy[str]:
    select = st.sampled_from(ROW_SOURCES if masked else SELECTS + MASKED[:2] + FAILING[:2])
    cursor = st.one_of(
        select.map(lambda s: f"declare c1 cursor for {s}"),
        select.map(lambda s: f"declare c1 cursor with hold for {s}"),
        st.sampled_from(["fetch 2 from c1", "fetch all from c1", "move 1 in c1", "close c1", "close all"]),
    )
    prepare = st.one_of(
        st.tuples(st.sampled_from(SQL_PREPARED), select).map(lambda t: f"prepare {t[0]} as {t[1]}"),
        st.sampled_from(SQL_PREPARED).map(lambda n: f"prepare {n} as select $1::int * 2"),
        st.sampled_from(
            ["execute q1", "execute q1(3)", "execute s1", "deallocate q1", "deallocate s1", "deallocate all"]
        ),
    )
    misc = st.sampled_from(
        [
            "listen conf_ch",
            "notify conf_ch, 'ping'",
            "listen conf_ch; notify conf_ch, 'pong'",
            "unlisten *",
            "do $$ begin raise notice 'from do'; end $$",
            "discard all",
            "select 1",
        ]
    )
    return st.one_of(
        st.sampled_from(SELECTS),
        st.sampled_from(FAILING),
        st.sampled_from(WRITES),
        st.sampled_from(MASKED if masked else MASKED[:3]),
        st.sampled_from(TXN),
        st.sampled_from(COPY_OUT),
        cursor,
        prepare,
        misc,
    )


def _simple_query(masked: bool) -> st.SearchStrategy[Step]:
    statements = st.lists(_simple_statements(masked), min_size=1, max_size=3).map("; ".join)
    text = st.one_of(statements, statements.map(lambda s: s + ";"), st.sampled_from(["", ";", " -- nothing"]))
    return text.map(lambda sql: _step(f"Q {sql!r}", query(sql)))


def _extended_op(masked: bool) -> st.SearchStrategy[Step]:
    plain = ROW_SOURCES + FAILING + WRITES + TXN + COPY_OUT[:1] + (MASKED if masked else [])
    sql = st.one_of(st.sampled_from(plain), st.sampled_from(WITH_PARAM))
    stmt = st.sampled_from(STATEMENT_NAMES)
    portal = st.sampled_from(PORTAL_NAMES)
    p = st.tuples(stmt, sql).map(lambda t: _step(f"Parse {t[0]!r} {t[1]!r}", parse(*t)))
    b = st.tuples(portal, stmt, st.sampled_from([(), ("3",)]), st.sampled_from([(), (0,), (1,)])).map(
        lambda t: _step(f"Bind {t[0]!r} <- {t[1]!r} params={t[2]} formats={t[3]}", bind(t[0], t[1], t[2],
                                                                                         result_formats=t[3]))
    )
    d = st.one_of(
        stmt.map(lambda n: _step(f"Describe S {n!r}", describe("S", n))),
        portal.map(lambda n: _step(f"Describe P {n!r}", describe("P", n))),
    )
    e = st.tuples(portal, st.sampled_from([0, 0, 1, 2])).map(
        lambda t: _step(f"Execute {t[0]!r} max_rows={t[1]}", execute(*t))
    )
    c = st.one_of(
        stmt.map(lambda n: _step(f"Close S {n!r}", close("S", n))),
        portal.map(lambda n: _step(f"Close P {n!r}", close("P", n))),
    )
    sync = st.just(_step("Sync", SYNC))
    flush = st.just(_step("Flush", FLUSH))
    # A whole unnamed round trip, so that batches often get as far as Execute.
    trip = st.tuples(sql, st.sampled_from([0, 0, 2]), st.booleans()).map(
        lambda t: _step(
            f"Parse/Bind/{'Describe/' if t[2] else ''}Execute {t[0]!r} max_rows={t[1]}",
            parse("", t[0]),
            bind("", "", ("3",) if "$1" in t[0] else ()),
            *((describe("P", ""),) if t[2] else ()),
            execute("", t[1]),
        )
    )
    return st.one_of(p, b, d, e, c, sync, flush, trip)


def _batch(masked: bool) -> st.SearchStrategy[Step]:
    """A coherent extended batch: Parse, Bind, maybe Describe, Execute (maybe with a row limit,
    maybe twice), maybe Close, then Sync, Flush, both or neither."""
    plain = ROW_SOURCES + FAILING + WRITES + TXN + COPY_OUT[:1] + (MASKED if masked else [])
    sql = st.one_of(st.sampled_from(plain), st.sampled_from(WITH_PARAM))
    parts = st.tuples(
        sql,
        st.sampled_from(STATEMENT_NAMES),
        st.sampled_from(PORTAL_NAMES),
        st.sampled_from(["", "S", "P"]),
        st.sampled_from([0, 0, 1, 2]),
        st.booleans(),
        st.booleans(),
        st.sampled_from(["Sync", "Sync", "Flush", "", "Flush, Sync"]),
        st.sampled_from([(), (1,)]),
    )

    def build(t: tuple[str, str, str, str, int, bool, bool, str, tuple[int, ...]]) -> Step:
        text, stmt, portal, desc, limit, again, close_it, end, formats = t
        msgs = [parse(stmt, text), bind(portal, stmt, ("3",) if "$1" in text else (), result_formats=formats)]
        label = [f"Parse {stmt!r} {text!r}", f"Bind {portal!r}{' binary' if formats else ''}"]
        if desc:
            msgs.append(describe(desc, stmt if desc == "S" else portal))
            label.append(f"Describe {desc}")
        msgs.append(execute(portal, limit))
        label.append(f"Execute max_rows={limit}")
        if again:
            msgs.append(execute(portal, 0))
            label.append("Execute")
        if close_it:
            msgs += [close("P", portal), close("S", stmt)]
            label.append("Close P, Close S")
        msgs += [{"Sync": SYNC, "Flush": FLUSH}[e] for e in end.split(", ") if e]
        if end:
            label.append(end)
        return Step(", ".join(label), tuple(msgs))

    return parts.map(build)


@dataclass(frozen=True)
class Functions:
    """OIDs of the functions the fast-path calls use (looked up in pg_proc)."""

    int4pl: int
    int4div: int
    upper: int


def _function_call(fns: Functions) -> st.SearchStrategy[Step]:
    calls = [
        ("int4pl(2, 3)", function_call(fns.int4pl, ["2", "3"])),
        ("int4pl(2, 3) binary result", function_call(fns.int4pl, ["2", "3"], result_format=1)),
        (
            "int4pl(7, 8) binary args",
            function_call(fns.int4pl, [struct.pack("!i", 7), struct.pack("!i", 8)], arg_formats=[1]),
        ),
        ("upper('abc')", function_call(fns.upper, ["abc"])),
        ("upper(NULL)", function_call(fns.upper, [None])),
        ("int4div(1, 0) fails", function_call(fns.int4div, ["1", "0"])),
        ("int4pl(2147483647, 1) fails", function_call(fns.int4pl, ["2147483647", "1"])),
        ("int4pl(1) wrong arity fails", function_call(fns.int4pl, ["1"])),
    ]
    return st.sampled_from(calls).map(lambda c: _step(f"FunctionCall {c[0]}", c[1]))


def _copy_in() -> st.SearchStrategy[Step]:
    data = st.lists(st.sampled_from(["10\tten\n", "11\televen\n12\ttwelve\n", "bad\trow\n", "1\tdup\n"]),
                    max_size=3)
    end = st.sampled_from(["done", "fail"])

    def simple(t: tuple[list[str], str]) -> Step:
        rows, how = t
        tail = copy_done() if how == "done" else copy_fail("client gave up")
        return _step(f"COPY FROM STDIN (Query) {rows} {how}", query("copy conf_tmp from stdin"),
                     *(copy_data(r) for r in rows), tail)

    def extended(t: tuple[list[str], str]) -> Step:
        rows, how = t
        tail = copy_done() if how == "done" else copy_fail("client gave up")
        return _step(
            f"COPY FROM STDIN (extended) {rows} {how}, Sync",
            parse("", "copy conf_tmp (a, b) from stdin"), bind("", ""), execute(""),
            *(copy_data(r) for r in rows), tail, SYNC,
        )

    return st.one_of(st.tuples(data, end).map(simple), st.tuples(data, end).map(extended))


def _macros(fns: Functions, masked: bool) -> st.SearchStrategy[Step]:
    # With masking on, the rows of these shapes are mostly masked columns.
    source = st.sampled_from(MASKED + MASKED + SELECTS[:2] if masked else SELECTS + MASKED[:2])
    sql = st.sampled_from(MASKED + MASKED + SELECTS if masked else SELECTS + MASKED[:2])
    # BEGIN; DECLARE; protocol Execute of the cursor's portal (no Bind) with a row limit.
    cursor_portal = st.tuples(source, st.sampled_from([1, 2, 0]), st.booleans()).map(
        lambda t: _step(
            f"Q 'begin; declare c1 cursor for {t[0]}', Execute 'c1' max_rows={t[1]}, Sync"
            + (", Execute 'c1', Sync" if t[2] else "") + ", Q 'commit'",
            query(f"begin; declare c1 cursor for {t[0]}"),
            execute("c1", t[1]), SYNC,
            *((execute("c1", 0), SYNC) if t[2] else ()),
            query("commit"),
        )
    )
    # SQL PREPARE, then protocol Bind of that name.
    prepared_bind = st.tuples(st.sampled_from(SQL_PREPARED), sql).map(
        lambda t: _step(
            f"Q 'prepare {t[0]} as {t[1]}', Bind '' <- {t[0]!r}, Execute, Sync",
            query(f"prepare {t[0]} as {t[1]}"), bind("", t[0]), execute(""), SYNC,
        )
    )
    # Parse s1; DEALLOCATE s1 and PREPARE s1 AS <other> in SQL; Bind s1.
    reuse = st.tuples(sql, sql).map(
        lambda t: _step(
            f"Parse 's1' {t[0]!r}, Q 'deallocate s1', Q 'prepare s1 as {t[1]}', Bind '' <- 's1', Execute, Sync",
            parse("s1", t[0]), query("deallocate s1"), query(f"prepare s1 as {t[1]}"),
            bind("", "s1"), execute(""), SYNC,
        )
    )
    # An error in an extended batch, then a Query or a FunctionCall before the Sync.
    between = st.one_of(
        st.sampled_from(SELECTS + (MASKED if masked else [])).map(lambda s: (f"Q {s!r}", query(s))),
        st.just(("FunctionCall int4pl(2, 3)", function_call(fns.int4pl, ["2", "3"]))),
        st.just(("FunctionCall int4div(1, 0)", function_call(fns.int4div, ["1", "0"]))),
    )
    error_then = st.tuples(st.sampled_from(["select 1/0", f"select id, 10 / (qty - 3) from {ITEMS}"]), between,
                           st.booleans()).map(
        lambda t: _step(
            f"Parse/Bind/Execute {t[0]!r}, {'Flush, ' if t[2] else ''}{t[1][0]}, Sync",
            parse("", t[0]), bind("", ""), execute(""), *((FLUSH,) if t[2] else ()), t[1][1], SYNC,
        )
    )
    return st.one_of(cursor_portal, prepared_bind, reuse, error_then)


def scenarios(fns: Functions, *, masked: bool = False, max_steps: int = 8) -> st.SearchStrategy[Scenario]:
    simple, batch, macros = _simple_query(masked), _batch(masked), _macros(fns, masked)
    step = st.one_of(
        simple, simple, simple, batch, batch, batch, _extended_op(masked), _function_call(fns), _copy_in(),
        macros, macros, *((macros, macros) if masked else ()),
    )
    return st.builds(
        Scenario,
        st.lists(step, min_size=1, max_size=max_steps).map(tuple),
        st.sampled_from([0, 0, 1, 2]),
        st.lists(st.integers(1, 10_000), min_size=1, max_size=4).map(tuple),
    )


# -- normalisation ---------------------------------------------------------------------------

_DROPPED_FIELDS = frozenset("FLR")
_TEMP_SCHEMA = re.compile(r"pg_temp_\d+")


def _fields_text(fields: Sequence[tuple[str, str]], users: Sequence[str]) -> str:
    out = []
    for code, value in fields:
        if code in _DROPPED_FIELDS:
            continue
        for user in users:
            value = value.replace(user, "<user>")
        out.append(f"{code}={_TEMP_SCHEMA.sub('pg_temp', value)!r}")
    return " ".join(out)


def normalise(messages: Sequence[Message], users: Sequence[str] = ()) -> list[str]:
    """The messages as comparable lines, without what the gateway owns or what varies."""
    lines: list[str] = []
    tables: dict[int, int] = {}
    for msg in messages:
        kind, body = msg.kind, msg.body
        if kind in "SKRv":
            continue
        if kind in "EN":
            fields = error_fields(body)
            if kind == "N" and (m.field(fields, "M") or "").startswith("jitgate:"):
                continue
            lines.append(f"{kind} {_fields_text(fields, users)}")
        elif kind == "T":
            cols = []
            for f in m.parse_row_description(body):
                table = tables.setdefault(f.table_oid, len(tables)) if f.table_oid else "-"
                cols.append(f"{f.name}:{f.type_oid}/{f.type_size}/{f.type_modifier} t{table}.{f.column} fmt{f.format}")
            lines.append("T " + ", ".join(cols))
        elif kind == "D":
            lines.append(f"D {m.parse_data_row(body)!r}")
        elif kind == "A":
            channel, pos = m.read_cstring(body, 4)
            payload, _ = m.read_cstring(body, pos)
            lines.append(f"A {channel!r} {payload!r}")
        elif kind in "CZ":
            text = body.rstrip(b"\0").decode("utf-8", "replace")
            lines.append(f"{kind} {text}")
        else:
            lines.append(f"{kind} {body!r}" if body else kind)
    return lines


# -- running a scenario ----------------------------------------------------------------------


class Env:
    """The two ends a scenario runs against, and what must never leak. A plain class, not a
    dataclass: hypothesis prints a failing example's arguments field by field."""

    def __init__(
        self, upstream: Upstream, roles: DemoRoles, gateway: Gateway, fns: Functions, forbidden: frozenset[str]
    ) -> None:
        self.upstream = upstream
        self.roles = roles
        self.gateway = gateway
        self.fns = fns
        self.forbidden = forbidden
        self.tokens: dict[str, str] = {}

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"Env(upstream={self.upstream.host}:{self.upstream.port}, gateway=127.0.0.1:{self.gateway.port})"

    @property
    def users(self) -> tuple[str, ...]:
        return (self.roles.rw_user, CLIENT_USER)

    def direct(self) -> WireClient:
        """A session on the upstream as the role the gateway logs in as, same database."""
        return WireClient.connect(
            self.upstream.host, self.upstream.port, user=self.roles.rw_user, database=self.roles.dbname,
            password=self.roles.rw_password,
        )

    def proxied(self, resource: str) -> WireClient:
        if resource not in self.tokens:
            self.tokens[resource] = self.gateway.issue(resource)
        return WireClient.connect(
            "127.0.0.1", self.gateway.port, user=CLIENT_USER, database=resource, password=self.tokens[resource]
        )


def _prelude(client: WireClient) -> None:
    result = client.exchange(query(PRELUDE), timeout=TIMEOUT)  # a session must get this far
    assert normalise(result.messages) == ["C CREATE TABLE", "Z I"], normalise(result.messages)


def _send(client: WireClient, scenario: Scenario) -> None:
    for i, data in enumerate(scenario.writes()):
        if i:
            time.sleep(scenario.pause)
        try:
            client.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return  # the peer closed (a gateway ends a session with FATAL): read what it said


def _ends_with_marker(messages: Sequence[Message]) -> bool:
    return (
        len(messages) >= 3
        and messages[-1].kind == "Z"
        and messages[-2].kind == "C"
        and messages[-3].kind == "D"
        and m.parse_data_row(messages[-3].body) == [MARKER.encode()]
    )


def read_to_marker(client: WireClient) -> list[Message]:
    """Everything up to the trailer's last ReadyForQuery, the peer closing, or a quiet period."""
    out: list[Message] = []
    deadline = time.monotonic() + TIMEOUT
    while not _ends_with_marker(out):
        result = client.read(1, timeout=max(deadline - time.monotonic(), 0.0), quiet=QUIET)
        out += result.messages
        if result.reason != "ready":
            break
    return out


def run(client: WireClient, scenario: Scenario) -> list[Message]:
    with client:
        _prelude(client)
        _send(client, scenario)
        return read_to_marker(client)


def run_expecting(client: WireClient, scenario: Scenario, ready: int) -> list[Message]:
    """Through the gateway: as many ReadyForQuery as PostgreSQL sent (or a quiet period),
    then a short look for anything extra."""
    with client:
        _prelude(client)
        _send(client, scenario)
        result = client.read(ready, timeout=TIMEOUT, quiet=QUIET)
        extra = client.read(None, timeout=0.05, quiet=0.05) if result.reason == "ready" else None
        return result.messages + (extra.messages if extra is not None else [])


def assert_same(env: Env, scenario: Scenario, direct: list[Message], proxied: list[Message]) -> None:
    want, got = normalise(direct, env.users), normalise(proxied, env.users)
    assert _ends_with_marker(direct), f"the direct run did not finish:\n{scenario!r}\n" + "\n".join(want)
    if want != got:
        diff = "\n".join(difflib.unified_diff(want, got, "postgresql", "gateway", lineterm="", n=4))
        pytest.fail(f"the gateway answered differently from PostgreSQL\n{scenario!r}\n{diff}", pytrace=False)


def compare(env: Env, scenario: Scenario, resource: str = "demo_observe") -> list[Message]:
    direct = run(env.direct(), scenario)
    proxied = run_expecting(env.proxied(resource), scenario, sum(1 for msg in direct if msg.kind == "Z"))
    assert_same(env, scenario, direct, proxied)
    return direct


def leaks(env: Env, messages: Sequence[Message]) -> list[str]:
    blob = b"".join(msg.raw() for msg in messages)
    return sorted(v for v in env.forbidden if v.encode() in blob)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(upstream: Upstream, demo_roles: DemoRoles, gateway: Gateway) -> Iterator[Env]:
    with psycopg.connect(upstream.dsn(demo_roles.dbname), autocommit=True) as admin:
        admin.execute("drop schema if exists conformance cascade")
        admin.execute("create schema conformance")
        admin.execute(f"create table {ITEMS} (id int primary key, name text not null, qty int not null)")
        with admin.cursor() as cur:
            cur.executemany(f"insert into {ITEMS} values (%s, %s, %s)", ITEM_ROWS)
        admin.execute(f"grant usage on schema conformance to {demo_roles.rw_user}")
        admin.execute(f"grant select on all tables in schema conformance to {demo_roles.rw_user}")
        oids = {
            name: admin.execute(f"select '{sig}'::regprocedure::oid").fetchone()[0]  # type: ignore[index]
            for name, sig in (("int4pl", "int4pl(int4,int4)"), ("int4div", "int4div(int4,int4)"),
                              ("upper", "upper(text)"))
        }
        rows = admin.execute("select ssn, email, phone, card_number, api_key, password_hash from customers").fetchall()
    forbidden: set[str] = set()
    for row in rows:
        for value in row:
            if value and len(value) >= 8:
                forbidden |= {value, value[::-1]}
    try:
        yield Env(upstream, demo_roles, gateway, Functions(**oids), frozenset(forbidden))
    finally:
        with psycopg.connect(upstream.dsn(demo_roles.dbname), autocommit=True) as admin:
            admin.execute("drop schema if exists conformance cascade")


# -- the harness checks itself -------------------------------------------------------------------


def test_wire_client_speaks_every_auth_method(env: Env) -> None:
    up = env.upstream
    sessions = [
        env.direct(),  # SCRAM-SHA-256
        WireClient.connect(up.host, up.port, user=MD5_USER, database="demo", password=up.md5user_password),
        WireClient.connect(up.host, up.port, user=TRUST_USER, database="demo"),
        env.proxied("demo_observe"),  # cleartext token to the gateway
    ]
    for client in sessions:
        with client:
            assert client.startup_messages[0].kind == "R" and client.startup_messages[-1].kind == "Z"
            assert client.backend_key is not None
            assert client.exchange(query("select 1")).kinds == "TDCZ"


@pytest.mark.timeout(PROPERTY_TIMEOUT)
@SELF_CHECK
@given(data=st.data())
def test_generated_sequences_are_deterministic_directly(env: Env, data: st.DataObject) -> None:
    """Two direct sessions answer a sequence identically once normalised (else the
    differential test would report noise), and every sequence runs to its end."""
    scenario = data.draw(scenarios(env.fns, masked=True), label="scenario")
    first = run(env.direct(), scenario)
    second = run(env.direct(), scenario)
    assert_same(env, scenario, first, second)


def test_masked_statements_return_raw_values_directly(env: Env) -> None:
    """Sanity: straight from PostgreSQL the masked statements do show the seeded values, so
    the leak check below means something."""
    scenario = Scenario(tuple(_step(f"Q {s!r}", query(s)) for s in MASKED + COPY_OUT[1:2]))
    direct = run(env.direct(), scenario)
    assert _ends_with_marker(direct)
    per_statement = [leaks(env, [msg]) for msg in direct if msg.kind in "Dd"]
    assert len(leaks(env, direct)) >= 10 and sum(1 for found in per_statement if found) >= 8


# -- the properties --------------------------------------------------------------------------------


@pytest.mark.timeout(PROPERTY_TIMEOUT)
@PROPERTY
@given(data=st.data())
def test_observe_mode_answers_like_postgres(env: Env, data: st.DataObject) -> None:
    scenario = data.draw(scenarios(env.fns), label="scenario")
    compare(env, scenario)


@pytest.mark.timeout(PROPERTY_TIMEOUT)
@PROPERTY
@given(data=st.data())
def test_agent_safe_never_delivers_a_masked_value(env: Env, data: st.DataObject) -> None:
    scenario = data.draw(scenarios(env.fns, masked=True), label="scenario")
    with env.proxied("demo") as client:
        _prelude(client)
        _send(client, scenario)
        messages = read_to_marker(client)
    found = leaks(env, messages)
    assert not found, f"raw masked values reached the client: {found[:3]}\n{scenario!r}\n" + "\n".join(
        line for line in normalise(messages) if any(v in line for v in found)
    )


# -- regressions --------------------------------------------------------------------------------
#
# Each pins what PostgreSQL itself answers (so the test is known to be right), then requires
# the same from the gateway in observe mode. The `masked_` variants send the same shape with
# reads of masked columns through agent-safe and require that nothing leaks.

_END = ["Z I", "N", "C ROLLBACK", "Z I", "T", "D", "C SELECT 1", "Z I"]  # the trailer's answers


def _shape(env: Env, messages: Sequence[Message]) -> list[str]:
    """Kinds (and tags / statuses) only: what the regressions pin for PostgreSQL."""
    out = []
    for line in normalise(messages, env.users):
        kind = line[0]
        out.append(line if kind in "CZ" else kind)
    return out


def _scenario(*steps: tuple[str, Sequence[bytes]]) -> Scenario:
    return Scenario(tuple(_step(label, *msgs) for label, msgs in steps))


def _function_fails_then_slow_query(env: Env, sql: str) -> Scenario:
    return _scenario(
        ("FunctionCall int4div(1, 0) + Q pg_sleep in one write",
         [function_call(env.fns.int4div, ["1", "0"]), query(sql)]),
    )


def test_failing_function_call_then_slow_query(env: Env) -> None:
    """(a) A FunctionCall is answered like a simple Query: its error does not make the server
    skip the Query sent right behind it."""
    direct = compare(env, _function_fails_then_slow_query(env, "select pg_sleep(0.2), 1"))
    assert _shape(env, direct) == ["E", "Z I", "T", "D", "C SELECT 1", "Z I", *_END]


def _error_then_query(first: str, second: str) -> Scenario:
    return _scenario(
        ("Parse/Bind/Execute 'select 1/0', no Sync", [parse("", "select 1/0"), bind("", ""), execute("")]),
        (f"Q {first!r} (discarded by the server)", [query(first)]),
        ("Sync", [SYNC]),
        (f"Q {second!r}", [query(second)]),
    )


def test_query_between_failed_execute_and_sync_gets_no_answer(env: Env) -> None:
    """(b) After an error in an extended batch the server discards everything up to Sync, a
    simple Query included: `select 2` gets no answer at all, `select 3` does."""
    direct = compare(env, _error_then_query("select 2", "select 3"))
    assert _shape(env, direct) == ["1", "E", "Z I", "T", "D", "C SELECT 1", "Z I", *_END]
    assert [m.parse_data_row(msg.body) for msg in direct if msg.kind == "D"][0] == [b"3"]


def _cursor_portal(sql: str) -> Scenario:
    return _scenario(
        (f"Q begin; declare c cursor for {sql}", [query(f"begin; declare c cursor for {sql}")]),
        ("Execute 'c' max_rows=2, Sync", [execute("c", 2), SYNC]),
        ("Execute 'c', Sync", [execute("c", 0), SYNC]),
        ("Q commit", [query("commit")]),
    )


def test_execute_of_a_declared_cursor_portal(env: Env) -> None:
    """(c) A cursor opened by SQL DECLARE is a portal: protocol Execute (no Bind) fetches from
    it, with a row limit answered by PortalSuspended."""
    direct = compare(env, _cursor_portal(f"select id, name from {ITEMS} order by id"))
    assert _shape(env, direct) == [
        "C BEGIN", "C DECLARE CURSOR", "Z T",
        "D", "D", "s", "Z T",
        "D", "D", "D", "D", "C SELECT 4", "Z T",
        "C COMMIT", "Z I", *_END,
    ]


def _reused_name(first: str, second: str) -> Scenario:
    return _scenario(
        (f"Parse 's' {first!r}", [parse("s", first)]),
        ("Q deallocate s", [query("deallocate s")]),
        (f"Q prepare s as {second}", [query(f"prepare s as {second}")]),
        ("Bind '' <- 's', Execute, Sync", [bind("", "s"), execute(""), SYNC]),
    )


def test_statement_name_reused_by_sql_prepare(env: Env) -> None:
    """(d) DEALLOCATE drops a protocol-prepared statement and PREPARE reuses its name: Bind
    then runs the SQL-prepared statement."""
    direct = compare(env, _reused_name("select 1", f"select id, name from {ITEMS} where id <= 2 order by id"))
    assert _shape(env, direct) == [
        "1", "C DEALLOCATE", "Z I", "C PREPARE", "Z I", "2", "D", "D", "C SELECT 2", "Z I", *_END,
    ]


def test_function_call_between_failed_execute_and_sync_gets_no_answer(env: Env) -> None:
    """A FunctionCall after an extended-batch error is discarded like a Query, and the next
    FunctionCall after Sync runs normally."""
    scenario = _scenario(
        ("Parse/Bind/Execute 'select 1/0', no Sync", [parse("", "select 1/0"), bind("", ""), execute("")]),
        ("FunctionCall int4pl(2, 3) (discarded)", [function_call(env.fns.int4pl, ["2", "3"])]),
        ("Sync", [SYNC]),
        ("FunctionCall int4pl(4, 5)", [function_call(env.fns.int4pl, ["4", "5"])]),
    )
    direct = compare(env, scenario)
    assert _shape(env, direct) == ["1", "E", "Z I", "V", "Z I", *_END]


def test_bind_of_a_sql_prepared_statement(env: Env) -> None:
    """A statement created by SQL PREPARE is bound and executed with protocol messages."""
    scenario = _scenario(
        (f"Q prepare q as select name from {ITEMS} where id = $1",
         [query(f"prepare q as select name from {ITEMS} where id = $1")]),
        ("Bind 'p' <- 'q' ('2'), Describe P, Execute, Sync",
         [bind("p", "q", ["2"]), describe("P", "p"), execute("p"), SYNC]),
    )
    direct = compare(env, scenario)
    assert _shape(env, direct) == ["C PREPARE", "Z I", "2", "T", "D", "C SELECT 1", "Z I", *_END]


def _after_an_unsynced_error(sql: str) -> Scenario:
    """An Execute fails with no Sync yet, and its error reaches the client before the next
    batch is written: the server still discards that batch, up to its Sync."""
    return Scenario(
        (
            _step("Execute 'nope' (no such portal), no Sync", execute("nope")),
            _step(f"Parse/Bind/Execute {sql!r}, Sync (discarded up to the Sync)",
                  parse("", sql), bind("", ""), execute(""), SYNC),
            _step(f"Q {sql!r}", query(sql)),
        ),
        split=1,
        pause=0.3,
    )


def test_batch_written_after_an_unsynced_error_arrived(env: Env) -> None:
    direct = compare(env, _after_an_unsynced_error(f"select id, name from {ITEMS} where id <= 2 order by id"))
    assert _shape(env, direct) == ["E", "Z I", "T", "D", "D", "C SELECT 2", "Z I", *_END]


def _assert_nothing_leaks(env: Env, scenario: Scenario) -> list[Message]:
    direct = run(env.direct(), scenario)
    assert leaks(env, direct), "sanity: PostgreSQL itself returns the raw values"
    with env.proxied("demo") as client:
        _prelude(client)
        _send(client, scenario)
        messages = read_to_marker(client)
    found = leaks(env, messages)
    assert not found, f"raw masked values reached the client: {found[:3]}\n{scenario!r}\n" + "\n".join(
        normalise(messages)
    )
    return messages


def test_masked_failing_function_call_then_query(env: Env) -> None:
    _assert_nothing_leaks(
        env, _function_fails_then_slow_query(env, "select pg_sleep(0.2), ssn, api_key from customers where id <= 2")
    )


def test_masked_query_between_failed_execute_and_sync(env: Env) -> None:
    _assert_nothing_leaks(
        env,
        _error_then_query("select ssn from customers where id = 1", "select email, ssn from customers where id = 2"),
    )


def test_masked_execute_of_a_declared_cursor_portal(env: Env) -> None:
    _assert_nothing_leaks(env, _cursor_portal("select id, ssn, api_key from customers where id <= 5 order by id"))


def test_masked_statement_name_reused_by_sql_prepare(env: Env) -> None:
    _assert_nothing_leaks(
        env, _reused_name(f"select id from {ITEMS}", "select reverse(api_key) as k, ssn from customers where id <= 2")
    )


def test_masked_batch_written_after_an_unsynced_error_arrived(env: Env) -> None:
    _assert_nothing_leaks(
        env, _after_an_unsynced_error("select full_name, ssn from customers where id <= 2 order by id")
    )


def test_failed_parse_of_an_existing_name_keeps_the_statement(env: Env) -> None:
    """Parse of a name that is already prepared fails (42P05) and leaves the existing
    statement in place: a later Bind of that name runs it."""
    scenario = _scenario(
        ("Q prepare s1 as select 2", [query("prepare s1 as select 2")]),
        ("Parse 's1' 'select 1' (fails: exists), Sync", [parse("s1", "select 1"), SYNC]),
        ("Bind '' <- 's1', Execute, Sync", [bind("", "s1"), execute(""), SYNC]),
    )
    direct = compare(env, scenario)
    assert _shape(env, direct) == ["C PREPARE", "Z I", "E", "Z I", "2", "D", "C SELECT 1", "Z I", *_END]


def _copy_in_batch(*before: bytes) -> Scenario:
    return _scenario(
        ("before", list(before)),
        ("Parse/Bind/Execute 'copy conf_tmp from stdin', CopyData, CopyDone, Sync",
         [parse("", "copy conf_tmp from stdin"), bind("", ""), execute(""), copy_data("7\tseven\n"), copy_done(),
          SYNC]),
        ("Q select a, b from conf_tmp", [query("select a, b from conf_tmp")]),
    )


def test_pipelined_extended_copy_in_then_query(env: Env) -> None:
    """An extended-protocol COPY FROM STDIN whose data, CopyDone and Sync are written right
    behind it, then a Query, all in one write: the COPY is over before the Query is read."""
    direct = compare(env, _copy_in_batch())
    assert _shape(env, direct) == ["1", "2", "G", "C COPY 1", "Z I", "T", "D", "C SELECT 1", "Z I", *_END]


def test_extended_copy_in_discarded_after_an_error(env: Env) -> None:
    """After an error with no Sync yet, the server discards the COPY's Parse/Bind/Execute and
    its CopyData/CopyDone up to the Sync: no COPY runs, and the Query after it is answered."""
    direct = compare(env, _copy_in_batch(describe("S", "nope")))
    assert _shape(env, direct) == ["E", "Z I", "T", "C SELECT 0", "Z I", *_END]


@pytest.mark.parametrize("in_block", [False, True], ids=["implicit", "in-begin"])
def test_execute_of_a_finished_copy_in_portal(env: Env, in_block: bool) -> None:
    """Executing the unnamed portal of a COPY FROM STDIN again does not restart the COPY: after
    its Sync the portal is gone (34000), inside BEGIN it cannot be run again (55000)."""
    scenario = _scenario(
        *((("Q begin", [query("begin")]),) if in_block else ()),
        ("Parse/Bind/Execute 'copy conf_tmp from stdin', CopyData, CopyDone, Sync",
         [parse("", "copy conf_tmp from stdin"), bind("", ""), execute(""), copy_data("7\tseven\n"), copy_done(),
          SYNC]),
        ("Execute '' again (no Sync)", [execute("")]),
    )
    direct = compare(env, scenario)
    copy = ["1", "2", "G", "C COPY 1"]
    if in_block:
        expected = ["C BEGIN", "Z T", *copy, "Z T", "E", "Z E", "C ROLLBACK", "Z I", "T", "D", "C SELECT 1", "Z I"]
    else:
        expected = [*copy, "Z I", "E", *_END]
    assert _shape(env, direct) == expected
