"""Start-up negotiation on the wire: GSSENC/SSL refusals, protocol 3.2, parameters."""

from __future__ import annotations

import socket
import struct

import psycopg
import psycopg.sql
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


#: What the gateway pins (broker.policy.facts.PINNED_LEXER_VALUES), as SHOW prints it.
PINNED = {"client_encoding": "UTF8", "standard_conforming_strings": "on", "backslash_quote": "safe_encoding"}


def _shown(conn: psycopg.Connection) -> dict[str, str]:
    return {name: str(conn.execute(f"show {name}").fetchone()[0]) for name in PINNED}  # type: ignore[index]


def test_lexer_settings_are_pinned_over_role_and_database_defaults(gateway, upstream, demo_roles):
    """The gateway sends its lexer settings at start-up: they outrank ALTER ROLE / DATABASE
    ... SET defaults, and RESET, SET ... TO DEFAULT, RESET ALL and DISCARD ALL return to
    them, not to the default the database would give."""
    defaults = {"client_encoding": "SJIS", "standard_conforming_strings": "off", "backslash_quote": "on"}
    role = psycopg.sql.Identifier(demo_roles.rw_user)
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        for name, value in defaults.items():
            admin.execute(
                psycopg.sql.SQL("alter role {} in database demo set {} = {}").format(
                    role, psycopg.sql.Identifier(name), psycopg.sql.Literal(value)
                )
            )
        try:
            direct_dsn = upstream.dsn("demo", user=demo_roles.rw_user, password=demo_roles.rw_password)
            with psycopg.connect(direct_dsn) as direct:
                assert _shown(direct)["standard_conforming_strings"] == "off"  # the defaults do apply
            with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
                assert conn.info.parameter_status("client_encoding") == "UTF8"
                assert conn.info.parameter_status("standard_conforming_strings") == "on"
                assert _shown(conn) == PINNED
                for back_to_default in (
                    "reset client_encoding", "set standard_conforming_strings to default",
                    "reset backslash_quote", "reset all", "discard all",
                ):
                    conn.execute(back_to_default)
                    assert _shown(conn) == PINNED, back_to_default
                    assert conn.info.parameter_status("client_encoding") == "UTF8"
        finally:
            admin.execute(psycopg.sql.SQL("alter role {} in database demo reset all").format(role))
