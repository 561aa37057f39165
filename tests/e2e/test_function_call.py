"""Fast-path FunctionCall: judged by the function's name, looked up by OID in the upstream."""

from __future__ import annotations

import os
import struct
import subprocess

import asyncpg
import pytest

from proxy.protocol import messages as m
from tests.conftest import require_binary
from tests.e2e.test_malformed import _authenticated

pytestmark = pytest.mark.e2e


def test_psql_large_object_import_uses_fast_path(gateway, tmp_path):
    exe = require_binary("psql")
    payload = tmp_path / "blob.txt"
    payload.write_text("hello through the fast path\n")
    out = subprocess.run(
        [exe, gateway.dsn(), "-X", "-c", f"\\lo_import {payload}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGSSLMODE": "disable"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lo_import ")
    oid = int(out.stdout.split()[1])
    unlink = subprocess.run(
        [exe, gateway.dsn(), "-X", "-c", f"\\lo_unlink {oid}"], capture_output=True, text=True, timeout=60
    )
    assert unlink.returncode == 0, unlink.stderr


async def test_fast_path_call_of_a_file_function_is_blocked(gateway, upstream):
    admin = await asyncpg.connect(upstream.dsn("demo"))
    try:
        oid = await admin.fetchval("select 'pg_catalog.pg_read_file(text)'::regprocedure::oid")
    finally:
        await admin.close()
    s = _authenticated(gateway)
    with s:
        arg = b"/etc/passwd"
        call = struct.pack("!ih", oid, 1) + struct.pack("!h", 0) + struct.pack("!h", 1)
        call += struct.pack("!i", len(arg)) + arg + struct.pack("!h", 0)
        s.sendall(m.frame(b"F", call))
        reply = b""
        while not reply.endswith(m.ready_for_query(b"I")):
            chunk = s.recv(4096)
            assert chunk
            reply += chunk
    assert reply[:1] == b"E" and b"42501" in reply and b"pg_read_file" in reply
    assert b"root:" not in reply
