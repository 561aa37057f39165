"""The decision bus on the real Redis: installations that share it do not hear each other."""

from __future__ import annotations

import asyncio

import pytest

from broker.approvals.bus import CHANNEL, RedisBus, channel_for


def test_channel_is_named_by_installation() -> None:
    assert channel_for("prod-eu") == "jitgate:prod-eu:approvals"
    assert CHANNEL == channel_for("default")


async def test_a_decision_of_one_installation_is_not_heard_by_another(redis_url: str) -> None:
    a = RedisBus(redis_url, channel=channel_for("inst-a"))
    b = RedisBus(redis_url, channel=channel_for("inst-b"))
    # Deciding processes (an API instance, the worker) publish without listening.
    publisher_a = RedisBus(redis_url, channel=channel_for("inst-a"))
    publisher_b = RedisBus(redis_url, channel=channel_for("inst-b"))
    await a.start()
    await b.start()
    try:
        heard_by_a, heard_by_b = a.waiter("req-1"), b.waiter("req-1")
        await publisher_a.publish("req-1", "expired")
        assert await asyncio.wait_for(heard_by_a, 2) == "expired"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(heard_by_b), 1)
        # B hears its own installation's decisions on the same Redis.
        await publisher_b.publish("req-1", "denied")
        assert await asyncio.wait_for(heard_by_b, 2) == "denied"
    finally:
        for bus in (a, b, publisher_a, publisher_b):
            await bus.close()
