"""Revocation against real OpenBao and PostgreSQL: a revoke that fails stays in the ledger and
the reaper's next pass drops the login; nothing a session owns can make a login outlive it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import structlog

from broker import metrics
from broker.credentials.base import Credential
from broker.credentials.ledger import LeaseLedger
from broker.credentials.manager import CredentialManager
from broker.credentials.reaper import STUCK_AFTER, Reaper, reap
from broker.credentials.settings import CredentialSettings
from broker.credentials.vault import VaultProvider
from broker.demo.seed import RW_ROLE
from broker.demo.upstream import Upstream
from broker.store import SessionStart, Store
from tests.openbao_fixture import VaultFixture, role_exists, vault_roles

RESOURCES = {"demo": CredentialSettings(provider="vault")}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/jitgate.db")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def manager(openbao: VaultFixture, store: Store) -> AsyncIterator[CredentialManager]:
    m = CredentialManager({"demo": VaultProvider(openbao.settings(), RESOURCES)}, LeaseLedger(store.audit))
    try:
        yield m
    finally:
        await m.aclose()


async def _session(store: Store) -> str:
    issued = await store.tokens.issue_token("agent:t", ["ai-agents"], "demo", "readwrite", timedelta(hours=1))
    grant = await store.tokens.verify_token(issued.token, "demo")
    return await store.sessions.start_session(SessionStart(grant, client_addr="test"))


async def _login(upstream: Upstream, cred: Credential) -> asyncpg.Connection:
    return await asyncpg.connect(upstream.dsn("demo", cred.username, cred.password))


async def test_a_revoke_that_fails_is_retried_by_the_reaper(
    manager: CredentialManager, store: Store, upstream: Upstream
) -> None:
    """Vault refuses the revocation while the login owns something in another database
    (REASSIGN/DROP OWNED reach only the connection's database): the login and its ledger row
    stay; once that is gone, the reaper's next pass drops the login and closes the lease."""
    assert manager.ledger is not None
    session_id = await _session(store)
    cred = await manager.acquire(resource="demo", role="readwrite", session_id=session_id)
    admin = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        await admin.execute("create table revoke_blocker (id int)")
        await admin.execute(f'alter table revoke_blocker owner to "{cred.username}"')
        await store.sessions.end_session(session_id, reason="client disconnected")
        await manager.release(cred)  # logs `lease_revoke_failed`, never raises
        assert await role_exists(upstream, cred.username)
        (due,) = await manager.ledger.due()
        assert (due.lease_id, due.attempts) == (cred.lease_id, 1)

        result = await reap(manager.ledger, manager.providers)  # still blocked: still due
        assert (result.revoked, result.failed) == (0, 1)
        assert await role_exists(upstream, cred.username)
        assert [lease.attempts for lease in await manager.ledger.due()] == [2]
    finally:
        await admin.execute("drop table if exists revoke_blocker")
        await admin.close()

    result = await reap(manager.ledger, manager.providers)
    assert (result.revoked, result.failed) == (1, 0)
    assert cred.username not in await vault_roles(upstream)
    assert await manager.ledger.outstanding() == []


async def test_what_a_session_created_never_blocks_its_revocation(
    manager: CredentialManager, store: Store, upstream: Upstream
) -> None:
    """Objects made as the group, and even as the login itself (after `SET ROLE NONE`),
    end up owned by the group; the login is dropped at release."""
    admin = await asyncpg.connect(upstream.dsn("demo"))
    await admin.execute(f"create schema revoke_work; grant usage, create on schema revoke_work to {RW_ROLE}")
    try:
        cred = await manager.acquire(resource="demo", role="readwrite", session_id=await _session(store))
        conn = await _login(upstream, cred)
        try:
            assert await conn.fetchval("select current_user") == RW_ROLE
            await conn.execute("create table revoke_work.as_group (id int)")
            await conn.execute("set role none")
            await conn.execute("create table revoke_work.as_login (id int)")
            await conn.execute("create sequence revoke_work.seq")
        finally:
            await conn.close()
        await manager.release(cred)
        assert not await role_exists(upstream, cred.username)
        owners = await admin.fetch("select relname, relowner::regrole::text from pg_class "
                                   "where relnamespace = 'revoke_work'::regnamespace order by 1")
        assert [tuple(r) for r in owners] == [("as_group", RW_ROLE), ("as_login", RW_ROLE), ("seq", RW_ROLE)]
        assert manager.ledger is not None and await manager.ledger.outstanding() == []
    finally:
        await admin.execute("drop schema revoke_work cascade")
        await admin.close()


async def test_revoking_a_login_someone_already_dropped_succeeds(
    manager: CredentialManager, store: Store, upstream: Upstream
) -> None:
    """A retry after a revocation that did its work but was not acknowledged must not fail
    forever on a missing role."""
    cred = await manager.acquire(resource="demo", role="readwrite", session_id=await _session(store))
    admin = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        await admin.execute(f'drop role "{cred.username}"')
    finally:
        await admin.close()
    await manager.release(cred)
    assert manager.ledger is not None and await manager.ledger.outstanding() == []


def _stuck_count() -> float:
    return metrics.REGISTRY.get_sample_value("jitgate_vault_errors_total", {"kind": "revoke_stuck"}) or 0


async def test_a_revocation_that_keeps_failing_is_an_error_and_a_metric(
    manager: CredentialManager, store: Store, upstream: Upstream
) -> None:
    """A grant in another database makes DROP ROLE fail on every retry: past STUCK_AFTER
    consecutive failures the running reaper logs an error naming the lease (not the login's
    password) and counts `jitgate_vault_errors_total{kind="revoke_stuck"}` once per lease."""
    assert manager.ledger is not None
    session_id = await _session(store)
    cred = await manager.acquire(resource="demo", role="readwrite", session_id=session_id)
    before = _stuck_count()
    admin = await asyncpg.connect(upstream.dsn("postgres"))  # not `demo`, the connection's database
    reaper = Reaper(manager.ledger, manager.providers, interval=0.05)
    try:
        await admin.execute("create table stuck_blocker (id int)")
        await admin.execute(f'grant select on stuck_blocker to "{cred.username}"')
        await store.sessions.end_session(session_id, reason="client disconnected")
        with structlog.testing.capture_logs() as logs:
            await manager.release(cred)  # the first failure
            reaper.start()
            deadline = asyncio.get_running_loop().time() + 30
            while [lease.attempts for lease in await manager.ledger.due()] < [STUCK_AFTER + 2]:
                assert asyncio.get_running_loop().time() < deadline, "the reaper did not retry"
                await asyncio.sleep(0.05)
            await reaper.aclose()
        assert await role_exists(upstream, cred.username)
    finally:
        await reaper.aclose()
        await admin.execute("drop table if exists stuck_blocker")
        await admin.close()

    # Below the threshold a warning per failure (the session's own revoke was the first).
    warned = [e for e in logs if e["event"] == "reaper_revoke_failed"]
    assert [(e["log_level"], e["attempts"]) for e in warned] == [("warning", n) for n in range(2, STUCK_AFTER)]
    stuck = [e for e in logs if e["event"] == "lease_revoke_stuck"]
    assert stuck and all(e["log_level"] == "error" for e in stuck)
    assert stuck[0]["lease_id"] == cred.lease_id and stuck[0]["attempts"] == STUCK_AFTER
    assert "another database" in stuck[0]["hint"]
    assert _stuck_count() == before + 1  # once per lease, not once per retry
    assert not [e for e in logs if cred.password in repr(e)]

    # Once the grant is gone the next pass revokes it, as for any failure.
    result = await reap(manager.ledger, manager.providers)
    assert (result.revoked, result.failed) == (1, 0)
    assert cred.username not in await vault_roles(upstream)
