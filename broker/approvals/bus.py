"""How a decision reaches the proxy that parked the statement: push, not polling.

`publish(approval_id, status)` after a transition commits; `waiter(approval_id)` returns a
future that resolves with the next published status of that request. The waiter is taken
*before* re-reading the store, so a decision that lands between the read and the wait is not
missed. The store stays the truth: a waiter only says "look again now".

- `LocalBus`: one process (the demo, tests, a single-process deployment on SQLite).
- `RedisBus`: Redis pub/sub on the installation's channel, ``jitgate:<installation>:approvals``
  (`channel_for`): any API instance or worker publishes, every proxy process of that
  installation hears, and another installation on the same Redis hears nothing (pub/sub
  channels are server-wide, not per database number). A lost Redis connection is
  re-established with backoff; meanwhile waiters still wake at their deadline and read the
  store. A process that only decides (the worker) publishes without `start()`ing a listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Protocol

import structlog

from broker.backoff import Backoff

log = structlog.get_logger("jitgate.approvals")



def channel_for(installation: str) -> str:
    return f"jitgate:{installation}:approvals"


CHANNEL = channel_for("default")  # the channel of the default installation


class DecisionBus(Protocol):
    async def publish(self, approval_id: str, status: str) -> None: ...

    def waiter(self, approval_id: str) -> asyncio.Future[str]: ...

    def discard(self, approval_id: str, future: asyncio.Future[str]) -> None: ...

    async def close(self) -> None: ...


class LocalBus:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[str]]] = {}

    def waiter(self, approval_id: str) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(approval_id, set()).add(future)
        return future

    def discard(self, approval_id: str, future: asyncio.Future[str]) -> None:
        waiting = self._waiters.get(approval_id)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._waiters[approval_id]

    def deliver(self, approval_id: str, status: str) -> None:
        for future in self._waiters.pop(approval_id, ()):
            if not future.done():
                # Waiters may live on another loop (the proxy's thread in tests).
                loop = future.get_loop()
                if loop.is_closed():
                    continue
                loop.call_soon_threadsafe(_resolve, future, status)

    async def publish(self, approval_id: str, status: str) -> None:
        self.deliver(approval_id, status)

    async def close(self) -> None:
        for waiting in self._waiters.values():
            for future in waiting:
                future.cancel()
        self._waiters.clear()


def _resolve(future: asyncio.Future[str], status: str) -> None:
    if not future.done():
        future.set_result(status)


class RedisBus(LocalBus):
    """Publishes to Redis and delivers what Redis brings to this process's waiters."""

    def __init__(self, url: str, *, channel: str = CHANNEL) -> None:
        super().__init__()
        import redis.asyncio as redis

        self.channel = channel
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=None)
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Subscribe; returns once subscribed (raises if Redis does not answer)."""
        await asyncio.wait_for(self._redis.ping(), 3)
        self._listener = asyncio.create_task(self._listen(), name="jitgate-approvals-bus")
        await asyncio.wait_for(self._ready.wait(), 5)

    async def _listen(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._ready.set()
                backoff.reset()
                async for message in pubsub.listen():
                    try:
                        body = json.loads(message["data"])
                        self.deliver(str(body["id"]), str(body["status"]))
                    except (ValueError, KeyError, TypeError):
                        log.warning("approvals_bus_bad_message")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost: reconnect; deadlines still read the store
                log.warning("approvals_bus_reconnect", error=type(exc).__name__, retry_in=backoff.delay)
                await backoff.wait()
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def publish(self, approval_id: str, status: str) -> None:
        # Local waiters first: they need no round trip, and Redis being down must not delay
        # a decision taken in this very process.
        self.deliver(approval_id, status)
        try:
            await asyncio.wait_for(
                self._redis.publish(self.channel, json.dumps({"id": approval_id, "status": status})), 2
            )
        except Exception as exc:
            log.warning("approvals_bus_publish_failed", error=type(exc).__name__)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        await self._redis.aclose()
        await super().close()
