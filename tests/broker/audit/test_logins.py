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
    return [{**r.data, "type": r.type} async for r in store.audit.iter_audit() if r.type == "auth.login_failed"]


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
        return await self.store.audit.append_audit(*evs)


async def test_a_failed_login_is_recorded_and_counted(store: Store) -> None:
    logins = FailedLogins(store.audit)
    before = sample("jitgate_auth_failures_total", reason="revoked")
    logins.record(user="agent:ci", resource="demo", client_addr="10.0.0.7:51234", reason="revoked", token_id="t-1")
    assert sample("jitgate_auth_failures_total", reason="revoked") == before + 1  # counted at once
    await logins.flush()
    assert await failed(store) == [{
        "type": "auth.login_failed", "user": "agent:ci", "resource": "demo", "client_addr": "10.0.0.7:51234",
        "reason": "revoked", "via": "proxy", "token_id": "t-1", "ok": False,
    }]
    assert (await store.audit.verify_audit()).ok


async def test_a_claimed_name_that_looks_like_a_token_is_not_recorded(store: Store) -> None:
    logins = FailedLogins(store.audit)
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
        logins.record(user="mallory", resource="demo", client_addr=f"192.0.2.{i % 200}:1", reason="unknown")
    assert logins.pending == 100  # bounded
    assert sample("jitgate_auth_failures_total", reason="unknown") == failures + 350  # every one counted
    assert sample("jitgate_recorder_dropped_total", cause="login_flood") == dropped + 250
    gated.gate.set()
    await logins.flush()
    records = await failed(store)
    # One record each for the first 100; the other 250 differ only in their address inside one
    # /24: one summary, saying how many, from where, and when.
    assert len(records) == 101 and not any("suppressed" in r for r in records[:100])
    summary = records[-1]
    assert summary["suppressed"] == 250 and summary["network"] == "192.0.2.0/24"
    assert (summary["reason"], summary["user"], summary["resource"]) == ("unknown", "mallory", "demo")
    assert summary["client_addr"] == "192.0.2.100:1"  # the first one seen
    assert summary["first_seen"] <= summary["last_seen"]
    # The next failure after the summary carries no stale count.
    logins.record(user="late", resource="demo", client_addr=None, reason="unknown")
    await logins.flush()
    assert "suppressed" not in (await failed(store))[-1]
    assert (await store.audit.verify_audit()).ok


async def test_a_flood_does_not_fold_another_attempt_into_its_count(store: Store) -> None:
    """The red team's case: a flood from one address hides a stolen token tried from another."""
    gated = GatedStore(store)
    logins = FailedLogins(gated, limit=50, batch_size=20)
    for _ in range(500):
        logins.record(user="x", resource="demo", client_addr="203.0.113.9:4000", reason="malformed")
    logins.record(user="agent:billing", resource="ledger", client_addr="198.51.100.23:5000", reason="revoked",
                  token_id="t-stolen")
    for _ in range(500):
        logins.record(user="x", resource="demo", client_addr="203.0.113.9:4000", reason="malformed")
    gated.gate.set()
    await logins.flush()
    records = await failed(store)
    [real] = [r for r in records if r["user"] == "agent:billing"]
    assert real["suppressed"] == 1 and real["network"] == "198.51.100.0/24"
    assert (real["reason"], real["resource"], real["token_id"]) == ("revoked", "ledger", "t-stolen")
    assert real["client_addr"] == "198.51.100.23:5000"
    # Every failure is in the chain once: one by one or in a summary of its own kind.
    flood = [r for r in records if r["user"] == "x"]
    assert all(r["reason"] == "malformed" for r in flood)
    assert sum(r.get("suppressed", 1) for r in flood) == 1000


async def test_a_flood_of_distinct_claims_is_bounded_per_network_and_overall(store: Store) -> None:
    """Varying the claimed user cannot take every slot: one network gets `per_network` kinds
    and one bucket for the rest, and past `max_keys` kinds all go to one bucket."""
    gated = GatedStore(store)
    logins = FailedLogins(gated, limit=10, batch_size=10, max_keys=20, per_network=4)
    for i in range(10 + 300):
        logins.record(user=f"u{i}", resource="demo", client_addr="192.0.2.1:1", reason="unknown")
    logins.record(user="bob", resource="demo", client_addr="198.51.100.1:1", reason="expired")
    for n in range(30):  # 30 networks: past max_keys
        logins.record(user="eve", resource="demo", client_addr=f"10.{n}.0.1:1", reason="unknown")
    assert logins.tallied <= 20 + 1
    gated.gate.set()
    await logins.flush()
    records = (await failed(store))[10:]
    flood = [r for r in records if r.get("network") == "192.0.2.0/24"]
    assert len(flood) == 5 and sum(r["suppressed"] for r in flood) == 300
    [rest] = [r for r in flood if r["reason"] == "suppressed"]
    assert rest["suppressed"] == 296 and rest["user"] is None
    assert [r["user"] for r in records if r.get("network") == "198.51.100.0/24"] == ["bob"]
    [other] = [r for r in records if r["reason"] == "suppressed" and r.get("network") is None]
    assert sum(r["suppressed"] for r in records) == 300 + 1 + 30
    assert other["suppressed"] == 30 - (20 - 6)


async def test_a_failing_store_is_retried_not_dropped(store: Store) -> None:
    gated = GatedStore(store)
    gated.failures = 2
    gated.gate.set()
    logins = FailedLogins(gated, max_backoff=0.05)
    logins.record(user="bob", resource="demo", client_addr=None, reason="expired")
    await asyncio.wait_for(logins.flush(), 5)
    assert gated.calls == 3 and [r["user"] for r in await failed(store)] == ["bob"]


async def test_close_writes_what_is_queued(store: Store) -> None:
    logins = FailedLogins(store.audit)
    logins.record(user="bob", resource="demo", client_addr=None, reason="expired")
    await logins.aclose()
    assert len(await failed(store)) == 1
    logins.record(user="after", resource="demo", client_addr=None, reason="expired")  # counted, not queued
    assert logins.pending == 0
