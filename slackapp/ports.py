"""What the Slack app needs from the broker: `ApprovalActions` and `MessageLedger`.

`broker.approvals.service.ApprovalService` implements `ApprovalActions`; the Slack app only
ever sees this Protocol, so its listeners hold no approval rules of their own (the rules are
`broker.approvals.model.cast_vote`). `Store.approvals` (`broker.store.approvals`) implements `MessageLedger`: where
each approval's prompt went, so the poster never searches a channel's history.
"""

from __future__ import annotations

from datetime import timedelta
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


class MessageLedger(Protocol):
    """The (channel, ts) of each message posted once per approval and kind, claimed before the post."""

    async def claim_slack_message(
        self, approval_id: str, kind: str, *, channel: str, stale_after: timedelta,
    ) -> tuple[str, str | None] | None:
        """None: claimed, post it now. (channel, ts): posted already. (channel, None): another
        delivery holds a claim younger than `stale_after`."""
        ...

    async def record_slack_message(self, approval_id: str, kind: str, *, channel: str, ts: str) -> None: ...

    async def release_slack_message(self, approval_id: str, kind: str) -> None:
        """Drop an unposted claim (the post surely failed), so the next delivery posts at once."""
        ...
