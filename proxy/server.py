"""The listener: accept connections, run one session task each, shut down cleanly.

Several processes may listen on one port (``SO_REUSEPORT``, ``jitgate proxy --workers
N``): sessions are independent, and everything shared lives in the broker's store.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import structlog

from proxy.lifetime import watch_revocations
from proxy.session import ProxyContext, handle_connection

log = structlog.get_logger("jitgate.proxy")


def tls_context(cert_file: str | Path, key_file: str | Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


def install_uvloop() -> bool:
    """Use uvloop when installed: its transports halve the per-read overhead."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


class ProxyServer:
    def __init__(self, ctx: ProxyContext, *, host: str = "127.0.0.1", port: int = 6432, reuse_port: bool = False):
        self.ctx = ctx
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._renew: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect, self.host, self.port, reuse_port=self.reuse_port or None, limit=2**20
        )
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("proxy_listening", host=self.host, port=self.port, tls=self.ctx.tls is not None)
        if self.ctx.admission is not None:  # keep this process's session slots alive
            self._renew = asyncio.create_task(self.ctx.admission.run(), name="session slot renewal")
        if self.ctx.revoked_tokens is not None:
            self._watch = asyncio.create_task(
                watch_revocations(
                    self.ctx.live, self.ctx.revoked_tokens, interval=self.ctx.revocation_check_interval
                ),
                name="grant revocation watch",
            )

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await handle_connection(reader, writer, self.ctx)
        except asyncio.CancelledError:
            # Shutdown: handle_connection has already recorded the end and released the
            # credential in its own finally; ending quietly keeps asyncio from logging a
            # cancelled client_connected_cb as an error.
            pass
        finally:
            self._sessions.discard(task)

    @property
    def active_sessions(self) -> int:
        return len(self._sessions)

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, then end the sessions (each revokes its credential)."""
        if self._server is not None:
            self._server.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        sessions = list(self._sessions)
        for task in sessions:
            task.cancel()
        if sessions:
            await asyncio.wait(sessions, timeout=grace)
        if self._renew is not None:  # after the sessions: they give their slots back first
            self._renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew
        if self._server is not None:
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()
