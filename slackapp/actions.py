"""`BrokerActions`: the broker's approvals service as the Slack app's `ApprovalActions`.

Votes, reads and the directory go straight to `ApprovalService`; `/jit request` runs the same
access-request flow as `POST /v1/access-requests`, as the person whose Slack email matches an
OIDC login the broker has seen (with that login's groups), so Slack grants nothing the API
would not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from broker.approvals.model import Approval, Voter, VoteResult
from broker.approvals.service import ApprovalService
from broker.config import Settings
from broker.durations import parse_duration
from broker.identity.access import decide
from broker.identity.grants import request_access
from broker.identity.oidc import Principal

if TYPE_CHECKING:
    from broker.store.access_requests import AccessRequestRepository
    from broker.store.tokens import TokenRepository


class BrokerActions:
    def __init__(
        self, service: ApprovalService, settings: Settings, *, tokens: TokenRepository, access: AccessRequestRepository
    ) -> None:
        self.service = service
        self.settings = settings
        # Where `request_access` mints tokens and records the request.
        self.tokens = tokens
        self.access = access

    async def get(self, approval_id: str) -> Approval | None:
        return await self.service.get(approval_id)

    async def list_pending(self, *, approver: Voter | None = None, requester: str | None = None) -> list[Approval]:
        return await self.service.list_pending(approver=approver, requester=requester)

    async def vote(
        self, approval_id: str, voter: Voter, choice: Literal["approve", "deny"], *,
        reason: str | None = None, scope: str | None = None,
    ) -> VoteResult:
        return await self.service.vote(approval_id, voter, choice, reason=reason, scope=scope)

    async def voter_for_email(self, email: str) -> Voter | None:
        return await self.service.voter_for_email(email, via="slack")

    async def request_access(self, *, email: str, resource: str, role: str, reason: str, ttl: str) -> str:
        voter = await self.service.voter_for_email(email, via="slack")
        if voter is None:
            raise LookupError(f"{email} has not logged in to jitgate recently: run `jitgate login` first")
        if resource not in self.settings.resources:
            raise LookupError(f"unknown resource {resource!r}")
        principal = Principal(
            subject=email, issuer="slack", email=voter.principal.partition(":")[2] or email, groups=voter.groups
        )
        wanted = parse_duration(ttl)
        if decide(self.settings.access.rules, principal, resource, role, wanted).outcome == "grant":
            # No approval needed, and a gateway token is shown only to its requester, by the
            # CLI or the API: never minted into a Slack message.
            return (
                f"No approval needed for {role} on {resource}: run "
                f"`jitgate connect {resource} --role {role} --reason ...` to get the credential."
            )
        result = await request_access(
            self.settings, principal, tokens=self.tokens, access=self.access, resource=resource, role=role,
            reason=reason, ttl=wanted, approvals=self.service,
        )
        if result.decision.outcome == "approval":
            approvers = ", ".join(result.decision.approvers) or "an approver"
            return (
                f"Request {result.request.id} is waiting for {approvers}; once approved, collect the "
                f"credential with `jitgate grants collect {result.request.id}`."
            )
        return f"Request refused: {result.decision.reason}"
