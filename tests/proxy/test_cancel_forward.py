"""CancelMap forwards a valid cancel to the upstream at once (TCP or unix socket), and only then."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
from pathlib import Path

from proxy.cancel import CancelMap
from proxy.protocol.messages import build_cancel_request
from proxy.upstream import UpstreamTarget


def _serve_once(server: socket.socket, received: list[bytes]) -> threading.Thread:
    def run() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while len(data) < 16 and (chunk := conn.recv(16)):
                data += chunk
            received.append(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_cancel_is_forwarded_over_tcp() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        received: list[bytes] = []
        thread = _serve_once(server, received)
        cancels = CancelMap()
        target = UpstreamTarget("127.0.0.1", server.getsockname()[1], "db")
        pid, key = cancels.register(target, 4242, b"\x01\x02\x03\x04")
        assert not await cancels.cancel(pid, bytes(b ^ 0xFF for b in key))  # a wrong key: nothing sent
        assert await cancels.cancel(pid, key)
        await asyncio.to_thread(thread.join, 5)
    assert received == [build_cancel_request(4242, b"\x01\x02\x03\x04")]


async def test_cancel_is_forwarded_over_a_unix_socket() -> None:
    with tempfile.TemporaryDirectory() as tmp, socket.socket(socket.AF_UNIX) as server:
        server.bind(str(Path(tmp) / ".s.PGSQL.5432"))
        server.listen()
        received: list[bytes] = []
        thread = _serve_once(server, received)
        cancels = CancelMap()
        pid, key = cancels.register(UpstreamTarget(tmp, 5432, "db"), 7, b"abcd")
        assert await cancels.cancel(pid, key)
        await asyncio.to_thread(thread.join, 5)
    assert received == [build_cancel_request(7, b"abcd")]


async def test_unreachable_upstream_is_reported_not_raised() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed below: nothing listens there any more
    cancels = CancelMap()
    pid, key = cancels.register(UpstreamTarget("127.0.0.1", port, "db", connect_timeout=2), 1, b"abcd")
    assert not await cancels.cancel(pid, key)
