"""The broker's HTTP API (FastAPI). OpenAPI at /openapi.json, docs at /docs.

`create_app(settings, store)` builds the app around an already open store; whoever created
the store closes it. Routers per area live beside this module (`sessions.py`, ...); `/v1/*`
requires a bearer token (`auth.py`); `/healthz`, `/readyz` (`health.py`) and `/metrics` do not.
"""

from __future__ import annotations

import re
import uuid
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlsplit

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from broker import metrics
from broker.api import approvals, audit, health, identity, sessions
from broker.approvals.service import ApprovalService
from broker.config import Settings
from broker.console.app import mount_console
from broker.exceptions import StoreError
from broker.identity.devissuer import DevIssuer
from broker.identity.oidc import OIDCVerifier
from broker.store import Store

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


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
    approvals_service: ApprovalService | None = None,
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
            {"name": "approvals", "description": "Parked statements and access requests awaiting a decision"},
            {"name": "operations", "description": "Health and metrics"},
        ],
    )
    app.state.settings = settings
    app.state.store = store
    # Without a service from the composition root (bus + Slack dispatch), decisions made
    # through this app reach waiters in this process only.
    if approvals_service is None and store is not None:  # None: an app built for its routes only
        approvals_service = ApprovalService(store.approvals, settings.approvals)
    app.state.approvals = approvals_service
    app.state.oidc = oidc or (OIDCVerifier(settings.oidc.issuers) if settings.oidc.issuers else None)

    @app.middleware("http")
    async def _request_id(request: Request, call_next: Any) -> Response:
        # A caller's own id is kept when it is a plain token, so logs join across services.
        given = request.headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            response: Response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, _exc: StoreError) -> JSONResponse:
        # The cause is logged by whoever watches the store; clients learn only this.
        return JSONResponse({"detail": "store unavailable"}, status_code=503)

    app.include_router(health.router)

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
    app.include_router(approvals.router)
    app.include_router(identity.router)
    app.include_router(audit.router)
    if settings.console.enabled:
        mount_console(app, settings)  # /console: the approvals console (broker/console)
    if dev_issuer is not None:
        app.mount(urlsplit(dev_issuer.issuer).path or "/dev-issuer", dev_issuer.app())
    return app
