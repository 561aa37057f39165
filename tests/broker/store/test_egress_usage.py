"""Per-agent egress usage in the store: atomic increments per (agent, resource, window), on
SQLite and PostgreSQL, from many tasks and from several Store instances (processes) at once."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from broker.store import EgressCharge, Store
from tests.broker.store.store_backends import backend_url, clock, store  # noqa: F401 - fixtures

HOUR = 3600


def charge(rows: int = 0, nbytes: int = 0, *, principal: str = "agent:a", resource: str = "demo",
           window: int = HOUR, start: int = 7200) -> EgressCharge:
    return EgressCharge(principal, resource, window, start, rows, nbytes)


async def test_charges_add_up_per_agent_resource_and_window(store: Store) -> None:  # noqa: F811
    assert await store.egress.charge_egress([charge()]) == [(0, 0)]  # nothing charged yet: a read
    assert await store.egress.charge_egress([charge(3, 300)]) == [(3, 300)]
    assert await store.egress.charge_egress([charge(2, 20), charge(principal="agent:b", rows=1)]) == [(5, 320), (1, 0)]
    # Another resource, another window, another window length: separate totals.
    others = [charge(1, 1, resource="other"), charge(1, 1, start=7200 + HOUR), charge(1, 1, window=60)]
    assert await store.egress.charge_egress(others) == [(1, 1)] * 3
    assert await store.egress.charge_egress([charge()]) == [(5, 320)]


async def test_same_key_twice_in_one_batch_counts_both(store: Store) -> None:  # noqa: F811
    assert await store.egress.charge_egress([charge(1, 10), charge(2, 20)]) == [(1, 10), (3, 30)]


async def test_negative_charge_is_refused(store: Store) -> None:  # noqa: F811
    with pytest.raises(ValueError):
        await store.egress.charge_egress([charge(-1)])


async def test_concurrent_charges_from_tasks_and_other_processes_are_not_lost(
    store: Store, backend_url: str  # noqa: F811
) -> None:
    # Several Store instances on one database stand for proxy processes sharing the store.
    others = [await Store.open(backend_url) for _ in range(2)]
    try:
        stores = [store, *others]
        await asyncio.gather(
            *(stores[i % 3].egress.charge_egress([charge(1, 10), charge(1, 1, principal="agent:b")]) for i in range(30))
        )
        assert await others[0].egress.charge_egress([charge(), charge(principal="agent:b")]) == [(30, 300), (30, 30)]
    finally:
        for other in others:
            await other.close()


async def test_prune_drops_only_windows_that_ended_before(store: Store) -> None:  # noqa: F811
    await store.egress.charge_egress([charge(1, start=0), charge(1, start=HOUR), charge(1, start=2 * HOUR)])
    assert await store.egress.prune_egress_usage(2 * HOUR) == 1  # [0, 1h) ended before 2h; [1h, 2h) did not
    assert await store.egress.charge_egress([charge(start=0), charge(start=HOUR)]) == [(0, 0), (1, 0)]


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
async def test_reading_totals_does_not_wait_for_another_processs_write_lock(
    store: Store, backend_url: str  # noqa: F811
) -> None:
    """An idle sync or a session start only reads: it does not queue behind the recorder."""
    await store.egress.charge_egress([charge(2, 20)])
    other = sqlite3.connect(backend_url.split("///", 1)[1], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # what a writer holds while it writes a batch
        assert await asyncio.wait_for(store.egress.charge_egress([charge(), charge(principal="agent:b")]), 2) == [
            (2, 20), (0, 0)
        ]
        charging = asyncio.ensure_future(store.egress.charge_egress([charge(1, 1)]))  # a write waits
        await asyncio.sleep(0.3)
        assert not charging.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await asyncio.wait_for(charging, 5) == [(3, 21)]
