"""Concurrent-session caps at connect (proxy.admission) over a real store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker import metrics
from broker.exceptions import StoreError
from broker.store import Grant, Store
from proxy.admission import Admission, SessionCapReached, SessionCaps
from proxy.exceptions import ClientRefused, to_error_response
from proxy.protocol import messages


def grant(token_id: str | None = "tok-1", principal: str = "agent:a") -> Grant:
    return Grant(token_id, principal, ("ai-agents",), "demo", "readwrite", datetime.now(UTC) + timedelta(hours=1), True)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/jitgate.db")
    try:
        yield opened
    finally:
        await opened.close()


def refusals(limit: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("jitgate_session_cap_refusals_total", {"resource": "demo", "limit": limit})
        or 0
    )


async def test_the_token_cap_refuses_with_53300_naming_the_limit_not_the_token(store: Store) -> None:
    admission = Admission(store.slots, SessionCaps(per_agent=10, per_token=2))
    slots = [await admission.admit(grant(), resource="demo") for _ in range(2)]
    before = refusals("token")
    with pytest.raises(SessionCapReached) as err:
        await admission.admit(grant(), resource="demo")
    assert err.value.sqlstate == "53300"
    assert str(err.value) == (
        "too many concurrent sessions for this token: the gateway allows 2 (proxy.max_sessions_per_token)"
    )
    assert "tok-1" not in str(err.value) and "tok-1" not in repr(to_error_response(err.value))
    fields = dict(messages.parse_fields(to_error_response(err.value)[5:]))
    assert fields["C"] == "53300"
    assert refusals("token") == before + 1
    await slots[0].release()
    await slots[0].release()  # idempotent
    assert admission.held == 1
    await admission.admit(grant(), resource="demo")


async def test_the_agent_cap_spans_its_tokens_and_spares_others(store: Store) -> None:
    admission = Admission(store.slots, SessionCaps(per_agent=3, per_token=5))
    for i in range(3):
        await admission.admit(grant(f"tok-{i}"), resource="demo")
    before = refusals("agent")
    with pytest.raises(SessionCapReached, match="this agent: the gateway allows 3"):
        await admission.admit(grant("tok-9"), resource="demo")
    assert refusals("agent") == before + 1
    await admission.admit(grant("tok-9", principal="agent:b"), resource="demo")
    # A person is not an agent: only the per-token cap applies to them.
    for i in range(4):
        await admission.admit(grant(f"p-{i}", principal="user:alice@example.com"), resource="demo")


async def test_no_caps(store: Store) -> None:
    admission = Admission(store.slots, SessionCaps(per_agent=None, per_token=None))
    for _ in range(20):
        await admission.admit(grant(), resource="demo")


async def test_a_store_that_cannot_count_refuses_the_connect(store: Store) -> None:
    class Down:
        async def admit_session(self, *args: object, **kwargs: object) -> None:
            raise StoreError("store unreachable")

    admission = Admission(Down(), SessionCaps())  # type: ignore[arg-type]
    with pytest.raises(ClientRefused) as err:
        await admission.admit(grant(), resource="demo")
    assert err.value.sqlstate == "57P03"


async def test_renewal_keeps_a_live_processs_slots_past_the_lease(store: Store) -> None:
    caps = SessionCaps(per_agent=None, per_token=1, lease_seconds=0.6)
    admission = Admission(store.slots, caps)
    renew = asyncio.create_task(admission.run())
    try:
        await admission.admit(grant(), resource="demo")
        await asyncio.sleep(1.5)  # past the lease: renewed meanwhile, so still held
        with pytest.raises(SessionCapReached):
            await Admission(store.slots, caps).admit(grant(), resource="demo")
    finally:
        renew.cancel()
    # The process stops renewing (it died): the slot lapses within the lease.
    await asyncio.sleep(0.8)
    await Admission(store.slots, caps).admit(grant(), resource="demo")
