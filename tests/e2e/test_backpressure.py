"""A client that stops reading must not make the proxy buffer the whole result."""

from __future__ import annotations

import socket
import time

import psutil
import pytest

from proxy.protocol import messages as m
from tests.e2e.test_malformed import _authenticated

pytestmark = pytest.mark.e2e


def test_slow_reader_does_not_grow_proxy_memory(gateway):
    proc = psutil.Process()  # the proxy runs in this process (its own thread and loop)
    s = _authenticated(gateway)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        before = proc.memory_info().rss
        # ~50 MB of result rows; the client reads none of it for a while.
        s.sendall(m.query_message("select repeat('x', 1000) from generate_series(1, 50000)"))
        time.sleep(2)
        grown = proc.memory_info().rss - before
        assert grown < 20 * 1024 * 1024, f"proxy buffered {grown / 1e6:.0f} MB for a stalled client"
        # Then the client reads everything: the result is complete and the session healthy.
        total = 0
        s.settimeout(30)
        while True:
            chunk = s.recv(1 << 20)
            assert chunk
            total += len(chunk)
            if total >= 5 and chunk.endswith(m.ready_for_query(b"I")):
                break
        assert total > 50_000 * 1000
