"""`/healthz` and `/readyz`: what a load balancer or Kubernetes asks before sending traffic.

    /healthz    the store answers (the API cannot do anything useful without it); the
                liveness probe, and the contract the demo and tests wait on
    /readyz     every dependency the process is configured with answers: the store, Redis
                (when `broker_url` is a redis:// or rediss:// URL),
                Vault/OpenBao `sys/health` (when `vault:` is configured); the readiness probe

Both answer 200 `{"status": "ok", "checks": {...}}` or 503 `{"status": "unavailable", ...}`
with one entry per check: `ok`, `timeout`, or `error: <ExceptionClass>` / `sealed` / ...
Checks run concurrently, each under `CHECK_TIMEOUT_SECONDS`. An answer never names a host,
a URL or a credential: the cause goes to the log, the probe learns only which check failed.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx
import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, SecretStr

from broker.config import Settings
from broker.credentials.settings import VaultSettings
from broker.exceptions import StoreError
from broker.store.base import StoreBase

log = structlog.get_logger("jitgate.api.health")

CHECK_TIMEOUT_SECONDS = 2.0
# Vault answers sys/health with these codes; a standby forwards requests, so it serves us.
_VAULT_STATES = {200: "ok", 429: "ok", 473: "ok", 472: "dr secondary", 501: "not initialized", 503: "sealed"}

router = APIRouter(tags=["operations"])
Check = Callable[[], Awaitable[str]]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": Health, "description": "A dependency is unavailable"}
}


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness: 200 when the store answers, 503 otherwise",
    responses=_RESPONSES,
)
async def healthz(request: Request) -> JSONResponse:
    return await _answer({"store": lambda: check_store(request.app.state.store)})


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: 200 when the store, Redis and Vault (those configured) answer, 503 otherwise",
    responses=_RESPONSES,
)
async def readyz(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    checks: dict[str, Check] = {"store": lambda: check_store(request.app.state.store)}
    redis_url = find_broker_url(settings)
    if redis_url is not None:
        checks["redis"] = lambda: check_redis(redis_url)
    vault = settings.vault
    if vault is not None:
        checks["vault"] = lambda: check_vault(vault)
    return await _answer(checks)


async def _answer(checks: dict[str, Check]) -> JSONResponse:
    results = await asyncio.gather(*(_timed(name, check) for name, check in checks.items()))
    statuses = dict(zip(checks, results, strict=True))
    ok = all(v == "ok" for v in statuses.values())
    body = Health(status="ok" if ok else "unavailable", checks=statuses)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _timed(name: str, check: Check) -> str:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        log.warning("health_check_timeout", check=name)
        return "timeout"
    except Exception as exc:  # a probe reports; whatever broke is the dependency's problem
        log.warning("health_check_failed", check=name, error=type(exc).__name__)
        return f"error: {type(exc).__name__}"


# --- the checks --------------------------------------------------------------------------


async def check_store(core: StoreBase) -> str:
    try:
        await core.ping()
    except StoreError as exc:
        return f"error: {type(exc).__name__}"
    return "ok"


async def check_redis(url: str) -> str:
    """PING over a fresh connection (redis-py), so a stale pool cannot answer for a dead server."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.from_url(
        url,
        socket_connect_timeout=CHECK_TIMEOUT_SECONDS,
        socket_timeout=CHECK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),  # a probe answers now; the next probe is the retry
    )
    try:
        await client.ping()
    finally:
        await client.aclose()
    return "ok"


async def check_vault(vault: VaultSettings) -> str:
    """Unauthenticated `GET /v1/sys/health`: initialised, unsealed, and answering."""
    verify: Any = ssl.create_default_context(cafile=str(vault.ca_cert)) if vault.ca_cert else True
    headers = {"X-Vault-Namespace": vault.namespace} if vault.namespace else {}
    timeout = min(vault.timeout_seconds, CHECK_TIMEOUT_SECONDS)
    async with httpx.AsyncClient(verify=verify, timeout=timeout, headers=headers) as client:
        resp = await client.get(f"{vault.address.rstrip('/')}/v1/sys/health")
    return _VAULT_STATES.get(resp.status_code, f"status {resp.status_code}")


def find_broker_url(settings: Settings) -> str | None:
    """`broker_url` when it names Redis (redis:// or rediss://). Empty means "Redis on
    localhost if it answers, else a SQLite transport": nothing a probe should wait for."""
    value = getattr(settings, "broker_url", None)
    url = value.get_secret_value() if isinstance(value, SecretStr) else value
    if isinstance(url, str) and url.split("://", 1)[0].lower() in ("redis", "rediss"):
        return url
    return None
