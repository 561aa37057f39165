"""Failed logins become chained audit records without waiting for the store, counted in
AUTH_FAILURES; a flood stays bounded, is counted, and says in the chain how much it left out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import metrics
from broker.audit import events
from broker.audit.logins import MAX_CLAIM, FailedLogins
from broker.exceptions import StoreUnavailable
from broker.store import Store


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/audit.db")
    try:
        yield s
    finally:
        await s.close()


async def failed(store: Store) -> list[dict]:
    return [{**r.data, "type": r.type} async for r in store.iter_audit() if r.type == "auth.login_failed"]


class GatedStore:
    """The real store behind a gate: appends wait until the test opens it, or fail while told to."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.failures = 0
        self.calls = 0

    async def append_audit(self, *evs: events.AuditEvent) -> object:
        self.calls += 1
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("store away")
        return await self.store.append_audit(*evs)


async def test_a_failed_login_is_recorded_and_counted(store: Store) -> None:
    logins = FailedLogins(store)
    before = sample("jitgate_auth_failures_total", reason="revoked")
    logins.record(user="agent:ci", resource="demo", client_addr="10.0.0.7:51234", reason="revoked", token_id="t-1")
    assert sample("jitgate_auth_failures_total", reason="revoked") == before + 1  # counted at once
    await logins.flush()
    assert await failed(store) == [{
        "type": "auth.login_failed", "user": "agent:ci", "resource": "demo", "client_addr": "10.0.0.7:51234",
        "reason": "revoked", "via": "proxy", "token_id": "t-1", "ok": False,
    }]
    assert (await store.verify_audit()).ok


async def test_a_claimed_name_that_looks_like_a_token_is_not_recorded(store: Store) -> None:
    logins = FailedLogins(store)
    token = "jgt_" + "A" * 43
    logins.record(user=token, resource="x" * 1000, client_addr=None, reason="malformed")
    await logins.flush()
    [record] = await failed(store)
    assert token not in str(record) and "jgt_" not in str(record)
    assert len(record["resource"]) == MAX_CLAIM


async def test_record_does_not_wait_for_a_slow_store(store: Store) -> None:
    gated = GatedStore(store)
    logins = FailedLogins(gated)
    for i in range(5):
        logins.record(user=f"u{i}", resource="demo", client_addr=None, reason="unknown")
    await asyncio.sleep(0.05)
    assert gated.calls == 1 and logins.pending == 5  # queued; the write waits behind the gate
    gated.gate.set()
    await logins.flush()
    assert [r["user"] for r in await failed(store)] == [f"u{i}" for i in range(5)]


async def test_a_flood_is_bounded_counted_and_summarised_in_the_chain(store: Store) -> None:
    gated = GatedStore(store)
    logins = FailedLogins(gated, limit=100, batch_size=40)
    dropped = sample("jitgate_recorder_dropped_total", cause="login_flood")
    failures = sample("jitgate_auth_failures_total", reason="unknown")
    for i in range(350):
        logins.record(user=f"u{i}", resource="demo", client_addr="192.0.2.1:1", reason="unknown")
    assert logins.pending == 100  # bounded
    assert sample("jitgate_auth_failures_total", reason="unknown") == failures + 350  # every one counted
    assert sample("jitgate_recorder_dropped_total", cause="login_flood") == dropped + 250
    gated.gate.set()
    await logins.flush()
    records = await failed(store)
    assert len(records) == 101
    assert records[-1]["reason"] == "suppressed" and records[-1]["suppressed"] == 250
    # The next failure after the summary carries no stale count.
    logins.record(user="late", resource="demo", client_addr=None, reason="unknown")
    await logins.flush()
    assert "suppressed" not in (await failed(store))[-1]


async def test_a_failing_store_is_retried_not_dropped(store: Store) -> None:
    gated = GatedStore(store)
    gated.failures = 2
    gated.gate.set()
    logins = FailedLogins(gated, max_backoff=0.05)
    logins.record(user="bob", resource="demo", client_addr=None, reason="expired")
    await asyncio.wait_for(logins.flush(), 5)
    assert gated.calls == 3 and [r["user"] for r in await failed(store)] == ["bob"]


async def test_close_writes_what_is_queued(store: Store) -> None:
    logins = FailedLogins(store)
    logins.record(user="bob", resource="demo", client_addr=None, reason="expired")
    await logins.aclose()
    assert len(await failed(store)) == 1
    logins.record(user="after", resource="demo", client_addr=None, reason="expired")  # counted, not queued
    assert logins.pending == 0
