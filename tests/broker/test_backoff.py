from __future__ import annotations

import asyncio

import pytest

from broker.backoff import Backoff


async def test_doubles_up_to_the_maximum_and_resets(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    backoff = Backoff(0.1, 0.5)
    for _ in range(5):
        await backoff.wait()
    assert slept == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.delay == 0.1


def test_initial_is_capped_at_the_maximum() -> None:
    assert Backoff(2, 0.5).delay == 0.5


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (1, 0), (-1, 1)])
def test_refuses_a_wait_that_is_not_positive(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Backoff(initial, maximum)
