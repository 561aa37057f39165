"""The approvals state machine: pure data and pure transitions, no I/O.

One model serves both kinds of request a human decides on:

- ``access``: a session grant asked for with `jitgate connect` / `POST /v1/access-requests`;
- ``statement``: a statement the policy sent to ``review``, parked in the proxy.

States::

    pending ──approve (quorum reached)──▶ approved
       │  ├──deny (any one approver)────▶ denied
       │  ├──expire (past expires_at)───▶ expired
       │  └──cancel (requester left)────▶ cancelled
       └── approve (quorum not yet reached): stays pending, the vote is counted

Every function takes the current `Approval` and returns a new one (frozen dataclasses), so
the store can apply a transition inside one transaction and a race between two approvers
resolves to whichever transaction commits first: the loser finds the request no longer
pending and gets `NotPending`. A voter's second vote is a no-op (`VoteResult.counted` is
False): a double click counts once.

Rules a vote must pass, in this order (the first failure is the answer):
the request is pending and not past its expiry; the voter is not the requester (nor the
person an agent requester acts for) unless break-glass is allowed and a reason is given; the
voter is in one of the approver groups; a deny carries a reason; the scope asked for is one
the policy allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Scope(StrEnum):
    """What an approval of a statement covers."""

    ONCE = "once"  # this statement, one run: the parked one (or a re-run after a timeout)
    SESSION = "session"  # this exact statement for the rest of this session
    FINGERPRINT = "fingerprint"  # statements of this shape by this requester, for a window


Kind = Literal["access", "statement"]
Choice = Literal["approve", "deny"]

FINAL = frozenset({Status.APPROVED, Status.DENIED, Status.EXPIRED, Status.CANCELLED})


class ApprovalRefused(Exception):
    """A vote or transition that the rules refuse. `code` is stable (API, Slack, CLI)."""

    code = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotPending(ApprovalRefused):
    code = "not_pending"


class SelfApproval(ApprovalRefused):
    code = "self_approval"


class NotAnApprover(ApprovalRefused):
    code = "not_approver"


class ReasonRequired(ApprovalRefused):
    code = "reason_required"


class ScopeNotAllowed(ApprovalRefused):
    code = "scope_not_allowed"


@dataclass(frozen=True, slots=True)
class Voter:
    """Who votes: a principal id (`person:alice@example.com`) and their groups."""

    principal: str
    groups: tuple[str, ...] = ()
    via: str = "api"  # api, cli, slack, console


@dataclass(frozen=True, slots=True)
class Vote:
    voter: str
    choice: Choice
    at: datetime
    reason: str | None = None
    scope: Scope = Scope.ONCE
    break_glass: bool = False
    via: str = "api"


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    kind: Kind
    status: Status
    requester: str  # principal id; for an agent, `agent:...`
    requester_groups: tuple[str, ...]
    resource: str
    created_at: datetime
    expires_at: datetime
    approver_groups: tuple[str, ...]
    quorum: int = 1
    scopes: tuple[Scope, ...] = (Scope.ONCE,)  # what approvers may choose
    fingerprint_window: timedelta = timedelta(minutes=15)
    break_glass: bool = False  # the policy lets the requester approve with a reason
    owner: str | None = None  # for an agent requester: the person responsible
    role: str | None = None  # access: the role asked for
    reason: str | None = None  # access: the requester's reason; statement: the agent's intent
    session_id: str | None = None  # statement: the parked session
    sql: str | None = None
    statement_hash: str | None = None  # sha256 of the exact text
    fingerprint: str | None = None  # sha256 of the literal-free shape
    rule: str | None = None  # the policy rule that asked for review
    risk: str | None = None  # the rule's reason, shown to approvers
    details: dict[str, Any] = field(default_factory=dict)  # tables, row estimate, ttl, ...
    votes: tuple[Vote, ...] = ()
    decided_at: datetime | None = None
    decided_by: tuple[str, ...] = ()
    decision_reason: str | None = None
    scope: Scope | None = None  # of an approved request
    covers_until: datetime | None = None  # FINGERPRINT scope: end of the window
    used: int = 0  # times an approved ONCE request let its statement run

    @property
    def approvals(self) -> tuple[Vote, ...]:
        return tuple(v for v in self.votes if v.choice == "approve")

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def is_requester(self, principal: str) -> bool:
        return principal in (self.requester, self.owner)


@dataclass(frozen=True, slots=True)
class VoteResult:
    approval: Approval
    counted: bool  # False: this voter had already voted (double click)
    decided: bool  # the vote moved the request out of pending
    vote: Vote | None = None
    break_glass: bool = False


def cast_vote(
    approval: Approval,
    voter: Voter,
    choice: Choice,
    *,
    now: datetime,
    reason: str | None = None,
    scope: Scope | str | None = None,
) -> VoteResult:
    """Apply one vote. Raises an `ApprovalRefused` subclass when the rules refuse it."""
    if any(v.voter == voter.principal for v in approval.votes):
        # Idempotent before anything else: a retried click on a request that its first click
        # decided answers with that decision instead of an error.
        return VoteResult(approval, counted=False, decided=False)
    if approval.status is not Status.PENDING:
        raise NotPending(f"request {approval.id} is already {approval.status.value}")
    if now >= approval.expires_at:
        raise NotPending(f"request {approval.id} expired at {approval.expires_at.isoformat()}")
    reason = (reason or "").strip() or None
    break_glass = False
    if approval.is_requester(voter.principal):
        if choice == "deny":
            # Withdrawing one's own request is a cancel, not a decision by an approver.
            raise SelfApproval("requesters cancel their own requests; they cannot deny them")
        if not approval.break_glass:
            raise SelfApproval("nobody approves their own request")
        if reason is None:
            raise ReasonRequired("break-glass self-approval needs a reason")
        break_glass = True
    elif not set(voter.groups).intersection(approval.approver_groups):
        groups = ", ".join(approval.approver_groups) or "(none configured)"
        raise NotAnApprover(f"{voter.principal} is not in an approver group for this request: {groups}")
    if choice == "deny" and reason is None:
        raise ReasonRequired("a denial needs a reason; the requester sees it")
    chosen = _scope(approval, scope) if choice == "approve" else Scope.ONCE
    vote = Vote(voter.principal, choice, now, reason, chosen, break_glass, voter.via)
    votes = (*approval.votes, vote)
    if choice == "deny":
        decided = replace(
            approval, votes=votes, status=Status.DENIED, decided_at=now,
            decided_by=(voter.principal,), decision_reason=reason,
        )
        return VoteResult(decided, counted=True, decided=True, vote=vote)
    approvers = [v for v in votes if v.choice == "approve"]
    if not break_glass and len(approvers) < approval.quorum:
        return VoteResult(replace(approval, votes=votes), counted=True, decided=False, vote=vote)
    # Approved. The scope is the narrowest any approver chose: two approvers agree on the
    # least they both granted.
    final_scope = min((v.scope for v in approvers), key=_SCOPE_ORDER.index)
    covers_until = now + approval.fingerprint_window if final_scope is Scope.FINGERPRINT else None
    decided = replace(
        approval, votes=votes, status=Status.APPROVED, decided_at=now,
        decided_by=tuple(v.voter for v in approvers), decision_reason=reason,
        scope=final_scope, covers_until=covers_until,
    )
    return VoteResult(decided, counted=True, decided=True, vote=vote, break_glass=break_glass)


_SCOPE_ORDER = [Scope.ONCE, Scope.SESSION, Scope.FINGERPRINT]


def _scope(approval: Approval, scope: Scope | str | None) -> Scope:
    if scope is None:
        return Scope.ONCE
    try:
        chosen = Scope(scope)
    except ValueError:
        raise ScopeNotAllowed(f"unknown scope {scope!r}; one of once, session, fingerprint") from None
    if approval.kind == "access" and chosen is not Scope.ONCE:
        raise ScopeNotAllowed("an access request is approved as asked; scopes apply to statements")
    if chosen not in approval.scopes:
        allowed = ", ".join(s.value for s in approval.scopes)
        raise ScopeNotAllowed(f"scope {chosen.value!r} is not allowed for this request (allowed: {allowed})")
    return chosen


def expire(approval: Approval, *, now: datetime) -> Approval:
    """Pending past its expiry → expired. Raises NotPending if it is not pending or not due."""
    if approval.status is not Status.PENDING:
        raise NotPending(f"request {approval.id} is already {approval.status.value}")
    if now < approval.expires_at:
        raise NotPending(f"request {approval.id} does not expire until {approval.expires_at.isoformat()}")
    return replace(
        approval, status=Status.EXPIRED, decided_at=now,
        decision_reason=f"no decision within {_minutes(approval.expires_at - approval.created_at)}",
    )


def cancel(approval: Approval, *, now: datetime, reason: str) -> Approval:
    """The requester withdrew (a parked client disconnected, or asked to cancel)."""
    if approval.status is not Status.PENDING:
        raise NotPending(f"request {approval.id} is already {approval.status.value}")
    return replace(approval, status=Status.CANCELLED, decided_at=now, decision_reason=reason)


def covers(
    approval: Approval, *, session_id: str, statement_hash: str, fingerprint: str | None, requester: str,
    resource: str, now: datetime,
) -> bool:
    """Whether an approved statement request lets this statement run without a new review."""
    if approval.kind != "statement" or approval.status is not Status.APPROVED:
        return False
    if approval.resource != resource or approval.requester != requester:
        return False
    if approval.scope is Scope.FINGERPRINT:
        return (
            fingerprint is not None
            and approval.fingerprint == fingerprint
            and approval.covers_until is not None
            and now < approval.covers_until
        )
    if approval.session_id != session_id or approval.statement_hash != statement_hash:
        return False
    if approval.scope is Scope.SESSION:
        return True
    return approval.used == 0  # ONCE: one run


def _minutes(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min"
