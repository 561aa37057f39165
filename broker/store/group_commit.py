"""Group commit: calls that arrive while a batch is being written share the next transaction.

A burst of a thousand connects would otherwise be a thousand serialised store transactions
(each takes the audit chain's lock), with every caller waiting behind all the others. Here
the first call is written at once, alone, so an idle gateway pays no extra latency; calls
that come in meanwhile queue up and go together in the next batch, up to `max_batch`.

Failure isolation: when a batch of several fails, its items are retried one by one, so one
bad item (an integrity error, say) fails only its own caller; an error that `isolate` says
would fail them all alike (the store is down) goes to every caller of the batch at once. A caller cancelled while
queued is dropped; one cancelled while its item was being written does not lose the
result: it goes to `abandoned(item, result)`, so that, for example, a session recorded as started for a
client that is already gone can be recorded as ended.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        max_batch: int = 256,
        abandoned: Callable[[T, R], None] | None = None,
        isolate: Callable[[Exception], bool] = lambda exc: True,
    ) -> None:
        """`isolate(exc)`: whether a failed batch is retried item by item (say no for errors
        that would fail every item alike, a store that is down: its callers all get `exc`)."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._write = write
        self._max_batch = max_batch
        self._abandoned = abandoned
        self._isolate = isolate
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions written, for tests and metrics

    async def submit(self, item: T) -> R:
        """Write `item` (with whatever else is queued) and return its result, or raise its error."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                # A caller cancelled while queued (its client went away) is not written at all.
                batch = [entry for entry in batch if not entry[1].cancelled()]
                if batch:
                    await self._write_batch(batch)
        finally:
            self._task = None
            # Items queued after a cancellation of this task (loop shutdown) fail rather than hang.
            while self._queue:
                _, future = self._queue.popleft()
                if not future.done():
                    future.set_exception(RuntimeError("group commit stopped"))

    async def _write_batch(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write([item for item, _ in batch])
            self.batches += 1
        except Exception as exc:
            if len(batch) == 1 or not self._isolate(exc):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for one in batch:  # isolate the failing item(s)
                await self._write_batch([one])
            return
        for (item, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
            elif future.cancelled() and self._abandoned is not None:
                self._abandoned(item, result)
