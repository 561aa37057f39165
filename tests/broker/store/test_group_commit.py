from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from broker.exceptions import StoreUnavailable
from broker.store.group_commit import GroupCommit


class Writer:
    """Records each batch it is given; items named 'bad' make a batch fail."""

    def __init__(self, *, delay: float = 0.01, error: type[Exception] = ValueError) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.error = error

    async def __call__(self, items: Sequence[str]) -> list[str]:
        await asyncio.sleep(self.delay)
        if "bad" in items:
            raise self.error(f"cannot write {list(items)}")
        self.batches.append(list(items))
        return [item.upper() for item in items]


async def test_a_lone_call_is_written_at_once_and_alone() -> None:
    writer = Writer()
    group = GroupCommit(writer)
    assert await group.submit("a") == "A"
    assert writer.batches == [["a"]]


async def test_calls_arriving_during_a_write_share_the_next_batch_in_order() -> None:
    writer = Writer()
    group = GroupCommit(writer)
    first = asyncio.ensure_future(group.submit("s0"))
    await asyncio.sleep(0)  # s0 is being written
    results = await asyncio.gather(*(group.submit(f"s{i}") for i in range(1, 50)))
    assert await first == "S0"
    assert results == [f"S{i}" for i in range(1, 50)]
    # The first went alone; the 49 that queued meanwhile went together.
    assert writer.batches == [["s0"], [f"s{i}" for i in range(1, 50)]]
    assert group.batches == 2


async def test_batches_are_capped() -> None:
    writer = Writer()
    group = GroupCommit(writer, max_batch=10)
    await asyncio.gather(*(group.submit(f"s{i}") for i in range(31)))
    assert [len(b) for b in writer.batches] == [10, 10, 10, 1]


async def test_a_bad_item_fails_only_its_own_caller() -> None:
    writer = Writer()
    group = GroupCommit(writer)
    first = asyncio.ensure_future(group.submit("first"))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(group.submit(x)) for x in ("a", "bad", "b")]
    await first
    done = await asyncio.gather(*rest, return_exceptions=True)
    assert done[0] == "A" and done[2] == "B"
    assert isinstance(done[1], ValueError)


async def test_an_error_that_is_not_isolated_goes_to_every_caller_of_the_batch_once() -> None:
    writer = Writer(error=StoreUnavailable)
    group = GroupCommit(writer, isolate=lambda exc: not isinstance(exc, StoreUnavailable))
    first = asyncio.ensure_future(group.submit("first"))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(group.submit(x)) for x in ("a", "bad", "b")]
    await first
    done = await asyncio.gather(*rest, return_exceptions=True)
    assert all(isinstance(d, StoreUnavailable) for d in done)
    assert writer.batches == [["first"]]  # no item-by-item retries against a store that is down


async def test_a_cancelled_caller_s_result_goes_to_abandoned() -> None:
    abandoned: list[tuple[str, str]] = []
    writer = Writer(delay=0.05)
    group = GroupCommit(writer, abandoned=lambda item, result: abandoned.append((item, result)))
    call = asyncio.ensure_future(group.submit("gone"))
    await asyncio.sleep(0.01)  # being written
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(0.1)
    assert writer.batches == [["gone"]]
    assert abandoned == [("gone", "GONE")]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(Writer(), max_batch=0)
