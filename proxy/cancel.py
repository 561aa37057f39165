"""Cancel requests: the client's BackendKeyData is ours, mapped to the upstream's.

A CancelRequest arrives on a fresh, unauthenticated connection carrying (pid, key). The
client only ever saw the random pair the proxy gave it, so the upstream's real key is
never exposed and a guessed key cancels nothing (compared in constant time).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

import structlog

from proxy.upstream import UpstreamTarget, send_cancel

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
            await send_cancel(backend.target, backend.upstream_pid, backend.upstream_key)
        except OSError:
            log.warning("cancel_forward_failed")
            return False
        return True

    def __len__(self) -> int:
        return len(self._backends)
