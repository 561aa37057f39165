"""A signed request from Slack is accepted once.

Bolt checks the signature (HMAC-SHA256 of `v0:<timestamp>:<body>`) and refuses a timestamp
more than `WINDOW` seconds from now, so a captured request can be replayed only within that
window; `SignedOnce` closes it. It runs right after bolt's signature check (as bolt's
`before_authorize` middleware), records each accepted request's signature in a replay cache
for as long as its timestamp stays acceptable, and answers a second delivery of the same
signed request with 401, like a bad signature; the listeners never see it.

Where the Slack app runs in several processes (API replicas, `--workers N`) the cache must
be shared: `RedisReplayCache` (`SET key NX EX ttl`, atomic across processes) when the
installation has Redis (`broker_url`), `MemoryReplayCache` (this process only) otherwise.
A cache that cannot answer fails closed: 503, and Slack retries.

Socket Mode requests carry no signature (the websocket is authenticated by the app token)
and are not checked here. Logs name the request's timestamp, never its signature or body.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse

log = logging.getLogger(__name__)

WINDOW = 300  # seconds either side of now that Slack's (and bolt's) signature check accepts
# A timestamp up to WINDOW ahead of now stays acceptable for up to 2 x WINDOW from now.
TTL = 2 * WINDOW
KEY_PREFIX = "jitgate:slack:seen:"


class ReplayCache(Protocol):
    async def first_time(self, key: str, *, ttl: int) -> bool:
        """Record `key` for `ttl` seconds; True unless it was already recorded (atomically)."""
        ...

    async def aclose(self) -> None: ...


class MemoryReplayCache:
    """One process's cache; right only when one process serves Slack."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._seen: dict[str, float] = {}  # key -> expiry
        self._clock = clock

    async def first_time(self, key: str, *, ttl: int) -> bool:
        now = self._clock()
        if self._seen.get(key, 0.0) > now:
            return False
        # Insertion order is expiry order (one ttl for all): drop the expired from the front.
        for old in list(self._seen):
            if self._seen[old] > now:
                break
            del self._seen[old]
        self._seen[key] = now + ttl
        return True

    async def aclose(self) -> None:
        return None


class RedisReplayCache:
    """Shared by every process on the same Redis."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)

    async def first_time(self, key: str, *, ttl: int) -> bool:
        return bool(await self._redis.set(key, b"1", nx=True, ex=ttl))

    async def aclose(self) -> None:
        await self._redis.aclose()


def replay_cache_for(broker_url: str | None) -> ReplayCache:
    """Redis when the installation's broker is Redis (shared by its processes), else in-process."""
    if broker_url and broker_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisReplayCache(broker_url)
    return MemoryReplayCache()


class SignedOnce(AsyncMiddleware):
    def __init__(self, cache: ReplayCache, *, prefix: str = KEY_PREFIX) -> None:
        self.cache = cache
        self.prefix = prefix

    async def async_process(
        self, *, req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]],  # noqa: A002
    ) -> BoltResponse:
        if req.mode == "socket_mode":
            return await next()
        timestamp = (req.headers.get("x-slack-request-timestamp") or [""])[0]
        signature = (req.headers.get("x-slack-signature") or [""])[0]
        # The signature covers timestamp and body: equal signatures are the same signed request.
        key = self.prefix + hashlib.sha256(f"{timestamp}:{signature}".encode()).hexdigest()
        try:
            first = await self.cache.first_time(key, ttl=TTL)
        except Exception as exc:
            log.error("slack replay cache unavailable (%s); request refused", type(exc).__name__)
            return BoltResponse(status=503, body={"error": "replay cache unavailable"})
        if not first:
            log.warning("slack request replayed (timestamp %s); refused", timestamp)
            return BoltResponse(status=401, body={"error": "invalid request"})
        return await next()
