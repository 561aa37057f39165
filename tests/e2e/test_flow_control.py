"""Flow control through the gateway: after a cancel the client gets no more than what the
buffers on the way hold, and a client that stops reading makes the gateway hold a bounded
number of bytes, not the result.

The clients here speak the wire protocol on plain sockets whose receive buffer is fixed
(SO_RCVBUF set before connecting turns Linux's autotuning off), so every buffer between the
upstream backend and the client has a known maximum: the bounds below are those maxima added
up, not numbers tuned to pass. The largest is PostgreSQL's own socket send buffer (autotuned
by the kernel, on loopback to ~4 MiB at connect): it fills whenever the gateway relays
slower than the backend produces, as it would for any client slower than the backend, and
what it holds still reaches the client after the cancel. Before the gateway fixed its own
socket buffers it added about as much again (6-7 MiB held for a stalled client).
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from proxy import relay as relay_module
from proxy import session as session_module
from proxy.protocol import messages as m
from proxy.relay import Relay

pytestmark = pytest.mark.e2e

# 20 million rows that stream from the first one (a single generate_series would be
# materialized, seconds, before the first row). Unmasked (observe): this is about flow.
ROWS = "select a * 1000000 + b, repeat('x', 20) from generate_series(1, 200) a, generate_series(1, 100000) b"
COPY = f"COPY ({ROWS}) TO STDOUT"
RESOURCE = "demo_observe"
#: The smallest CopyData of that COPY: 5 bytes of header, >= 7 digits, a tab, 20 x, a newline.
MIN_ROW_BYTES = 5 + 7 + 1 + 20 + 1
CLIENT_RCVBUF = 64 * 1024
#: What PostgreSQL may add after taking the cancel: its output buffer (PqSendBuffer, 8 KiB)
#: is flushed before the executor next checks for interrupts.
BACKEND_OUTPUT_BUFFER = 8 * 1024
#: Linux lets a socket queue one packet past its limit (a loopback packet is up to 64 KiB).
PACKET = 64 * 1024


def gateway_bytes_bound() -> int:
    """The most the gateway holds for one direction of a session: its receive buffer on the
    upstream socket and its send buffer on the client socket (the kernel allocates twice the
    size set, each may pass it by a packet), the relay's write buffer up to its high-water
    mark, plus what the last read (READ_CHUNK) produced on top of it."""
    kernel = 2 * (2 * relay_module.SOCKET_BUFFER + PACKET)
    return kernel + relay_module.WRITE_HIGH_WATER + relay_module.READ_CHUNK


def upstream_send_buffer_max() -> int:
    """PostgreSQL's socket send buffer is autotuned by the kernel, up to tcp_wmem's maximum."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


class Wire:
    """Backend messages from a socket; counts CopyData without building each one."""

    RECV = 1 << 16

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(self.RECV)
        if not data:
            raise ConnectionError("the gateway closed the connection")
        self.buf += data

    def message(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 5:
                end = 1 + int.from_bytes(self.buf[1:5], "big")
                if len(self.buf) >= end:
                    kind, body, self.buf = self.buf[0], self.buf[5:end], self.buf[end:]
                    return kind, body
            self._fill()

    def until_ready(self) -> tuple[int, str | None]:
        """Read to ReadyForQuery: the CopyData messages seen and the SQLSTATE of an error."""
        rows = 0
        sqlstate = None
        while True:
            buf, pos = self.buf, 0
            while len(buf) - pos >= 5:
                end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
                if end > len(buf):
                    break
                kind = buf[pos]
                if kind == 0x64:  # CopyData
                    rows += 1
                elif kind == 0x45:  # ErrorResponse
                    sqlstate = m.field(m.parse_fields(buf[pos + 5 : end]), "C")
                elif kind == 0x5A:  # ReadyForQuery
                    self.buf = buf[end:]
                    return rows, sqlstate
                pos = end
            self.buf = buf[pos:]
            self._fill()


def connect(gateway, resource: str = RESOURCE) -> tuple[socket.socket, Wire, int, bytes]:
    """A logged-in session on a socket with a fixed CLIENT_RCVBUF; with its cancel key."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(m.build_startup_message({"user": "agent", "database": resource}))
    wire = Wire(sock)
    assert wire.message()[0] == ord("R")
    sock.sendall(m.password_message(gateway.token(resource).encode() + b"\0"))
    pid, key = 0, b""
    while True:
        kind, body = wire.message()
        assert kind != ord("E"), m.parse_fields(body)
        if kind == ord("K"):
            pid, key = m.parse_backend_key_data(body)
        elif kind == ord("Z"):
            return sock, wire, pid, key


def cancel(gateway, pid: int, key: bytes) -> None:
    """Send a CancelRequest and wait until the gateway closes that connection, as libpq does."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(m.build_cancel_request(pid, key))
        assert sock.recv(1) == b""


def first_row(wire: Wire) -> None:
    while True:
        kind, body = wire.message()
        assert kind != ord("E"), m.parse_fields(body)
        if kind == ord("d"):
            return


@dataclass
class Cancelled:
    seconds: float
    rows_after: int
    sqlstate: str | None


def cancel_through_gateway(gateway, stall: float = 0.0) -> tuple[Cancelled, int]:
    """Start the COPY, read one row, (stop reading for `stall` seconds), cancel, read the rest.
    Returns the outcome and the client's receive buffer size as the kernel has it."""
    sock, wire, pid, key = connect(gateway)
    with sock:
        rcvbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        sock.sendall(m.query_message(COPY))
        first_row(wire)
        time.sleep(stall)
        started = time.monotonic()
        cancel(gateway, pid, key)
        rows, sqlstate = wire.until_ready()
        outcome = Cancelled(time.monotonic() - started, rows, sqlstate)
        sock.sendall(m.query_message("select 1"))  # the session goes on
        assert wire.until_ready() == (0, None)
    return outcome, rcvbuf


def cancel_directly(upstream: Upstream, roles: DemoRoles) -> Cancelled:
    """The same without the gateway (psycopg, whose cancel_safe waits as `cancel` does)."""
    dsn = upstream.dsn(roles.dbname, roles.rw_user, roles.rw_password)
    rows = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            with conn.cursor().copy(COPY) as copy:
                copy.read()
                started = time.monotonic()
                conn.cancel_safe()
                while data := copy.read():
                    rows += bytes(data).count(b"\n")
        return Cancelled(time.monotonic() - started, rows, "57014")


def rows_bound(client_rcvbuf: int) -> int:
    """Rows that may still arrive after the cancel reached the upstream: whatever sits in the
    buffers between its executor and the client, each of MIN_ROW_BYTES or more."""
    upstream = upstream_send_buffer_max() + PACKET + BACKEND_OUTPUT_BUFFER
    client = client_rcvbuf + Wire.RECV  # (one recv may hold bytes that came before the cancel)
    in_flight = upstream + gateway_bytes_bound() + client
    return in_flight // MIN_ROW_BYTES


def test_cancel_one_row_into_a_large_copy_takes_effect_promptly(gateway, upstream, demo_roles):
    # Directly only for the record (in the failure message): its client drains faster than
    # the backend produces, so little is in flight when the cancel lands (milliseconds, a
    # few thousand rows); through the gateway at most the buffers' sum, in well under 2 s.
    direct = cancel_directly(upstream, demo_roles)
    outcome, rcvbuf = cancel_through_gateway(gateway)
    limit = rows_bound(rcvbuf)
    context = f"through the gateway {outcome}, directly {direct}, row bound {limit}"
    assert outcome.sqlstate == "57014", context
    assert outcome.seconds < 2.0, context
    assert outcome.rows_after < limit, context


def test_cancel_after_the_client_stalled_is_bounded_by_the_buffers(gateway):
    # The client reads one row, then nothing for a second: every buffer on the way fills up
    # before the cancel. What still arrives after it is their sum, and the gateway's part is
    # the bounded one.
    outcome, rcvbuf = cancel_through_gateway(gateway, stall=1.0)
    limit = rows_bound(rcvbuf)
    context = f"{outcome}, row bound {limit}"
    assert outcome.sqlstate == "57014", context
    assert outcome.seconds < 2.0, context
    assert outcome.rows_after < limit, context


@dataclass(frozen=True)
class Held:
    """What the gateway holds for one session, in bytes, and whether it reads the upstream."""

    relay_buffer: int
    client_send_queue: int
    upstream_receive_queue: int
    upstream_reading: bool

    @property
    def total(self) -> int:
        return self.relay_buffer + self.client_send_queue + self.upstream_receive_queue


@pytest.fixture
def relays(monkeypatch) -> Iterator[list[Relay]]:
    """The relays of the sessions the gateway starts during the test."""
    started: list[Relay] = []

    class Recorded(Relay):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(session_module, "Relay", Recorded)
    yield started


def _queue(transport: asyncio.BaseTransport, request: int) -> int:
    sock = transport.get_extra_info("socket")
    return int.from_bytes(fcntl.ioctl(sock.fileno(), request, b"\0\0\0\0"), "little")


async def _held(relay: Relay) -> Held:
    # On the gateway's loop: the relay's write buffer toward the client, the kernel's unsent
    # or unacknowledged bytes on the client socket, and its unread bytes from the upstream.
    return Held(
        relay_buffer=relay.client.get_write_buffer_size(),
        client_send_queue=_queue(relay.client, termios.TIOCOUTQ),
        upstream_receive_queue=_queue(relay.upstream, termios.FIONREAD),
        upstream_reading=relay.upstream.is_reading(),
    )


def test_client_that_stops_reading_makes_the_gateway_hold_a_bounded_amount(gateway, relays):
    sock, wire, pid, key = connect(gateway)
    with sock:
        sock.sendall(m.query_message(COPY))
        first_row(wire)
        # The client reads nothing more, the upstream goes on producing its 20M rows.
        samples: list[Held] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            samples.append(gateway.call(_held(relays[-1])))
            time.sleep(0.05)
        worst = max(samples, key=lambda held: held.total)
        assert not samples[-1].upstream_reading, "the gateway still reads the upstream for a stalled client"
        assert worst.total <= gateway_bytes_bound(), f"{worst} holds more than {gateway_bytes_bound()} bytes"
        # Nothing was dropped on the way: the client can still cancel and go on.
        cancel(gateway, pid, key)
        assert wire.until_ready()[1] == "57014"
