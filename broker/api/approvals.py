"""Approvals over HTTP: the same rules as Slack and the console.

    GET  /v1/approvals?status=pending     requests the caller may see
    GET  /v1/approvals/{id}
    POST /v1/approvals/{id}/approve       {"reason"?, "scope"?: once|session|fingerprint}
    POST /v1/approvals/{id}/deny          {"reason"}  (mandatory)
    POST /v1/approvals/{id}/cancel        the requester withdraws a pending request

Who sees what: an OIDC caller sees the requests they made and those their groups may
approve; an API-token caller (operators, automation) sees all but cannot vote, because a
vote needs a person with groups. Refusals answer with a stable `code`: 403 self_approval /
not_approver, 409 not_pending (the message says who decided it and when, also to the person
whose own earlier vote decided it) / already_voted (the caller's vote is already counted and
the request waits for another approver), 422 reason_required / scope_not_allowed.

Path ids are exact; `GET /v1/approvals?id_prefix=` finds requests by a prefix of their id
(at least 8 characters), which is how the CLI accepts short ids.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from broker.api.auth import Caller, CallerDep
from broker.approvals.model import Approval, ApprovalRefused, Scope, Status, Voter
from broker.approvals.service import ApprovalService, repeated_vote
from broker.store.approvals import ApprovalNotFound

router = APIRouter(tags=["approvals"])

#: The shortest id prefix `?id_prefix=` (and so the CLI) accepts: 8 hex digits of a uuid4 are
#: 32 random bits, unique among any realistic number of requests.
MIN_PREFIX = 8

_REFUSAL_STATUS = {
    "not_pending": status.HTTP_409_CONFLICT,
    "already_voted": status.HTTP_409_CONFLICT,
    "self_approval": status.HTTP_403_FORBIDDEN,
    "not_approver": status.HTTP_403_FORBIDDEN,
    "reason_required": 422,
    "scope_not_allowed": 422,
}


def _service(request: Request) -> ApprovalService:
    service: ApprovalService = request.app.state.approvals
    return service


ServiceDep = Annotated[ApprovalService, Depends(_service)]

_CONFLICT = (
    "Nothing changed: `not_pending`, the request was already decided (the message says by whom and "
    "when, also when the caller's own earlier vote decided it), or `already_voted`, the caller's vote "
    "is already counted and the request waits for another approver"
)


class VoteOut(BaseModel):
    voter: str
    choice: Literal["approve", "deny"]
    at: datetime
    reason: str | None
    scope: Scope
    break_glass: bool
    via: str


class ApprovalOut(BaseModel):
    id: str
    kind: Literal["access", "statement"]
    status: Status
    requester: str
    owner: str | None = Field(description="For an agent: the person it acts for")
    resource: str
    role: str | None = Field(description="Access requests: the role asked for")
    sql: str | None = Field(description="Parked statements: the statement, as sent")
    rule: str | None = Field(description="The policy rule that asked for review")
    risk: str | None
    reason: str | None = Field(description="The requester's reason (access) or intent (statement)")
    session_id: str | None
    approver_groups: list[str]
    quorum: int
    approvals: int = Field(description="Approvals so far")
    scopes: list[Scope] = Field(description="Scopes an approver may choose")
    break_glass: bool
    details: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: list[str]
    decision_reason: str | None
    scope: Scope | None
    votes: list[VoteOut]

    @classmethod
    def of(cls, a: Approval) -> ApprovalOut:
        return cls(
            id=a.id, kind=a.kind, status=a.status, requester=a.requester, owner=a.owner, resource=a.resource,
            role=a.role, sql=a.sql, rule=a.rule, risk=a.risk, reason=a.reason, session_id=a.session_id,
            approver_groups=list(a.approver_groups), quorum=a.quorum, approvals=len(a.approvals),
            scopes=list(a.scopes), break_glass=a.break_glass, details=a.details, created_at=a.created_at,
            expires_at=a.expires_at, decided_at=a.decided_at, decided_by=list(a.decided_by),
            decision_reason=a.decision_reason, scope=a.scope,
            votes=[
                VoteOut(voter=v.voter, choice=v.choice, at=v.at, reason=v.reason, scope=v.scope,
                        break_glass=v.break_glass, via=v.via)
                for v in a.votes
            ],
        )


class ApproveIn(BaseModel):
    reason: str | None = Field(default=None, max_length=2000, description="Optional; required for break-glass")
    scope: Scope = Field(default=Scope.ONCE, description="once, session or fingerprint (if the policy allows)")


class DenyIn(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Shown to the requester")


class CancelIn(BaseModel):
    reason: str = Field(default="withdrawn by the requester", max_length=2000)


def _visible(caller: Caller, approval: Approval) -> bool:
    if caller.identity is None:
        return True  # API token
    return approval.is_requester(caller.principal) or bool(set(caller.groups) & set(approval.approver_groups))


def _voter(caller: Caller, via: str) -> Voter:
    return Voter(caller.principal, tuple(caller.groups), via)


async def _get_visible(service: ApprovalService, caller: Caller, approval_id: str) -> Approval:
    approval = await service.get(approval_id)
    # Someone else's request answers like a missing one: ids are not for enumerating.
    if approval is None or not _visible(caller, approval):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="approval not found")
    return approval


def refusal(exc: ApprovalRefused) -> HTTPException:
    return HTTPException(
        _REFUSAL_STATUS.get(exc.code, status.HTTP_403_FORBIDDEN), detail={"code": exc.code, "message": exc.message}
    )


@router.get("/v1/approvals", response_model=list[ApprovalOut], summary="Approval requests the caller may see")
async def list_approvals(
    caller: CallerDep,
    service: ServiceDep,
    status_: Annotated[Status | None, Query(alias="status", description="e.g. pending")] = None,
    id_prefix: Annotated[
        str | None,
        Query(
            min_length=MIN_PREFIX, max_length=64, pattern=r"^[0-9A-Za-z-]+$",
            description=f"Only requests whose id starts with this (at least {MIN_PREFIX} characters)",
        ),
    ] = None,
) -> list[ApprovalOut]:
    found = await service.find(status=status_, id_prefix=id_prefix)
    return [ApprovalOut.of(a) for a in found if _visible(caller, a)]


@router.get("/v1/approvals/{approval_id}", response_model=ApprovalOut, summary="One approval request")
async def get_approval(approval_id: str, caller: CallerDep, service: ServiceDep) -> ApprovalOut:
    return ApprovalOut.of(await _get_visible(service, caller, approval_id))


async def _vote(
    service: ServiceDep, caller: Caller, approval_id: str, choice: Literal["approve", "deny"],
    reason: str | None, scope: Scope | None, via: str,
) -> ApprovalOut:
    await _get_visible(service, caller, approval_id)
    voter = _voter(caller, via)
    try:
        result = await service.vote(approval_id, voter, choice, reason=reason, scope=scope)
    except ApprovalRefused as exc:
        raise refusal(exc) from None
    except ApprovalNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="approval not found") from None
    repeated = repeated_vote(result, voter)
    if repeated is not None:  # nothing changed: say so rather than answer like a fresh vote
        raise refusal(repeated)
    return ApprovalOut.of(result.approval)


@router.post(
    "/v1/approvals/{approval_id}/approve",
    response_model=ApprovalOut,
    summary="Approve (counts towards the quorum)",
    responses={
        403: {"description": "Not an approver, or own request"},
        409: {"description": _CONFLICT},
    },
)
async def approve(
    approval_id: str, caller: CallerDep, service: ServiceDep, body: ApproveIn | None = None
) -> ApprovalOut:
    body = body or ApproveIn()
    return await _vote(service, caller, approval_id, "approve", body.reason, body.scope, "api")


@router.post(
    "/v1/approvals/{approval_id}/deny",
    response_model=ApprovalOut,
    summary="Deny with a reason (one denial decides)",
    responses={
        403: {"description": "Not an approver, or own request"},
        409: {"description": _CONFLICT},
    },
)
async def deny(approval_id: str, body: DenyIn, caller: CallerDep, service: ServiceDep) -> ApprovalOut:
    return await _vote(service, caller, approval_id, "deny", body.reason, None, "api")


@router.post(
    "/v1/approvals/{approval_id}/cancel",
    response_model=ApprovalOut,
    summary="Withdraw one's own pending request",
    responses={409: {"description": "Not pending"}},
)
async def cancel(
    approval_id: str, caller: CallerDep, service: ServiceDep, body: CancelIn | None = None
) -> ApprovalOut:
    approval = await _get_visible(service, caller, approval_id)
    if caller.identity is not None and not approval.is_requester(caller.principal):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only the requester cancels a request")
    cancelled = await service.cancel(approval_id, reason=(body or CancelIn()).reason, actor=caller.principal)
    if cancelled is None:
        current = await service.get(approval_id)
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail={"code": "not_pending", "message": f"request is {current.status.value if current else 'gone'}"},
        )
    return ApprovalOut.of(cancelled)
