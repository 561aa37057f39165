"""The broker's HTTP API (FastAPI). OpenAPI at /openapi.json, docs at /docs.

`create_app(settings, store)` builds the app around an already open store; whoever created
the store closes it. Routers per area live beside this module (`sessions.py`, ...); `/v1/*`
requires a bearer token (`auth.py`), `/healthz` and `/metrics` do not.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import PackageNotFoundError, version
from typing import Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from broker import metrics
from broker.api import audit, identity, sessions
from broker.config import Settings
from broker.exceptions import StoreError
from broker.identity.devissuer import DevIssuer
from broker.identity.oidc import OIDCVerifier
from broker.store import Store

HEALTH_TIMEOUT_SECONDS = 2.0


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]


def _version() -> str:
    try:
        return version("jitgate")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(
    settings: Settings,
    store: Store,
    *,
    oidc: OIDCVerifier | None = None,
    dev_issuer: DevIssuer | None = None,
) -> FastAPI:
    """`oidc` defaults to a verifier for `settings.oidc.issuers` (none: OIDC bearers refused);
    `dev_issuer`, for the demo, is served at its issuer URL's path."""
    app = FastAPI(
        title="jitgate broker API",
        version=_version(),
        description=(
            "Just-in-time access gateway for AI agents: recorded sessions, approvals, audit. "
            "Endpoints under /v1 require `Authorization: Bearer <token>`."
        ),
        openapi_tags=[
            {"name": "sessions", "description": "Proxy sessions and their statements"},
            {"name": "operations", "description": "Health and metrics"},
        ],
    )
    app.state.settings = settings
    app.state.store = store
    app.state.oidc = oidc or (OIDCVerifier(settings.oidc.issuers) if settings.oidc.issuers else None)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, _exc: StoreError) -> JSONResponse:
        # The cause is logged by whoever watches the store; clients learn only this.
        return JSONResponse({"detail": "store unavailable"}, status_code=503)

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["operations"],
        summary="Readiness: 200 when the store answers, 503 otherwise",
        responses={503: {"model": Health, "description": "A dependency is unavailable"}},
    )
    async def healthz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            await asyncio.wait_for(store.ping(), HEALTH_TIMEOUT_SECONDS)
            checks["store"] = "ok"
        except TimeoutError:
            checks["store"] = "timeout"
        except StoreError as exc:
            checks["store"] = f"error: {type(exc).__name__}"
        ok = all(v == "ok" for v in checks.values())
        body = Health(status="ok" if ok else "unavailable", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render_latest()
        return Response(content=body, media_type=content_type)

    app.include_router(sessions.router)
    app.include_router(identity.router)
    app.include_router(audit.router)
    if dev_issuer is not None:
        app.mount(urlsplit(dev_issuer.issuer).path or "/dev-issuer", dev_issuer.app())
    return app
