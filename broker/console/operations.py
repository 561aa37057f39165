"""Console pages for operators: live sessions, session replay, the audit log, health.

    GET /console/sessions                 live sessions, their latest statements (polled)
    GET /console/sessions/{id}            replay: statements, decisions, masking, recorded results
    GET /console/audit                    records filtered by type, actor and time range
    GET /console/audit/export?format=     the filtered records as jsonl, csv or ocsf (download)
    GET /console/health                   store, Redis, Vault and Slack, as /readyz checks them

All need a person in an admin group (`console.admin_groups`, by default every approver group):
the API lets any authenticated caller read these, but a console login is any person of the
issuer, so the console asks for more.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from broker.api.deps import AuditDep, SessionsDep
from broker.api.health import CHECK_TIMEOUT_SECONDS, _timed, check_redis, check_store, check_vault, find_broker_url
from broker.approvals.service import ApprovalService
from broker.approvals.settings import SlackSettings
from broker.audit.chain import AuditRecord
from broker.audit.export import MEDIA_TYPES, render
from broker.config import Settings
from broker.console.app import PREFIX, AdminDep, ConsoleDep
from broker.store.audit import AuditRepository
from broker.store.base import StoreBase
from broker.store.sessions import SessionRepository

router = APIRouter(prefix=PREFIX, include_in_schema=False)

LIVE_SESSIONS = 50
LIVE_STATEMENTS = 8
AUDIT_PAGE = 200


async def _live(repo: SessionRepository) -> list[tuple[object, list[object]]]:
    sessions = await repo.list_sessions(active_only=True, limit=LIVE_SESSIONS)
    details = await asyncio.gather(*(repo.get_session(s.id) for s in sessions))
    return [(d.session, list(d.statements[-LIVE_STATEMENTS:])) for d in details if d is not None]


@router.get("/sessions", response_class=HTMLResponse)
async def sessions(request: Request, console: ConsoleDep, _user: AdminDep, repo: SessionsDep) -> Response:
    recent = await repo.list_sessions(limit=20)
    return console.render(request, "sessions.html", live=await _live(repo), recent=recent)


@router.get("/fragments/sessions", response_class=HTMLResponse)
async def sessions_fragment(request: Request, console: ConsoleDep, _user: AdminDep, repo: SessionsDep) -> Response:
    return console.render(request, "_live.html", live=await _live(repo))


async def _replay_context(request: Request, repo: SessionRepository, session_id: str) -> dict[str, Any]:
    detail = await repo.get_session(session_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "session not found")
    service: ApprovalService = request.app.state.approvals
    approvals = [a for a in await service.find() if a.session_id == session_id]
    return {"session": detail.session, "statements": detail.statements, "approvals": approvals}


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
async def replay(
    session_id: str, request: Request, console: ConsoleDep, _user: AdminDep, repo: SessionsDep
) -> Response:
    return console.render(request, "session.html", **await _replay_context(request, repo, session_id))


@router.get("/fragments/sessions/{session_id}", response_class=HTMLResponse)
async def replay_fragment(
    session_id: str, request: Request, console: ConsoleDep, _user: AdminDep, repo: SessionsDep
) -> Response:
    return console.render(request, "_statements.html", **await _replay_context(request, repo, session_id))


def _time(value: str | None) -> datetime | None:
    """A `datetime-local` value (or ISO 8601); without a zone it is UTC, the audit log's zone."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"not a time: {value[:40]!r} (use YYYY-MM-DDTHH:MM)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


async def _filtered(
    audit: AuditRepository, *, type_: str | None, actor: str | None, since: datetime | None, until: datetime | None
) -> AsyncIterator[AuditRecord]:
    async for record in audit.iter_audit(since=since, until=until):
        if type_ and not record.type.startswith(type_):
            continue
        if actor and actor.lower() not in (record.actor or "").lower():
            continue
        yield record


@router.get("/audit", response_class=HTMLResponse)
async def audit(
    request: Request, console: ConsoleDep, _user: AdminDep, repo: AuditDep,
    type: str | None = None, actor: str | None = None, since: str | None = None, until: str | None = None,
) -> Response:
    # The newest matches, read in one pass in constant memory (the chain is read in chunks).
    newest: deque[AuditRecord] = deque(maxlen=AUDIT_PAGE)
    async for record in _filtered(repo, type_=type, actor=actor, since=_time(since), until=_time(until)):
        newest.append(record)
    filters = {"type": type or "", "actor": actor or "", "since": since or "", "until": until or ""}
    return console.render(request, "audit.html", records=list(reversed(newest)), filters=filters,
                          formats=["jsonl", "csv", "ocsf"], page_size=AUDIT_PAGE)


@router.get("/audit/export")
async def export(
    _user: AdminDep, repo: AuditDep, format: Literal["jsonl", "csv", "ocsf"] = "jsonl",
    type: str | None = None, actor: str | None = None, since: str | None = None, until: str | None = None,
) -> StreamingResponse:
    records = _filtered(repo, type_=type, actor=actor, since=_time(since), until=_time(until))
    ext = "csv" if format == "csv" else "jsonl"
    return StreamingResponse(
        render(records, format), media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="jitgate-audit.{format}.{ext}"'},
    )


async def check_slack(slack: SlackSettings) -> str:
    """`auth.test` with the bot token: the token is valid and Slack answers."""
    async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_SECONDS) as client:
        resp = await client.post(
            f"{slack.api_url.rstrip('/')}/auth.test",
            headers={"Authorization": f"Bearer {slack.bot_token.get_secret_value()}"},
        )
    body = resp.json() if resp.status_code == 200 else {}
    if body.get("ok") is True:
        return "ok"
    return f"error: {str(body.get('error') or f'status {resp.status_code}')[:60]}"


async def health_checks(request: Request) -> dict[str, str]:
    settings: Settings = request.app.state.settings
    core: StoreBase = request.app.state.store
    checks = {"store": lambda: check_store(core)}
    statuses: dict[str, str] = {}
    redis_url = find_broker_url(settings)
    if redis_url is not None:
        checks["redis"] = lambda: check_redis(redis_url)
    else:
        statuses["redis"] = "not configured"
    vault = settings.vault
    if vault is not None:
        checks["vault"] = lambda: check_vault(vault)
    else:
        statuses["vault"] = "not configured"
    slack = settings.slack
    if slack is not None:
        checks["slack"] = lambda: check_slack(slack)
    else:
        statuses["slack"] = "not configured"
    results = await asyncio.gather(*(_timed(name, check) for name, check in checks.items()))
    return {**dict(zip(checks, results, strict=True)), **statuses}


@router.get("/health", response_class=HTMLResponse)
async def health(request: Request, console: ConsoleDep, _user: AdminDep) -> Response:
    return console.render(request, "health.html", checks=await health_checks(request))
