"""Turning an access request into a decision, a record and (when granted) a gateway token.

    result = await request_access(store, settings, principal, resource=..., role=...,
                                  reason=..., ttl=timedelta(minutes=30))

The API and token exchange call this; a later approval flow grants pending requests the same
way. The token is minted first (`issue_token` stores only its hash and audits the issue),
then the request is recorded naming it; should recording fail, the fresh token is revoked
before the error propagates, so no live token exists without its request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from broker.identity.access import AccessDecision, decide
from broker.identity.oidc import Principal
from broker.store.access_requests import AccessRequestInfo

if TYPE_CHECKING:
    from broker.config import Settings
    from broker.store import Store

_STATUS = {"grant": "granted", "approval": "pending", "deny": "denied"}


@dataclass(frozen=True, slots=True)
class AccessResult:
    request: AccessRequestInfo
    decision: AccessDecision
    token: str | None = field(default=None, repr=False)  # plaintext, only when just granted


async def request_access(
    store: Store,
    settings: Settings,
    principal: Principal,
    *,
    resource: str,
    role: str,
    reason: str,
    ttl: timedelta,
) -> AccessResult:
    if not reason.strip():
        raise ValueError("a reason is required for an access request")
    decision = decide(settings.access.rules, principal, resource, role, ttl)
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
        info = await store.create_access_request(ttl=decision.ttl or ttl, **common)  # type: ignore[arg-type]
        return AccessResult(info, decision)
    issued = await store.issue_token(
        principal.id, principal.groups, resource, role, decision.ttl, decision.reusable
    )
    try:
        info = await store.create_access_request(
            ttl=decision.ttl, token_id=issued.token_id, expires_at=issued.expires_at, **common  # type: ignore[arg-type]
        )
    except BaseException:
        await store.revoke_token(issued.token_id)
        raise
    return AccessResult(info, decision, issued.token)
