"""Exponential backoff for the retry loops that wait out an unavailable dependency (the store
for the recorder, the SIEM sink for the audit forwarder, Redis for the approvals bus)."""

from __future__ import annotations

import asyncio


class Backoff:
    """`initial` seconds (at most `maximum`), doubling after each wait up to `maximum`;
    `reset()` after a success."""

    __slots__ = ("initial", "maximum", "delay")

    def __init__(self, initial: float, maximum: float) -> None:
        if not (initial > 0 and maximum > 0):
            raise ValueError("backoff initial and maximum must be positive")
        self.initial = min(initial, maximum)
        self.maximum = maximum
        self.delay = self.initial  # the next wait, for logs ("retry_in")

    def reset(self) -> None:
        self.delay = self.initial

    async def wait(self) -> None:
        delay = self.delay
        self.delay = min(delay * 2, self.maximum)
        await asyncio.sleep(delay)
