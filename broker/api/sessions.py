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

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field

from broker.api.auth import require_caller
from broker.api.deps import SessionsDep

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], dependencies=[Depends(require_caller)])


class SessionOut(BaseModel):
    """A proxy session. Credentials (gateway token, upstream login) are never included."""

    # Built from the store's SessionInfo by attribute (`model_validate(info)`); the two fields
    # named otherwise here say which attribute they read (`validation_alias`).
    model_config = ConfigDict(from_attributes=True)

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
        validation_alias="statements",
        description="Statements recorded so far; once ended, the count the proxy reported",
    )
    bytes_in: int = Field(description="Bytes from client to server, reported at session end")
    bytes_out: int = Field(description="Bytes from server to client, reported at session end")
    session_tampered: list[str] = Field(
        validation_alias="tampered",
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


class StatementOut(BaseModel):
    """A statement the proxy saw, with the policy decision taken on it, checked against its
    record in the audit chain."""

    # Built from the store's StatementInfo by attribute (its `results` are not part of this view).
    model_config = ConfigDict(from_attributes=True)

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


class SessionDetailOut(SessionOut):
    # A SessionOut's fields plus these, given by name: here `statements` and `tampered` are
    # the statements, not the session's count and findings they alias in SessionOut.
    model_config = ConfigDict(validate_by_alias=False, validate_by_name=True)

    statements: list[StatementOut] = Field(description="The session's statements, in order")
    verified: bool = Field(
        description="False when the session (session_tampered) or any statement shown does not match the audit chain"
    )
    tampered: list[int] = Field(description="Seq of every statement whose shown content does not match the chain")


@router.get(
    "",
    response_model=list[SessionOut],
    summary="List sessions, newest first, each checked against the audit chain (deleted rows included)",
)
async def list_sessions(
    repo: SessionsDep,
    active: Annotated[bool, Query(description="Only sessions still open")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        datetime | None, Query(description="Only sessions started before this time (paging)")
    ] = None,
) -> list[SessionOut]:
    sessions = await repo.list_sessions(active_only=active, limit=limit, started_before=before)
    return [SessionOut.model_validate(s) for s in sessions]


@router.get(
    "/{session_id}",
    response_model=SessionDetailOut,
    summary="One session with its statements",
    responses={404: {"description": "No such session (no row, and no session.start in the live chain)"}},
)
async def get_session(session_id: str, repo: SessionsDep) -> SessionDetailOut:
    detail = await repo.get_session(session_id)
    if detail is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="session not found")
    return SessionDetailOut.model_validate({
        **dict(SessionOut.model_validate(detail.session)),
        "statements": detail.statements,
        "verified": detail.verified,
        "tampered": [s.seq for s in detail.tampered],
    })
