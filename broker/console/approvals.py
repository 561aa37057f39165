"""Console pages for approval requests, with the API's rules (`broker.api.approvals`).

    GET  /console/                              pending requests the person may see
    GET  /console/fragments/pending             the same list, polled by the page
    GET  /console/approvals/{id}                one request with its votes
    POST /console/approvals/{id}/approve        form: csrf, scope, reason (optional)
    POST /console/approvals/{id}/deny           form: csrf, reason (mandatory)

Visibility and voting are the API's: a person sees the requests they made (or their agents
made) and those their groups approve; the vote goes through `ApprovalService.vote`, which
refuses self-approval, non-approvers and a denial without a reason. Votes are recorded `via`
"console". A vote that changes nothing is not shown as a success: the page answers 409 with
"already approved by X at T" (or "you already voted ..." while a quorum waits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.api.approvals import _get_visible, _visible, _voter
from broker.api.auth import Caller
from broker.approvals.model import Approval, ApprovalRefused, Status
from broker.approvals.service import ApprovalService, repeated_vote
from broker.console.app import PREFIX, ConsoleDep, ConsoleUser, FormDep, UserDep
from broker.store.approvals import ApprovalNotFound

router = APIRouter(prefix=PREFIX, include_in_schema=False)

_DONE = {"approved": "Your approval was recorded.", "denied": "The request was denied."}


@dataclass(frozen=True, slots=True)
class Row:
    """An approval as a page shows it, with what this person may do about it."""

    approval: Approval
    mine: bool
    can_decide: bool
    already_voted: bool

    @property
    def requester_label(self) -> str:
        a = self.approval
        return f"{a.requester} for {a.owner}" if a.owner else a.requester


def caller_of(user: ConsoleUser) -> Caller:
    # `identity` is always set: the API's "API token sees everything" branch never applies here.
    return Caller(principal=user.id, groups=user.groups, identity=user.principal)


def row_of(user: ConsoleUser, approval: Approval) -> Row:
    mine = approval.is_requester(user.id)
    approver = bool(set(user.groups) & set(approval.approver_groups))
    can_decide = approval.status is Status.PENDING and ((approver and not mine) or (mine and approval.break_glass))
    voted = any(v.voter == user.id for v in approval.votes)
    return Row(approval, mine, can_decide and not voted, voted)


def _service(request: Request) -> ApprovalService:
    service: ApprovalService = request.app.state.approvals
    return service


async def _pending_rows(request: Request, user: ConsoleUser) -> list[Row]:
    found = await _service(request).find(status=Status.PENDING)
    caller = caller_of(user)
    rows = [row_of(user, a) for a in found if _visible(caller, a)]
    return sorted(rows, key=lambda r: r.approval.expires_at)


@router.get("/", response_class=HTMLResponse)
async def pending(request: Request, console: ConsoleDep, user: UserDep, done: str | None = None) -> Response:
    rows = await _pending_rows(request, user)
    return console.render(request, "pending.html", rows=rows, notice=_DONE.get(done or ""))


@router.get("/fragments/pending", response_class=HTMLResponse)
async def pending_fragment(request: Request, console: ConsoleDep, user: UserDep) -> Response:
    return console.render(request, "_pending.html", rows=await _pending_rows(request, user))


@router.get("/approvals/{approval_id}", response_class=HTMLResponse)
async def detail(approval_id: str, request: Request, console: ConsoleDep, user: UserDep) -> Response:
    approval = await _get_visible(_service(request), caller_of(user), approval_id)
    return console.render(request, "approval.html", row=row_of(user, approval))


async def _decide(
    request: Request, console: ConsoleDep, user: ConsoleUser, approval_id: str,
    choice: Literal["approve", "deny"], form: dict[str, str],
) -> Response:
    service = _service(request)
    approval = await _get_visible(service, caller_of(user), approval_id)
    reason = form.get("reason", "").strip() or None
    scope = form.get("scope") or None
    voter = _voter(caller_of(user), "console")
    try:
        result = await service.vote(approval_id, voter, choice, reason=reason, scope=scope)
        repeated = repeated_vote(result, voter)
        if repeated is not None:
            raise repeated
    except ApprovalRefused as exc:
        code = status.HTTP_409_CONFLICT if exc.code in ("not_pending", "already_voted") else (
            422 if exc.code in ("reason_required", "scope_not_allowed") else status.HTTP_403_FORBIDDEN
        )
        current = await service.get(approval_id) or approval
        return console.render(request, "approval.html", status_code=code, row=row_of(user, current), error=exc.message)
    except ApprovalNotFound:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "approval not found") from None
    done = "approved" if choice == "approve" else "denied"
    return RedirectResponse(f"{PREFIX}/?done={done}", status_code=status.HTTP_303_SEE_OTHER)


@router.post("/approvals/{approval_id}/approve")
async def approve(approval_id: str, request: Request, console: ConsoleDep, user: UserDep, form: FormDep) -> Response:
    return await _decide(request, console, user, approval_id, "approve", form)


@router.post("/approvals/{approval_id}/deny")
async def deny(approval_id: str, request: Request, console: ConsoleDep, user: UserDep, form: FormDep) -> Response:
    return await _decide(request, console, user, approval_id, "deny", form)
