"""Malformed, truncated and oversized input: an error and a closed connection, never a crash."""

from __future__ import annotations

import socket
import struct

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.protocol import messages as m

pytestmark = pytest.mark.e2e


def _exchange(port: int, payload: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def _authenticated(gateway) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    s.sendall(m.build_startup_message({"user": "agent", "database": "demo"}))
    assert s.recv(9)[:1] == b"R"
    s.sendall(m.password_message(gateway.token().encode() + b"\0"))
    buf = b""
    while not buf.endswith(m.ready_for_query(b"I")):
        data = s.recv(65536)
        assert data, buf
        buf += data
    return s


def _still_serving(gateway) -> None:
    with psycopg.connect(gateway.dsn()) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=200))
def test_random_startup_bytes(gateway, data):
    _exchange(gateway.port, data, timeout=3)


def test_random_startup_bytes_leave_the_proxy_serving(gateway):
    _still_serving(gateway)


def test_query_before_authentication_is_refused(gateway):
    s = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    with s:
        s.sendall(m.build_startup_message({"user": "agent", "database": "demo"}))
        assert s.recv(9)[:1] == b"R"
        s.sendall(m.query_message("select pg_read_file('/etc/passwd')"))
        reply = s.recv(4096)
    assert reply[:1] == b"E" and b"password message" in reply


def test_gigabyte_length_is_refused_before_allocation(gateway):
    s = _authenticated(gateway)
    with s:
        s.sendall(b"Q" + struct.pack("!I", 1 << 30) + b"select 1")
        reply = s.recv(4096)
        assert reply[:1] == b"E" and b"54000" in reply
        assert s.recv(4096) == b""  # closed
    _still_serving(gateway)


def test_second_startup_message_is_a_violation(gateway):
    s = _authenticated(gateway)
    with s:
        s.sendall(m.build_startup_message({"user": "postgres", "database": "demo"}))
        reply = s.recv(4096)
        assert reply[:1] == b"E" and b"08P01" in reply


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(b"QPBDECSHFdcfX?"), body=st.binary(max_size=64))
def test_malformed_messages_after_authentication(gateway, kind, body):
    s = _authenticated(gateway)
    with s:
        s.sendall(bytes([kind]) + struct.pack("!I", len(body) + 4) + body + m.TERMINATE)
        s.settimeout(5)
        try:
            while s.recv(65536):
                pass
        except (ConnectionResetError, TimeoutError):
            pass


def test_proxy_survives_all_of_the_above(gateway):
    _still_serving(gateway)
