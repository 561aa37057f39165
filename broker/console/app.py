"""Mounting the console on the API app, and what every console page depends on.

`mount_console(app, settings)` adds the routes under /console, the static files and the
exception handlers; `app.state.console` holds the cookie signer, the OIDC client and the
templates. Pages depend on `UserDep` (a logged-in person, else a redirect to the login page,
or 401 for the polled fragments), `AdminDep` (also in an admin group, see `admin_groups`) and
`csrf_form` (a POST form whose `csrf` field matches the session's token, else 403).
"""

from __future__ import annotations

import hmac
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.api.deps import ApprovalsRepoDep, AuditDep
from broker.audit import events
from broker.config import Settings
from broker.console.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    ConsoleUser,
    LoginFailed,
    OidcClient,
    Signer,
    load_key,
    session_cookie,
    user_from_cookie,
)

PREFIX = "/console"
_HERE = Path(__file__).parent


class NotLoggedIn(Exception):
    pass


class Console:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._signer: Signer | None = None
        self.oidc = OidcClient(settings)
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.filters["iso"] = _iso
        self.templates.env.filters["ts"] = _ts
        self.admin_groups = frozenset(admin_groups(settings))

    @property
    def signer(self) -> Signer:
        # Loaded (or made) on first use: an API that nobody opens the console of writes no key.
        if self._signer is None:
            self._signer = Signer(load_key(self.settings))
        return self._signer

    def render(self, request: Request, name: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
        user: ConsoleUser | None = getattr(request.state, "console_user", None)
        context.setdefault("user", user)
        context.setdefault("is_admin", user is not None and bool(self.admin_groups & set(user.groups)))
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str:
    return _utc(value).isoformat() if value else ""


def _ts(value: datetime | None) -> str:
    return _utc(value).strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def admin_groups(settings: Settings) -> set[str]:
    """Who may see sessions, audit and health: `console.admin_groups`, or else every group
    that approves anything (approval rules, default approvers, access rules' approvers)."""
    if settings.console.admin_groups is not None:
        return set(settings.console.admin_groups)
    groups = set(settings.approvals.default_approvers)
    for rule in settings.approvals.rules:
        groups.update(rule.approvers)
    for access_rule in settings.access.rules:
        groups.update(access_rule.approvers)
    return groups


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def current_user(request: Request) -> ConsoleUser:
    console = console_of(request)
    user = user_from_cookie(console.signer, request.cookies.get(SESSION_COOKIE))
    if user is None:
        raise NotLoggedIn()
    request.state.console_user = user
    return user


def require_admin(request: Request, user: Annotated[ConsoleUser, Depends(current_user)]) -> ConsoleUser:
    if not console_of(request).admin_groups & set(user.groups):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "sessions, audit and health are for approvers and admins")
    return user


async def csrf_form(request: Request, user: Annotated[ConsoleUser, Depends(current_user)]) -> dict[str, str]:
    """The POSTed form, once its CSRF token matched the session's (parsed here, so the
    console needs no multipart library)."""
    if "application/x-www-form-urlencoded" not in request.headers.get("content-type", ""):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF check failed")
    body = (await request.body()).decode("utf-8", "replace")
    form = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
    if not hmac.compare_digest(form.get("csrf", "").encode(), user.csrf.encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "CSRF check failed")
    return form


ConsoleDep = Annotated[Console, Depends(console_of)]
UserDep = Annotated[ConsoleUser, Depends(current_user)]
AdminDep = Annotated[ConsoleUser, Depends(require_admin)]
FormDep = Annotated[dict[str, str], Depends(csrf_form)]

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _secure(request: Request) -> bool:
    # Behind a TLS-terminating proxy the request looks like http; the configured callback does not.
    redirect_url = console_of(request).oidc.redirect_url or ""
    return request.url.scheme == "https" or redirect_url.startswith("https://")


def _safe_next(value: str | None) -> str:
    # Only paths inside the console: never an open redirect.
    if value and value.startswith(f"{PREFIX}/") and not value.startswith("//") and "\\" not in value:
        return value
    return f"{PREFIX}/"


@router.get("/login")
async def login(request: Request, console: ConsoleDep, next: str | None = None) -> Response:
    redirect_url = console.oidc.redirect_url or str(request.url_for("console_callback"))
    try:
        target, cookie = await console.oidc.start(console.signer, redirect_url)
    except LoginFailed as exc:
        return console.render(request, "error.html", status_code=503, message=str(exc))
    response = RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(LOGIN_COOKIE, cookie, max_age=600, httponly=True, samesite="lax", secure=_secure(request),
                        path=PREFIX)
    response.set_cookie("jitgate_console_next", _safe_next(next), max_age=600, httponly=True, samesite="lax",
                        secure=_secure(request), path=PREFIX)
    return response


@router.get("/callback", name="console_callback")
async def callback(
    request: Request, console: ConsoleDep, audit: AuditDep, directory: ApprovalsRepoDep,
    code: str = "", state: str = "", error: str | None = None,
) -> Response:
    if error or not code:
        return console.render(request, "error.html", status_code=400, message=f"login failed: {error or 'no code'}")
    client_addr = request.client.host if request.client else None
    try:
        principal, token_exp = await console.oidc.finish(
            console.signer, getattr(request.app.state, "oidc", None), request.cookies.get(LOGIN_COOKIE),
            code=code, state=state,
        )
    except LoginFailed as exc:
        await audit.append_audit(events.login(principal="unknown", method="console", ok=False, reason=str(exc),
                                        client_addr=client_addr))
        return console.render(request, "error.html", status_code=403, message=str(exc))
    # The directory: Slack approvers are matched to the groups of their last OIDC login.
    await directory.remember_principal(principal)
    await audit.append_audit(events.login(principal=principal.id, method="console", groups=principal.groups,
                                    client_addr=client_addr))
    expires_at = min(token_exp, time.time() + console.settings.console.session_ttl_delta.total_seconds())
    response = RedirectResponse(
        _safe_next(request.cookies.get("jitgate_console_next")), status_code=status.HTTP_303_SEE_OTHER
    )
    response.set_cookie(
        SESSION_COOKIE, session_cookie(console.signer, principal, expires_at),
        max_age=max(0, int(expires_at - time.time())), httponly=True, samesite="lax", secure=_secure(request),
        path=PREFIX,
    )
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    response.delete_cookie("jitgate_console_next", path=PREFIX)
    return response


@router.post("/logout")
async def logout(_form: FormDep) -> Response:
    response = RedirectResponse(f"{PREFIX}/logged-out", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/logged-out")
async def logged_out(request: Request, console: ConsoleDep) -> Response:
    return console.render(request, "error.html", status_code=200, message="You are logged out.", title="Logged out")


def mount_console(app: FastAPI, settings: Settings) -> Console:
    from broker.console import approvals, operations  # noqa: PLC0415 - they import this module

    console = Console(settings)
    app.state.console = console

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, _exc: NotLoggedIn) -> Response:
        if request.headers.get("x-console-fragment") or request.method != "GET":
            return Response("login required", status_code=status.HTTP_401_UNAUTHORIZED)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Console pages answer errors as pages; everything else keeps the API's JSON.
        if not request.url.path.startswith(f"{PREFIX}/") or request.headers.get("x-console-fragment"):
            return await http_exception_handler(request, exc)
        return console.render(request, "error.html", status_code=exc.status_code, message=str(exc.detail))

    app.include_router(router)
    app.include_router(approvals.router)
    app.include_router(operations.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(_HERE / "static")), name="console_static")
    return console
