"""Turning an access request into a decision, a record and (when granted) a gateway token.

    result = await request_access(settings, principal, tokens=store.tokens, access=store.access,
                                  resource=..., role=..., reason=..., ttl=timedelta(minutes=30),
                                  approvals=service)

The API and token exchange call this; a later approval flow grants pending requests the same
way. The token is minted first (`issue_token` stores only its hash and audits the issue),
then the request is recorded naming it; should recording fail, the fresh token is revoked
before the error propagates, so no live token exists without its request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING

from broker.identity.access import AccessDecision, decide
from broker.identity.oidc import Principal
from broker.store.access_requests import AccessRequestInfo

if TYPE_CHECKING:
    from broker.approvals.service import ApprovalService
    from broker.config import Settings
    from broker.store.access_requests import AccessRequestRepository
    from broker.store.tokens import TokenRepository

_STATUS = {"grant": "granted", "approval": "pending", "deny": "denied"}


@dataclass(frozen=True, slots=True)
class AccessResult:
    request: AccessRequestInfo
    decision: AccessDecision
    token: str | None = field(default=None, repr=False)  # plaintext, only when just granted


async def request_access(
    settings: Settings,
    principal: Principal,
    *,
    tokens: TokenRepository,
    access: AccessRequestRepository,
    resource: str,
    role: str,
    reason: str,
    ttl: timedelta,
    approvals: ApprovalService,
) -> AccessResult:
    """`approvals` (the process's service, with its bus and dispatcher) opens and announces
    the approval of a request that needs one."""
    if not reason.strip():
        raise ValueError("a reason is required for an access request")
    decision = decide(settings.access.rules, principal, resource, role, ttl, settings.access.agent_rules)
    common = {
        "principal": principal.id,
        "groups": principal.groups,
        "resource": resource,
        "role": role,
        "reason": reason.strip(),
        "reusable": decision.reusable,
        "approvers": decision.approvers,
        "status": _STATUS[decision.outcome],
    }
    if decision.outcome != "grant":
        info = await access.create_access_request(ttl=decision.ttl or ttl, **common)  # type: ignore[arg-type]
        if decision.outcome == "approval":
            from broker.approvals.service import Requester

            await approvals.open_access_request(
                request_id=info.id,
                requester=Requester(principal.id, principal.groups, principal.owner_id),
                resource=resource,
                role=role,
                reason=info.reason,
                ttl=info.ttl,
                approvers=decision.approvers,
            )
        return AccessResult(info, decision)
    issued = await tokens.issue_token(
        principal.id, principal.groups, resource, role, decision.ttl, decision.reusable, owner=principal.owner_id
    )
    try:
        info = await access.create_access_request(
            ttl=decision.ttl, token_id=issued.token_id, expires_at=issued.expires_at, **common  # type: ignore[arg-type]
        )
    except BaseException:
        await tokens.revoke_token(issued.token_id)
        raise
    return AccessResult(info, decision, issued.token)


class NotCollectable(Exception):
    """The request is not the caller's, or not approved (or already collected)."""


async def collect_grant(
    principal: Principal, request_id: str, *, tokens: TokenRepository, access: AccessRequestRepository
) -> AccessResult:
    """Mint the token of an approved access request, once, for its requester.

    The token is minted when the requester comes for it, not when the approver clicks: the
    approver never handles it, and it is shown exactly once, to the person who asked.
    """
    info = await access.get_access_request(request_id)
    if info is None or info.principal != principal.id:
        raise NotCollectable("access request not found")
    if info.status != "approved":
        raise NotCollectable(f"access request {request_id} is {info.status}, not approved")
    issued = await tokens.issue_token(
        principal.id, info.groups, info.resource, info.role, info.ttl, info.reusable, owner=principal.owner_id
    )
    try:
        claimed = await access.mark_access_request_granted(request_id, token_id=issued.token_id)
    except BaseException:
        await tokens.revoke_token(issued.token_id)
        raise
    if claimed is None:  # collected by a concurrent call: this token must not live
        await tokens.revoke_token(issued.token_id)
        raise NotCollectable(f"access request {request_id} was already collected")
    decision = AccessDecision("grant", "approved", ttl=info.ttl, reusable=info.reusable, approvers=info.approvers)
    return AccessResult(replace(claimed, expires_at=issued.expires_at), decision, issued.token)
