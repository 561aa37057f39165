"""Cancel requests: the client's BackendKeyData is ours, mapped to the upstream's.

A CancelRequest arrives on a fresh, unauthenticated connection carrying (pid, key). The
client only ever saw the random pair the proxy gave it, so the upstream's real key is
never exposed and a guessed key cancels nothing (compared in constant time).

The request is forwarded from a worker thread with a blocking socket, not on the event
loop: a loop that is busy relaying results (the very statement being cancelled, often)
would take several of its turns to connect, write and close, each behind a read of the
other sessions; the thread does it at once.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import socket
from dataclasses import dataclass

import structlog

from proxy.protocol.messages import build_cancel_request
from proxy.upstream import UpstreamTarget

log = structlog.get_logger("jitgate.proxy")


@dataclass(frozen=True, slots=True)
class _Backend:
    key: bytes
    target: UpstreamTarget
    upstream_pid: int
    upstream_key: bytes


class CancelMap:
    def __init__(self) -> None:
        self._backends: dict[int, _Backend] = {}

    def register(self, target: UpstreamTarget, upstream_pid: int, upstream_key: bytes) -> tuple[int, bytes]:
        while True:
            pid = secrets.randbelow(2**31 - 2) + 1
            if pid not in self._backends:
                break
        key = secrets.token_bytes(4)
        self._backends[pid] = _Backend(key, target, upstream_pid, upstream_key)
        return pid, key

    def unregister(self, pid: int) -> None:
        self._backends.pop(pid, None)

    async def cancel(self, pid: int, key: bytes) -> bool:
        backend = self._backends.get(pid)
        if backend is None or not hmac.compare_digest(backend.key, key):
            log.warning("cancel_request_rejected")
            return False
        try:
            await asyncio.to_thread(_forward, backend.target, backend.upstream_pid, backend.upstream_key)
        except OSError:
            log.warning("cancel_forward_failed")
            return False
        return True

    def __len__(self) -> int:
        return len(self._backends)


def _forward(target: UpstreamTarget, pid: int, key: bytes) -> None:
    """Send the CancelRequest on a fresh connection, as the protocol wants, and wait for the
    server to close it (as libpq does): then the backend has been signalled."""
    sock: socket.socket
    if target.host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(target.connect_timeout)
        try:
            sock.connect(f"{target.host}/.s.PGSQL.{target.port}")
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((target.host, target.port), timeout=target.connect_timeout)
    with sock:
        sock.sendall(build_cancel_request(pid, key))
        try:
            sock.recv(1)
        except OSError:  # sent all the same; only the confirmation is missing
            pass
