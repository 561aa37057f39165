"""Composition of the approvals service for a process (`jitgate proxy`, `api`, `demo`,
`slack`, and the `worker`'s tasks): `open_approvals` is the one place a process gets its
`ApprovalService`, so none can forget the bus and decide where no waiter hears it.

- The decision bus: Redis pub/sub on the installation's channel when `broker_url` is a
  redis:// URL (or, unset, when Redis answers at 127.0.0.1:6379), so a decision taken in any
  process (an API instance, the Slack app, the worker expiring a request) reaches the proxy
  that parked the statement; otherwise in-process only.
- The dispatcher: Celery tasks (on the installation's queue) that post and update Slack
  prompts, when `slack` is configured; otherwise none (decide in the console, CLI or API).

An explicitly configured Redis that does not answer is an error at start: a proxy that
would never hear decisions must not start pretending it can park statements.
`listen=False` (the worker) publishes without subscribing: it decides but never waits.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from fastapi import FastAPI

from broker.approvals.bus import DecisionBus, LocalBus, RedisBus, channel_for
from broker.approvals.service import ApprovalService, Dispatcher
from broker.config import Settings
from broker.exceptions import ConfigError
from broker.store.access_requests import AccessRequestRepository
from broker.store.approvals import ApprovalRepository
from broker.store.tokens import TokenRepository

log = structlog.get_logger("jitgate.approvals")

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def _redis_answers(host: str = "127.0.0.1", port: int = 6379) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def resolve_broker_url(settings: Settings) -> str:
    """The Celery broker / bus URL: configured, else local Redis if up, else SQLite via kombu."""
    configured = settings.broker_url.get_secret_value().strip()
    if configured:
        return configured
    if _redis_answers():
        return DEFAULT_REDIS
    return f"sqla+sqlite:///{Path(settings.data_dir).resolve() / 'celery.db'}"


async def open_approvals(
    settings: Settings,
    approvals: ApprovalRepository,
    *,
    dispatcher: Dispatcher | None = None,
    listen: bool = True,
) -> tuple[ApprovalService, Callable[[], Awaitable[None]]]:
    """The service over `approvals` (`store.approvals`), with the bus and dispatcher above."""
    url = resolve_broker_url(settings)
    bus: DecisionBus
    if url.startswith(("redis://", "rediss://")):
        redis_bus = RedisBus(url, channel=channel_for(settings.installation))
        try:
            if listen:
                await redis_bus.start()
        except Exception as exc:
            await redis_bus.close()
            raise ConfigError(
                f"broker_url: Redis does not answer ({type(exc).__name__}); decisions could not reach the proxy"
            ) from None
        bus = redis_bus
    else:
        bus = LocalBus()
    if dispatcher is None and settings.slack is not None:
        from workers.dispatch import CeleryDispatcher

        dispatcher = CeleryDispatcher(url, installation=settings.installation)
    log.info(
        "approvals_ready", bus=type(bus).__name__, installation=settings.installation,
        slack=settings.slack is not None,
    )
    service = ApprovalService(approvals, settings.approvals, bus=bus, dispatcher=dispatcher)
    return service, bus.close


def attach_slack(
    app: FastAPI, settings: Settings, service: ApprovalService, *, tokens: TokenRepository,
    access: AccessRequestRepository,
) -> Callable[[], Awaitable[None]] | None:
    """Serve the Slack app at POST /slack/events (HTTP mode) when `slack` is configured; the
    callable it returns closes what the app holds (its replay cache's connection). `tokens`
    and `access` are where `/jit request` records requests (`BrokerActions`)."""
    if settings.slack is None:
        return None
    from slackapp.actions import BrokerActions
    from slackapp.app import build_app
    from slackapp.http import mount
    from slackapp.middleware.replay import replay_cache_for

    # The replay cache is shared through the installation's Redis when there is one.
    replay = replay_cache_for(resolve_broker_url(settings))
    mount(app, build_app(settings.slack, BrokerActions(service, settings, tokens=tokens, access=access), replay=replay))
    return replay.aclose
