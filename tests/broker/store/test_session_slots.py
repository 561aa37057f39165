"""Session slots in the store: the concurrent-session caps, counted across proxy processes
(several Store instances on one database), on SQLite and PostgreSQL; leases of a process
that died lapse."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from broker.store import Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401 - fixtures

LEASE = timedelta(seconds=30)


async def admit(
    store: Store,  # noqa: F811
    slot: str,
    *,
    token: str | None = "t1",
    principal: str = "agent:a",
    per_token: int | None = 2,
    per_principal: int | None = 3,
) -> str | None:
    return await store.slots.admit_session(
        slot, token_id=token, principal=principal, resource="demo",
        per_token=per_token, per_principal=per_principal, lease=LEASE,
    )  # fmt: skip


async def test_caps_per_token_and_per_principal(store: Store) -> None:  # noqa: F811
    assert await admit(store, "s1") is None
    assert await admit(store, "s2") is None
    assert await admit(store, "s3") == "token"  # t1 holds 2
    assert await admit(store, "s3", token="t2") is None  # another token of the same agent
    assert await admit(store, "s4", token="t3") == "agent"  # agent:a holds 3
    assert await admit(store, "s4", token="t3", principal="agent:b") is None
    assert await store.slots.session_slots(token_id="t1") == 2
    assert await store.slots.session_slots(principal="agent:a") == 3
    await store.slots.release_session_slot("s1")
    assert await admit(store, "s5") is None  # a slot given back is free again


async def test_no_cap_and_no_token(store: Store) -> None:  # noqa: F811
    for i in range(5):
        assert await admit(store, f"s{i}", per_token=None, per_principal=None) is None
    assert await admit(store, "x", token=None, per_token=1, per_principal=None) is None


async def test_a_dead_processs_slots_lapse_and_renewal_keeps_live_ones(store: Store, clock: FakeClock) -> None:  # noqa: F811
    assert await admit(store, "dead") is None
    assert await admit(store, "live") is None
    assert await admit(store, "new") == "token"
    clock.advance(LEASE - timedelta(seconds=1))
    assert await store.slots.renew_session_slots(["live"], LEASE) == 1  # only its own process renews
    clock.advance(timedelta(seconds=2))  # "dead"'s lease is over, "live"'s is not
    assert await store.slots.session_slots(token_id="t1") == 1
    assert await admit(store, "new") is None
    assert await admit(store, "newer") == "token"


async def test_racing_connects_from_several_processes_never_exceed_a_cap(
    store: Store,  # noqa: F811
    backend_url: str,  # noqa: F811
    clock: FakeClock,  # noqa: F811
) -> None:
    others = [await Store.open(backend_url, clock=clock) for _ in range(2)]
    try:
        stores = [store, *others]
        answers = await asyncio.gather(
            *(admit(stores[i % 3], f"r{i}", per_token=None, per_principal=4) for i in range(24))
        )
        assert answers.count(None) == 4 and answers.count("agent") == 20
        assert await others[1].slots.session_slots(principal="agent:a") == 4
    finally:
        for other in others:
            await other.close()
