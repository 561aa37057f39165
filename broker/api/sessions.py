"""`/v1/sessions`: recorded proxy sessions and their statements (read-only).

Every statement of `/v1/sessions/{id}` is checked against its record in the audit chain
(`broker.audit.coverage`): `verified` true when what is shown matches the chained record,
else `tampered` lists what does not (a field such as `sql` or `results`, `row_deleted`,
`no_audit_record`, `audit_record_altered`). The session itself is checked against its
`session.start` and `session.end` records: `session_tampered` names the fields of the
`sessions` row that do not match (`principal`, `intent`, `started_at`, `ended_at`, ...), or
`row_deleted` (the row is gone: the session is shown from the chain), `no_audit_record` (a
row the chain never had), `audit_record_altered`. The session's own `verified` is false when
the session or any statement is tampered with. The list includes sessions whose row is gone
(`session_tampered: ["row_deleted"]`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from broker.api.auth import require_caller
from broker.store import Store
from broker.store.records import SessionInfo, StatementInfo

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_caller)])


class SessionOut(BaseModel):
    """A proxy session. Credentials (gateway token, upstream login) are never included."""

    id: str
    token_id: str | None = Field(description="Id of the gateway token used (not the token)")
    principal: str
    groups: list[str]
    resource: str
    role: str
    client_addr: str | None
    application_name: str | None
    intent: str | None = Field(description="What the agent said it is doing, if it said")
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    active: bool
    statement_count: int = Field(
        description="Statements recorded so far; once ended, the count the proxy reported"
    )
    bytes_in: int = Field(description="Bytes from client to server, reported at session end")
    bytes_out: int = Field(description="Bytes from server to client, reported at session end")
    session_tampered: list[str] = Field(
        description=(
            "What of the session does not match its session.start/session.end records in the audit chain: "
            "a field name (principal, groups, resource, role, token_id, client_addr, application_name, intent, "
            "started_at, ended_at, end_reason, statements, bytes_in, bytes_out), row_deleted (the row is gone: "
            "shown from the chain), no_audit_record (a row the chain never had, and no prune lists it) or "
            "audit_record_altered. Empty when it matches, and when its records were pruned (not checked)"
        )
    )
    audit_seq: int | None = Field(
        description="Seq of the session.start record it was checked against; null: pruned, not checked"
    )

    @classmethod
    def of(cls, s: SessionInfo) -> SessionOut:
        return cls(
            id=s.id,
            token_id=s.token_id,
            principal=s.principal,
            groups=list(s.groups),
            resource=s.resource,
            role=s.role,
            client_addr=s.client_addr,
            application_name=s.application_name,
            intent=s.intent,
            started_at=s.started_at,
            ended_at=s.ended_at,
            end_reason=s.end_reason,
            active=s.active,
            statement_count=s.statements,
            bytes_in=s.bytes_in,
            bytes_out=s.bytes_out,
            session_tampered=list(s.tampered),
            audit_seq=s.audit_seq,
        )


class StatementOut(BaseModel):
    """A statement the proxy saw, with the policy decision taken on it, checked against its
    record in the audit chain."""

    seq: int
    sql: str
    fingerprint: str | None
    decision: str = Field(description="allow, block or review")
    rule: str | None
    reason: str | None
    shadow_decision: str | None = Field(
        description="In observe mode, what the agent-safe policy would have decided"
    )
    started_at: datetime
    duration_ms: float | None
    rows: int | None
    masked_values: int
    error_sqlstate: str | None
    approval_id: str | None = Field(
        description="The approval it ran under, or was refused by (denied, expired, still pending)"
    )
    verified: bool = Field(
        description="What is shown here matches the statement's record in the audit chain"
    )
    tampered: list[str] = Field(
        description=(
            "What does not match the audit chain: a field name (sql, decision, rule, reason, rows, "
            "masked_values, results, ...), row_deleted (the row is gone: shown from the chained record), "
            "no_audit_record (a row the chain never had) or audit_record_altered. Empty when verified, "
            "and for a statement whose audit record was pruned (verified false: not checked)"
        )
    )
    audit_seq: int | None = Field(description="Seq of the chained record it was checked against")

    @classmethod
    def of(cls, s: StatementInfo) -> StatementOut:
        # The store's record itself, read by attribute name: no field-by-field copy to keep in
        # step (its `results` are not part of this view).
        return cls.model_validate(s, from_attributes=True)


class SessionDetailOut(SessionOut):
    statements: list[StatementOut] = Field(description="The session's statements, in order")
    verified: bool = Field(
        description="False when the session (session_tampered) or any statement shown does not match the audit chain"
    )
    tampered: list[int] = Field(description="Seq of every statement whose shown content does not match the chain")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]


@router.get(
    "",
    response_model=list[SessionOut],
    summary="List sessions, newest first, each checked against the audit chain (deleted rows included)",
)
async def list_sessions(
    store: StoreDep,
    active: Annotated[bool, Query(description="Only sessions still open")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        datetime | None, Query(description="Only sessions started before this time (paging)")
    ] = None,
) -> list[SessionOut]:
    sessions = await store.sessions.list_sessions(active_only=active, limit=limit, started_before=before)
    return [SessionOut.of(s) for s in sessions]


@router.get(
    "/{session_id}",
    response_model=SessionDetailOut,
    summary="One session with its statements",
    responses={404: {"description": "No such session (no row, and no session.start in the live chain)"}},
)
async def get_session(session_id: str, store: StoreDep) -> SessionDetailOut:
    detail = await store.sessions.get_session(session_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="session not found")
    base = SessionOut.of(detail.session).model_dump()
    tampered = [s.seq for s in detail.tampered]
    return SessionDetailOut(
        **base, statements=[StatementOut.of(s) for s in detail.statements], verified=detail.verified,
        tampered=tampered,
    )
