"""The ledger and the reaper: leases that outlived their session are revoked, others are not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from broker.credentials.ledger import LeaseLedger
from broker.credentials.local import LocalIssuer
from broker.credentials.reaper import reap
from broker.credentials.settings import CredentialSettings
from broker.demo.seed import RW_ROLE
from broker.demo.upstream import Upstream
from broker.store import SessionStart, Store
from tests.openbao_fixture import role_exists


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/jitgate.db")
    yield s
    await s.close()


async def _session(store: Store) -> str:
    issued = await store.tokens.issue_token("agent:t", ["ai-agents"], "demo", "readwrite", timedelta(hours=1))
    grant = await store.tokens.verify_token(issued.token, "demo")
    return await store.sessions.start_session(SessionStart(grant, client_addr="test"))


async def test_reaper_revokes_only_what_outlived_its_session(store: Store, upstream: Upstream) -> None:
    admin = SecretStr(upstream.dsn("postgres"))
    conf = CredentialSettings(provider="local", admin_dsn=admin, roles={"readwrite": RW_ROLE})
    issuer = LocalIssuer("demo", conf)
    ledger = LeaseLedger(store.audit)
    providers = {"demo": issuer}

    live, crashed = await _session(store), await _session(store)
    live_cred = await issuer.acquire(resource="demo", role="readwrite", session_id=live)
    dead_cred = await issuer.acquire(resource="demo", role="readwrite", session_id=crashed)
    await ledger.issued(live_cred, session_id=live)
    await ledger.issued(dead_cred, session_id=crashed)
    # The proxy that held `crashed` died after the session ended but before it revoked.
    await store.sessions.end_session(crashed, reason="client disconnected")

    result = await reap(ledger, providers)
    assert (result.revoked, result.failed) == (1, 0)
    assert not await role_exists(upstream, dead_cred.username)
    assert await role_exists(upstream, live_cred.username)
    assert [lease.lease_id for lease in await ledger.outstanding()] == [live_cred.lease_id]

    # A lease whose expiry passed without renewal is due even while its session looks open.
    assert live_cred.lease_id is not None
    await ledger.renewed(live_cred.lease_id, store.clock() - timedelta(seconds=1))
    assert (await reap(ledger, providers)).revoked == 1
    assert not await role_exists(upstream, live_cred.username)
    assert await ledger.outstanding() == []
