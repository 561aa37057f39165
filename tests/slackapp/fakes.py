"""An in-memory `ApprovalActions` over the real rules (`broker.approvals.model.cast_vote`)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from broker.approvals.model import Approval, Scope, Status, Voter, VoteResult, cast_vote

NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)
_ids = itertools.count(1)


def make_approval(kind: Literal["access", "statement"] = "statement", **overrides: Any) -> Approval:
    created = overrides.pop("created_at", datetime.now(UTC))
    base: dict[str, Any] = dict(
        id=f"apr_{next(_ids):04d}", kind=kind, status=Status.PENDING,
        requester="agent:claude-code", requester_groups=("ai-agents",), owner="person:dave@example.com",
        resource="demo", created_at=created, expires_at=created + timedelta(minutes=15),
        approver_groups=("dba",),
    )
    if kind == "statement":
        base.update(
            sql="DELETE FROM customers", rule="write-without-where", risk="DELETE without a WHERE clause",
            reason="clean up test rows", session_id="s1", scopes=(Scope.ONCE, Scope.SESSION),
            details={"tables": ["public.customers"], "row_estimate": 1200},
        )
    else:
        base.update(requester="person:dave@example.com", owner=None, role="readwrite",
                    reason="fix ticket 42", details={"ttl_seconds": 3600})
    base.update(overrides)
    return Approval(**base)


class InMemoryApprovals:
    """What `broker.approvals.service.ApprovalService` does, minus the store."""

    def __init__(self, people: dict[str, tuple[str, ...]]) -> None:
        self.people = people  # email -> groups
        self.approvals: dict[str, Approval] = {}
        self.votes: list[tuple[str, str, str, str | None]] = []  # (approval id, principal, choice, reason)
        self.access_requests: list[dict[str, str]] = []
        self.vote_delay = 0.0  # a slow store: the click must still be acked at once
        self._lock = asyncio.Lock()

    def add(self, approval: Approval) -> Approval:
        self.approvals[approval.id] = approval
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        return self.approvals.get(approval_id)

    async def list_pending(self, *, approver: Voter | None = None, requester: str | None = None) -> list[Approval]:
        pending = [a for a in self.approvals.values() if a.status is Status.PENDING]
        if approver is not None:
            pending = [a for a in pending if set(approver.groups) & set(a.approver_groups)]
        if requester is not None:
            pending = [a for a in pending if a.is_requester(requester)]
        return pending

    async def vote(
        self, approval_id: str, voter: Voter, choice: Literal["approve", "deny"], *,
        reason: str | None = None, scope: str | None = None,
    ) -> VoteResult:
        await asyncio.sleep(self.vote_delay)
        async with self._lock:  # the store's transaction
            current = self.approvals.get(approval_id)
            if current is None:
                raise LookupError(approval_id)
            result = cast_vote(current, voter, choice, now=datetime.now(UTC), reason=reason, scope=scope)
            self.approvals[approval_id] = result.approval
            if result.counted:
                self.votes.append((approval_id, voter.principal, choice, reason))
            return result

    async def voter_for_email(self, email: str) -> Voter | None:
        groups = self.people.get(email)
        return None if groups is None else Voter(f"person:{email}", groups)

    async def request_access(self, *, email: str, resource: str, role: str, reason: str, ttl: str) -> str:
        self.access_requests.append(dict(email=email, resource=resource, role=role, reason=reason, ttl=ttl))
        if resource not in ("demo",):
            raise LookupError(f"unknown resource {resource!r}")
        approval = self.add(make_approval(
            "access", requester=f"person:{email}", resource=resource, role=role, reason=reason,
        ))
        return f"pending approval {approval.id}: waiting for dba"

    def decided(self, approval_id: str) -> Approval:
        return self.approvals[approval_id]

    def expire(self, approval_id: str) -> None:
        self.approvals[approval_id] = replace(self.approvals[approval_id], status=Status.EXPIRED)


class InMemoryLedger:
    """What the store's `slack_messages` table does (`slackapp.ports.MessageLedger`), in memory."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[str, str | None, datetime]] = {}  # -> (channel, ts, claimed_at)

    async def claim_slack_message(
        self, approval_id: str, kind: str, *, channel: str, stale_after: timedelta,
    ) -> tuple[str, str | None] | None:
        now = datetime.now(UTC)
        row = self.rows.get((approval_id, kind))
        if row is not None and (row[1] is not None or row[2] > now - stale_after):
            return row[0], row[1]
        self.rows[(approval_id, kind)] = (channel, None, now)
        return None

    async def record_slack_message(self, approval_id: str, kind: str, *, channel: str, ts: str) -> None:
        self.rows[(approval_id, kind)] = (channel, ts, self.rows[(approval_id, kind)][2])

    async def release_slack_message(self, approval_id: str, kind: str) -> None:
        if (approval_id, kind) in self.rows and self.rows[(approval_id, kind)][1] is None:
            del self.rows[(approval_id, kind)]
