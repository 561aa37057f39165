"""What the Slack app needs from the broker: `ApprovalActions`.

`broker.approvals.service.ApprovalService` implements it; the Slack app only ever sees this
Protocol, so its listeners hold no approval rules of their own (the rules are
`broker.approvals.model.cast_vote`).
"""

from __future__ import annotations

from typing import Literal, Protocol

from broker.approvals.model import Approval, Voter, VoteResult


class ApprovalActions(Protocol):
    async def get(self, approval_id: str) -> Approval | None: ...

    async def list_pending(self, *, approver: Voter | None = None, requester: str | None = None) -> list[Approval]:
        """Pending requests `approver` may vote on, or that `requester` (a principal) made."""
        ...

    async def vote(
        self,
        approval_id: str,
        voter: Voter,
        choice: Literal["approve", "deny"],
        *,
        reason: str | None = None,
        scope: str | None = None,
    ) -> VoteResult:
        """Raises `ApprovalRefused` when the rules refuse the vote, `LookupError` for an unknown id."""
        ...

    async def voter_for_email(self, email: str) -> Voter | None:
        """`person:<email>` with its last known OIDC groups; None for a person the broker never saw."""
        ...

    async def request_access(self, *, email: str, resource: str, role: str, reason: str, ttl: str) -> str:
        """Ask for access as `person:<email>`; a one-line outcome for the user (granted, pending id, denied)."""
        ...
