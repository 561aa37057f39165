"""The proxy's client-side timeouts, through the real proxy: `proxy.idle_timeout_seconds` ends
a session idle outside a transaction (FATAL 57P05, as PostgreSQL's idle_session_timeout), and
`proxy.startup_timeout_seconds` bounds, in all, how long a client may take to log in.
(`proxy.connect_timeout_seconds`, towards the upstream, is in tests/faults/test_upstream.py.)"""

from __future__ import annotations

import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.config import ProxySettings
from proxy.protocol import messages as m
from proxy.protocol.frames import split_messages
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

IDLE = 1.0
STARTUP = 1.5


@pytest.fixture(scope="module")
def gw(upstream, demo_roles) -> Iterator[Gateway]:
    proxy = ProxySettings(listen_port=0, idle_timeout_seconds=IDLE, startup_timeout_seconds=STARTUP)
    with tempfile.TemporaryDirectory(prefix="jitgate-timeouts-") as tmp:
        gateway = start_gateway(upstream, demo_roles, Path(tmp), proxy=proxy)
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _end_reason(gw: Gateway, session_id: str) -> str | None:
    gw.flush()

    async def reasons() -> dict[str, str]:
        return {r.session_id: r.data["reason"] async for r in gw.store.audit.iter_audit() if r.type == "session.end"}

    return gw.call(reasons()).get(session_id)


def _session_id(gw: Gateway) -> str:
    gw.flush()
    [active] = gw.call(gw.store.sessions.list_sessions(active_only=True))
    return str(active.id)


def test_an_idle_session_is_ended_with_57P05_and_recorded(gw: Gateway) -> None:
    conn = psycopg.connect(gw.dsn(), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        session_id = _session_id(gw)
        time.sleep(IDLE + 1.0)
        with pytest.raises(psycopg.OperationalError) as err:
            conn.execute("select 1")
        assert "idle-session timeout" in str(err.value)
    finally:
        conn.close()
    assert _end_reason(gw, session_id) == "idle timeout"


def test_a_long_statement_or_an_open_transaction_is_not_idle(gw: Gateway) -> None:
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        # Quiet on the wire for twice the timeout, but a statement is running.
        assert conn.execute(f"select pg_sleep({IDLE * 2})").fetchone() == ("",)
        conn.execute("begin")
        time.sleep(IDLE + 1.0)  # idle in a transaction: left alone, as PostgreSQL does
        assert conn.execute("select 2").fetchone() == (2,)
        conn.execute("commit")
        # Steady use never lets it go idle for a whole period.
        for _ in range(4):
            time.sleep(IDLE / 2)
            assert conn.execute("select 3").fetchone() == (3,)


def _read_messages(sock: socket.socket, until: float) -> list[tuple[int, bytes]]:
    data = b""
    sock.settimeout(max(until - time.monotonic(), 0.1))
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    msgs, _ = split_messages(data)
    return msgs


def test_a_client_that_never_sends_its_token_is_cut_off_at_the_startup_deadline(gw: Gateway) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        body = b"".join(m.cstr(s) for s in ("user", "agent", "database", "demo")) + b"\x00"
        sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
        msgs = _read_messages(sock, started + STARTUP + 5)
    elapsed = time.monotonic() - started
    kinds = [chr(kind) for kind, _ in msgs]
    assert kinds == ["R", "E"], kinds  # asked for the token, then refused: never a session
    assert m.field(m.parse_fields(msgs[1][1]), "C") == "08006"
    assert STARTUP - 0.2 < elapsed < STARTUP + 2


def test_the_startup_deadline_is_one_budget_not_one_per_step(gw: Gateway) -> None:
    """A client that trickles its start-up (each step just inside the deadline) is still out at
    STARTUP seconds in all."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(struct.pack("!ii", 8, 80877103))  # SSLRequest
        assert sock.recv(1) == b"N"
        time.sleep(STARTUP * 0.7)
        body = b"".join(m.cstr(s) for s in ("user", "agent", "database", "demo")) + b"\x00"
        sock.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
        msgs = _read_messages(sock, started + STARTUP + 5)
    elapsed = time.monotonic() - started
    assert [chr(kind) for kind, _ in msgs] == ["R", "E"]
    assert elapsed < STARTUP + 1, f"the deadline restarted at each step ({elapsed:.1f} s)"
