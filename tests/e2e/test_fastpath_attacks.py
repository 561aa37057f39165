"""Attacks on the fast path with a raw wire client (found by red-teaming it): each runs with
the fast path on and off, and must give what the full machine gives."""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest

from broker.demo.upstream import Upstream
from broker.metrics import FAST_PATH
from broker.store import StatementInfo
from proxy.protocol import messages as m
from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["fast", "full"])
def mode(request, monkeypatch):
    """Run each attack with the fast path on and off (the control)."""
    if request.param == "full":
        import functools

        import proxy.session as ps
        from proxy.machine import SessionMachine

        monkeypatch.setattr(ps, "SessionMachine", functools.partial(SessionMachine, fast_path=False))
    return request.param


class Wire:
    def __init__(self, gw: Gateway, app: str = "rt") -> None:
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(m.build_startup_message({"user": "agent", "database": "demo", "application_name": app}))
        assert s.recv(9)[:1] == b"R"
        s.sendall(m.password_message(gw.token().encode() + b"\0"))
        self.s = s
        self.buf = b""
        self.until_ready()

    def until_ready(self) -> list[tuple[bytes, bytes]]:
        out = []
        while True:
            while len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) < 1 + n:
                    break
                kind, body = self.buf[:1], self.buf[5 : 1 + n]
                self.buf = self.buf[1 + n :]
                out.append((kind, body))
                if kind == b"Z":
                    return out
                if kind == b"E" and b"FATAL" in body:
                    return out
            data = self.s.recv(65536)
            if not data:
                out.append((b"EOF", b""))
                return out
            self.buf += data

    def send(self, *msgs: bytes) -> list[tuple[bytes, bytes]]:
        self.s.sendall(b"".join(msgs))
        return self.until_ready()

    def query(self, sql: str) -> list[tuple[bytes, bytes]]:
        return self.send(m.query_message(sql))


def bind(portal: str, stmt: str, params: list[bytes | None] = (), results: tuple[int, ...] = ()) -> bytes:
    body = m.cstr(portal) + m.cstr(stmt) + struct.pack("!h", 0) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    body += struct.pack("!h", len(results)) + b"".join(struct.pack("!h", r) for r in results)
    return m.frame(b"B", body)


def execute(portal: str = "", limit: int = 0) -> bytes:
    return m.frame(b"E", m.cstr(portal) + struct.pack("!i", limit))


SYNC = m.frame(b"S", b"")


def rows(answer: list[tuple[bytes, bytes]]) -> list[list[bytes | None]]:
    return [m.parse_data_row(body) for kind, body in answer if kind == b"D"]


def kinds(answer):
    return b"".join(k for k, _ in answer)


def errors(answer):
    return [m.parse_fields(b) for k, b in answer if k == b"E"]


def _ssn(upstream: Upstream, cid: int = 1) -> str:
    with psycopg.connect(upstream.dsn("demo")) as direct:
        return direct.execute("select ssn from customers where id = %s", (cid,)).fetchone()[0]


def test_sql_prepare_and_deallocate_in_repeated_batches_are_tracked(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """Repeated protocol statements holding SQL PREPARE/DEALLOCATE: once the fast path ran them
    without telling the model, which then masked `EXECUTE x` by a definition the server no
    longer had. They never go the fast way now."""
    ssn = _ssn(upstream)
    w = Wire(gateway)
    # Named protocol statements holding SQL PREPARE/DEALLOCATE, described (asyncpg style).
    a = w.send(m.parse_message("pA", "PREPARE x AS SELECT replace(ssn, '-', '/') AS v FROM customers WHERE id = 1"),
               m.describe_message("S", "pA"), m.parse_message("pD", "DEALLOCATE x"),
               m.describe_message("S", "pD"), SYNC)
    assert not errors(a), a
    before = FAST_PATH.answered
    for _ in range(2):  # learned the full way, then once the fast way
        assert not errors(w.send(bind("", "pA"), execute(), SYNC))
        assert not errors(w.send(bind("", "pD"), execute(), SYNC))
    # Both agree now: no x.  The gateway is told x = full_name ...
    assert not errors(w.query("PREPARE x AS SELECT full_name AS v FROM customers WHERE id = 1"))
    # ... then x is dropped and redefined as the ssn query by fast batches.
    assert not errors(w.send(bind("", "pD"), execute(), SYNC))
    assert not errors(w.send(bind("", "pA"), execute(), SYNC))
    fast = FAST_PATH.answered - before
    got = w.query("EXECUTE x")
    assert fast >= 0
    values = rows(got)
    assert values and values[0][0] != ssn.replace('-', '/').encode(), f"unmasked ssn read: {values}"


def _recorded(gw: Gateway, app: str) -> list[StatementInfo]:
    return gw.ended_statements(app)


def test_a_statement_redefined_by_repeated_batches_is_run_as_redefined(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """asyncpg-style Bind/Execute/Sync of s1 after the server's s1 was swapped by repeated
    DEALLOCATE/PREPARE batches: judged, masked and recorded as the new s1."""
    ssn = _ssn(upstream).replace("-", "/").encode()
    app = f"rt-swap-{mode}"
    w = Wire(gateway, app)
    assert not errors(w.send(
        m.parse_message("pD", "DEALLOCATE s1"), m.describe_message("S", "pD"),
        m.parse_message("pA", "PREPARE s1 (int) AS SELECT replace(ssn, '-', '/') AS v FROM customers WHERE id = $1"),
        m.describe_message("S", "pA"), SYNC))
    assert not errors(w.send(bind("", "pA"), execute(), SYNC))  # learned (full)
    assert not errors(w.send(bind("", "pD"), execute(), SYNC))  # learned (full)
    assert not errors(w.send(m.parse_message("s1", "SELECT full_name AS v FROM customers WHERE id = $1", [23]),
                             m.describe_message("S", "s1"), SYNC))
    for _ in range(2):
        assert not errors(w.send(bind("", "s1", [b"1"]), execute(), SYNC))
    assert not errors(w.send(bind("", "pD"), execute(), SYNC))
    assert not errors(w.send(bind("", "pA"), execute(), SYNC))
    got = w.send(bind("", "s1", [b"1"]), execute(), SYNC)
    w.send(m.frame(b"X", b""))
    w.s.close()
    recs = _recorded(gateway, app)
    assert "replace(ssn" in recs[-1].sql and recs[-1].masked_values >= 1, recs[-1]
    assert rows(got) and rows(got)[0][0] != ssn, f"ssn read unmasked: {rows(got)}"


def test_describe_of_one_portal_does_not_plan_another(gateway: Gateway, upstream: Upstream) -> None:
    ssn = _ssn(upstream).replace("-", "/").encode()
    w = Wire(gateway, "rt-describe")
    assert not errors(w.send(
        m.parse_message("sn", "SELECT full_name AS v FROM customers WHERE id = 1"),
        m.parse_message("ss", "SELECT replace(ssn, '-', '/') AS v FROM customers WHERE id = 1"), SYNC))
    got = w.send(bind("", "sn"), m.describe_message("P", ""), bind("", "ss"), execute(), SYNC)
    assert rows(got) and rows(got)[0][0] != ssn
    # named portals in a transaction, Describe of a, Execute of a rebound (fails), b
    w.query("BEGIN")
    got = w.send(bind("a", "sn"), m.describe_message("P", "a"), bind("b", "ss"), execute("b"), execute("a"), SYNC)
    assert all(r[0] != ssn for r in rows(got))
    w.query("COMMIT")


def test_simple_queries_of_one_shape_are_masked_and_recorded_each(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """Simple Queries that differ only in a literal share the policy's verdict, and so a
    template: each is masked as the full machine masks it, and recorded with its own text."""
    with psycopg.connect(upstream.dsn("demo")) as direct:
        emails = {r[0]: r[1] for r in direct.execute("select id, email from customers where id <= 5")}
    app = f"rt-simple-{mode}"
    w = Wire(gateway, app)
    before = FAST_PATH.answered
    got = {}
    for cid in sorted(emails):
        answer = w.query(f"SELECT email FROM customers WHERE id = {cid}")
        assert not errors(answer), answer
        got[cid] = rows(answer)[0][0]
    w.send(m.frame(b"X", b""))
    w.s.close()
    assert all(value is not None and emails[cid].encode() not in value for cid, value in got.items()), got
    if mode == "fast":
        assert FAST_PATH.answered - before == len(emails) - 1
    recorded = [r for r in _recorded(gateway, app) if r.sql.startswith("SELECT email")]
    assert [r.sql for r in recorded] == [f"SELECT email FROM customers WHERE id = {cid}" for cid in sorted(emails)]
    assert all(r.masked_values == 1 for r in recorded)


def test_a_statement_whose_client_leaves_before_its_answer_is_recorded(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """Found by red-teaming: a statement was recorded only when its answer came, so a client
    that closed right after sending a write left a row on the server and no record. Now what
    was sent and never answered is recorded at the session's end, outcome unknown (08006)."""
    import time

    app, table = f"rt-leave-{mode}", f"rt_leave_{mode}"
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"drop table if exists {table}")
        admin.execute(f"create table {table} (v text)")
        admin.execute(f"grant select, insert on {table} to public")
    try:
        w = Wire(gateway, app)
        insert = f"INSERT INTO {table} VALUES ((SELECT $1::text FROM pg_sleep(0.3)))"
        assert not errors(w.send(m.parse_message("ins", insert), m.describe_message("S", "ins"), SYNC))
        for i in range(3):
            assert not errors(w.send(bind("", "ins", [f"{i}".encode()]), execute(), SYNC))
        w.s.sendall(bind("", "ins", [b"left"]) + execute() + SYNC)
        w.s.close()  # gone before the answer
        time.sleep(1.0)
        with psycopg.connect(upstream.dsn("demo")) as direct:
            (stored,) = direct.execute(f"select count(*) from {table} where v = 'left'").fetchone()  # type: ignore[misc]
        recs = [r for r in _recorded(gateway, app) if r.sql == insert]
        assert stored == 1
        assert [(r.error_sqlstate, r.rows) for r in recs] == [(None, 1)] * 3 + [("08006", None)]
    finally:
        with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
            admin.execute(f"drop table if exists {table}")


def test_a_policy_reload_reaches_statements_prepared_before_it(
    gateway: Gateway, upstream: Upstream, mode: str
) -> None:
    """Found by red-teaming: a prepared statement kept the verdict of its Parse for the rest of
    the session, so an agent could prepare what a reload would take away and keep running it.
    Its text is judged again at each Bind and Execute (a cache lookup while nothing changed)."""
    from dataclasses import replace

    from broker.policy import PolicyEngine

    table = f"rt_reload_{mode}"
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"drop table if exists {table}")
        admin.execute(f"create table {table} (v text)")
        admin.execute(f"grant select, insert on {table} to public")
    resources = gateway.server.ctx.resources
    old = resources["demo"]
    try:
        w = Wire(gateway, f"rt-reload-{mode}")
        sql = f"INSERT INTO {table} VALUES ($1)"
        assert not errors(w.send(m.parse_message("ins2", sql), m.describe_message("S", "ins2"), SYNC))
        for _ in range(3):  # learned, then fast
            assert not errors(w.send(bind("", "ins2", [b"before"]), execute(), SYNC))
        resources["demo"] = replace(old, policy=PolicyEngine.preset("read-only").bind("demo"))  # what SIGHUP does
        refused = w.send(bind("", "ins2", [b"after"]), execute(), SYNC)
        assert errors(refused) and errors(refused)[0][2][1] == "42501", refused
        resources["demo"] = old  # reloaded back: it runs again
        assert not errors(w.send(bind("", "ins2", [b"again"]), execute(), SYNC))
        with psycopg.connect(upstream.dsn("demo")) as direct:
            counts = dict(direct.execute(f"select v, count(*) from {table} group by v").fetchall())
        assert counts == {"before": 3, "again": 1}
    finally:
        resources["demo"] = old
        with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
            admin.execute(f"drop table if exists {table}")
