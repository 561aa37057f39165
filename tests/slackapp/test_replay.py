"""A signed request is accepted once: replays within Slack's timestamp window get 401."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from slackapp.app import build_app
from slackapp.http import mount
from slackapp.middleware.replay import (
    TTL,
    WINDOW,
    MemoryReplayCache,
    RedisReplayCache,
    ReplayCache,
    replay_cache_for,
)
from slackapp.settings import SlackSettings
from tests.conftest import free_port
from tests.slack_double import SlackDouble
from tests.slack_signing import SignedRequest, SlackSigner
from tests.slackapp.fakes import InMemoryApprovals, make_approval


async def send(http: httpx.AsyncClient, request: SignedRequest) -> httpx.Response:
    return await http.post("/slack/events", content=request.body, headers=request.headers)


def open_http(settings: SlackSettings, approvals: InMemoryApprovals, replay: ReplayCache) -> httpx.AsyncClient:
    """One process serving /slack/events with its own app (and its own handle on the cache)."""
    api = FastAPI()
    mount(api, build_app(settings, approvals, replay=replay))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://jitgate.test")


@pytest.fixture
async def redis_caches(redis_url: str) -> AsyncIterator[tuple[RedisReplayCache, RedisReplayCache]]:
    first, second = RedisReplayCache(redis_url), RedisReplayCache(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


async def test_the_same_signed_click_is_accepted_once(
    http: httpx.AsyncClient, slack: SlackDouble, approvals: InMemoryApprovals, signer: SlackSigner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    approval = approvals.add(make_approval())
    signed = signer.block_actions(user_id="U_ALICE", action_id="jitgate_approve", value=approval.id,
                                  channel="C_APPROVALS", message_ts="1.000001")
    assert (await send(http, signed)).status_code == 200
    await slack.wait_for_async("users.info")
    with caplog.at_level(logging.WARNING, logger="slackapp.middleware.replay"):
        replayed = await send(http, signed)
    assert replayed.status_code == 401
    assert slack.count("users.info") == 1  # the listener ran for the first delivery only
    logged = caplog.text
    assert "replayed" in logged and signed.headers["X-Slack-Request-Timestamp"] in logged
    assert signed.headers["X-Slack-Signature"] not in logged and signed.headers["X-Slack-Signature"][3:] not in logged


async def test_a_fresh_signature_of_the_same_body_is_a_new_request(
    http: httpx.AsyncClient, signer: SlackSigner,
) -> None:
    # Slack signs each delivery (its retries included) with the time it sends it.
    first = signer.url_verification("abc", timestamp=time.time() - 2)
    again = signer.url_verification("abc")
    assert first.body == again.body and first.headers != again.headers
    assert (await send(http, first)).status_code == 200
    assert (await send(http, again)).status_code == 200
    assert (await send(http, again)).status_code == 401
    assert (await send(http, signer.url_verification("abc", timestamp=time.time() - WINDOW - 60))).status_code == 401


async def test_replays_are_refused_across_processes_through_redis(
    settings: SlackSettings, approvals: InMemoryApprovals, signer: SlackSigner,
    redis_caches: tuple[RedisReplayCache, RedisReplayCache], redis_url: str,
) -> None:
    one, two = redis_caches
    signed = signer.url_verification("shared")
    async with open_http(settings, approvals, one) as a, open_http(settings, approvals, two) as b:
        assert (await send(a, signed)).status_code == 200
        assert (await send(b, signed)).status_code == 401  # another process, the same Redis
        assert (await send(a, signed)).status_code == 401
        assert (await send(b, signer.url_verification("other"))).status_code == 200
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = await client.keys("jitgate:slack:seen:*")
        assert len(keys) == 2
        assert 0 < await client.ttl(keys[0]) <= TTL
    finally:
        await client.aclose()


async def test_an_unreachable_cache_fails_closed(
    settings: SlackSettings, approvals: InMemoryApprovals, signer: SlackSigner, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = RedisReplayCache(f"redis://127.0.0.1:{free_port()}/0")
    async with open_http(settings, approvals, dead) as http:
        with caplog.at_level(logging.ERROR, logger="slackapp.middleware.replay"):
            response = await send(http, signer.url_verification("abc"))
    await dead.aclose()
    assert response.status_code == 503 and "replay cache unavailable" in caplog.text


async def test_memory_cache_forgets_after_the_ttl() -> None:
    now = [1000.0]
    cache = MemoryReplayCache(clock=lambda: now[0])
    assert await cache.first_time("a", ttl=10) and not await cache.first_time("a", ttl=10)
    assert await cache.first_time("b", ttl=10)
    now[0] += 10.5
    assert await cache.first_time("a", ttl=10)  # expired: the timestamp check refuses it by now anyway
    assert list(cache._seen) == ["a"]  # "b" expired and was dropped


def test_the_cache_follows_the_broker_url() -> None:
    assert isinstance(replay_cache_for("redis://127.0.0.1:6379/0"), RedisReplayCache)
    assert isinstance(replay_cache_for("sqla+sqlite:////tmp/celery.db"), MemoryReplayCache)
    assert isinstance(replay_cache_for(None), MemoryReplayCache)
