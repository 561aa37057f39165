"""Start-up negotiation on the wire: GSSENC/SSL refusals, protocol 3.2, parameters."""

from __future__ import annotations

import socket
import struct

import pytest

from proxy.protocol import messages as m
from proxy.protocol.frames import GSSENC_REQUEST_CODE

pytestmark = pytest.mark.e2e


def _recv_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, data
        data += chunk
    return data


def test_gssenc_then_ssl_then_startup_on_one_socket(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(struct.pack("!ii", 8, GSSENC_REQUEST_CODE))
        assert _recv_exact(s, 1) == b"N"
        s.sendall(m.SSL_REQUEST)
        assert _recv_exact(s, 1) == b"N"  # this gateway has no certificate configured
        s.sendall(m.build_startup_message({"user": "agent", "database": "demo"}))
        assert _recv_exact(s, 9) == m.AUTH_CLEARTEXT


def test_protocol_3_2_client_is_told_3_0(gateway):
    body = struct.pack("!i", (3 << 16) | 2) + m.cstr("user") + m.cstr("agent") + m.cstr("database") + m.cstr("demo")
    body += m.cstr("_pq_.some_option") + m.cstr("1") + b"\0"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as s:
        s.sendall(struct.pack("!i", len(body) + 4) + body)
        head = _recv_exact(s, 5)
        assert head[:1] == b"v"
        rest = _recv_exact(s, struct.unpack("!I", head[1:])[0] - 4)
        newest_minor, count = struct.unpack_from("!ii", rest)
        assert newest_minor == 0 and count == 1 and b"_pq_.some_option" in rest
        assert _recv_exact(s, 9) == m.AUTH_CLEARTEXT
        s.sendall(m.password_message(gateway.token().encode() + b"\0"))
        data = b""
        while not data.endswith(m.ready_for_query(b"I")):
            chunk = s.recv(65536)
            assert chunk
            data += chunk
        assert b"K\x00\x00\x00\x0c" in data  # a 4-byte key: protocol 3.0
