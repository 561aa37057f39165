"""A credential that Vault issues after its caller gave up is revoked, never left out.

Vault is made slow for real: its server process is stopped (SIGSTOP) while a request is in
its socket buffer, then continued, or the hvac call waits before it asks. The lease then
arrives when nobody waits for it; without the fix it would live on (a PostgreSQL role, a
Vault lease) until its TTL. TEST_TTL is 4 s, so every check here looks well before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import hvac.api.secrets_engines.database as hvac_database
import hvac.exceptions
import pytest

from broker import metrics
from broker.credentials.ledger import LeaseLedger
from broker.credentials.manager import CredentialManager
from broker.credentials.settings import CredentialSettings
from broker.credentials.vault import VaultProvider
from broker.demo.upstream import Upstream
from broker.exceptions import CredentialSourceUnavailable
from broker.store import SessionStart, Store
from tests.openbao_fixture import VaultFixture, vault_roles

RESOURCES = {"demo": CredentialSettings(provider="vault")}


@contextlib.contextmanager
def stopped(openbao: VaultFixture) -> Iterator[None]:
    """The OpenBao server process frozen: the kernel still accepts and buffers requests."""
    os.kill(openbao.bao.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(openbao.bao.process.pid, signal.SIGCONT)


def _buffered_requests(port: int) -> int:
    """Bytes waiting unread in the receive queues of the server side of connections to `port`
    (/proc/net/tcp: the kernel accepts and buffers for a frozen server)."""
    waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:  # ESTABLISHED
                    waiting += int(queues.split(":")[1], 16)
    return waiting


async def _until(what: str, condition: Callable[[], Awaitable[bool] | bool], within: float = 10.0) -> None:
    """Wait for `condition` to hold, polling; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        held = condition()
        if not isinstance(held, bool):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.02)


async def _asked(openbao: VaultFixture) -> None:
    """The issue request sits in the frozen server's socket buffer (not merely: some time passed)."""
    port = urlsplit(openbao.bao.address).port
    assert port is not None
    await _until("the request reaches the stopped server", lambda: _buffered_requests(port) > 0)


def _leases(openbao: VaultFixture, role: str = "readonly") -> set[str]:
    try:
        return set(openbao.bao.client().sys.list_leases(f"database/creds/{role}")["data"]["keys"])
    except hvac.exceptions.InvalidPath:  # no lease under that prefix
        return set()


async def _settles(openbao: VaultFixture, upstream: Upstream, leases: set[str], roles: set[str],
                   within: float = 2.0) -> None:
    """Back to `leases` and `roles` within `within` seconds (well before TEST_TTL ends a lease)."""
    deadline = time.monotonic() + within
    while (_leases(openbao), await vault_roles(upstream)) != (leases, roles):
        assert time.monotonic() < deadline, (
            f"left behind: leases {_leases(openbao) - leases}, roles {await vault_roles(upstream) - roles}"
        )
        await asyncio.sleep(0.05)


def _late() -> float:
    return metrics.REGISTRY.get_sample_value("jitgate_vault_errors_total", {"kind": "late"}) or 0


@pytest.fixture
async def provider(openbao: VaultFixture) -> AsyncIterator[VaultProvider]:
    p = VaultProvider(openbao.settings(timeout_seconds=1), RESOURCES)
    await p.release(await p.acquire(resource="demo", role="readonly", session_id="warm"))  # logged in
    yield p
    await p.aclose()


async def test_a_lease_issued_after_the_caller_was_cancelled_is_revoked(
    openbao: VaultFixture, upstream: Upstream, provider: VaultProvider
) -> None:
    leases, roles, late = _leases(openbao), await vault_roles(upstream), _late()
    with stopped(openbao):
        asking = asyncio.ensure_future(provider.acquire(resource="demo", role="readonly", session_id="gone"))
        await _asked(openbao)
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
    # Continued, the server issues the lease to a caller that is gone: it is revoked at once.
    # (Waiting for the issue first: before it, the leases are trivially as they were.)
    await _until("the late lease is issued and counted", lambda: _late() == late + 1)
    await _settles(openbao, upstream, leases, roles)
    assert _late() == late + 1


async def test_a_lease_vault_issues_after_the_timeout_is_revoked(
    openbao: VaultFixture, upstream: Upstream, provider: VaultProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vault answering slower than the gateway waits (2 x timeout_seconds): the client got
    08006, and the lease Vault issues afterwards must not stay."""
    real = hvac_database.Database.generate_credentials

    def slow(self: hvac_database.Database, *args: object, **kwargs: object) -> object:
        time.sleep(2.5)  # past the 2 s the gateway waits, then a real issue
        return real(self, *args, **kwargs)

    monkeypatch.setattr(hvac_database.Database, "generate_credentials", slow)
    leases, roles = _leases(openbao), await vault_roles(upstream)
    started = time.monotonic()
    with pytest.raises(CredentialSourceUnavailable, match="Vault is unreachable"):
        await provider.acquire(resource="demo", role="readonly", session_id="timed-out")
    assert time.monotonic() - started < 2.4
    await asyncio.sleep(2.5 - (time.monotonic() - started))  # the late answer arrives now
    await _settles(openbao, upstream, leases, roles)


async def test_a_cancelled_acquire_is_recorded_and_released_through_the_ledger(
    openbao: VaultFixture, upstream: Upstream, tmp_path: Path
) -> None:
    """The manager lets the acquire finish and releases it: the ledger says issued, then
    revoked, and nothing stays outstanding for the reaper."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/jitgate.db")
    vault = VaultProvider(openbao.settings(timeout_seconds=1), RESOURCES)
    manager = CredentialManager({"demo": vault}, LeaseLedger(store.audit))
    try:
        issued = await store.tokens.issue_token("agent:t", ["ai-agents"], "demo", "readonly", timedelta(hours=1))
        grant = await store.tokens.verify_token(issued.token, "demo")
        session_id = await store.sessions.start_session(SessionStart(grant, client_addr="test"))
        await manager.release(await manager.acquire(resource="demo", role="readonly", session_id=session_id))
        leases, roles = _leases(openbao), await vault_roles(upstream)
        with stopped(openbao):
            asking = asyncio.ensure_future(manager.acquire(resource="demo", role="readonly", session_id=session_id))
            await _asked(openbao)
            asking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asking

        async def released() -> bool:
            return [r.type async for r in store.audit.iter_audit() if r.type.startswith("lease.")][2:] == [
                "lease.issue",
                "lease.revoke",
            ]

        # The late lease is issued, recorded and released (before that, nothing has changed yet).
        await _until("the abandoned lease is recorded and released", released)
        await _settles(openbao, upstream, leases, roles)
        assert manager.ledger is not None and await manager.ledger.outstanding() == []
        trail = [r.type async for r in store.audit.iter_audit() if r.type.startswith("lease.")]
        assert trail == ["lease.issue", "lease.revoke"] * 2
    finally:
        await manager.aclose()
        await store.close()
