"""The approvals service: what the proxy, the API, the CLI, Slack and the workers call.

It joins the pure rules (`model`), the terms from configuration (`settings.terms_for`), the
store (which applies transitions atomically and audits them), the decision bus (which wakes
the proxy that parked a statement) and a `Dispatcher` (which tells the outside world: the
Celery tasks that post and update Slack prompts). Every committed transition is published
and dispatched; a failure to dispatch never undoes a decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from broker import metrics
from broker.approvals.bus import DecisionBus, LocalBus
from broker.approvals.model import (
    Approval,
    ApprovalRefused,
    Choice,
    Kind,
    NotPending,
    Scope,
    Status,
    Voter,
    VoteResult,
)
from broker.approvals.settings import ApprovalSettings, Terms, terms_for
from broker.durations import parse_duration
from broker.policy.normalize import shape

if TYPE_CHECKING:
    from broker.store.approvals import ApprovalRepository

log = structlog.get_logger("jitgate.approvals")


class Dispatcher(Protocol):
    """Tells the world about a request: post a prompt when created, update it on change."""

    def created(self, approval: Approval) -> None: ...

    def changed(self, approval: Approval) -> None: ...


class NullDispatcher:
    """No Slack configured: approvals happen in the console, the CLI or the API."""

    def created(self, approval: Approval) -> None:
        pass

    def changed(self, approval: Approval) -> None:
        pass


def statement_hash(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


def statement_fingerprint(sql: str) -> str:
    """The literal-free shape's digest: `delete from t where id = 1` and `... = 2` share it."""
    return hashlib.sha256((shape(sql) or sql).encode()).hexdigest()


class AlreadyDecided(NotPending):
    """A vote on a request that is no longer pending; the message says who decided it, when."""


class AlreadyVoted(ApprovalRefused):
    """The same person voting twice on a request still waiting for more votes."""

    code = "already_voted"


def _at(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment is not None else "an unknown time"


def decided_text(approval: Approval) -> str:
    """How a decided request came to be decided: "request X was already approved by Y at T"."""
    who = " and ".join(approval.decided_by)
    at = _at(approval.decided_at)
    match approval.status:
        case Status.APPROVED:
            return f"request {approval.id} was already approved by {who} at {at}"
        case Status.DENIED:
            return f"request {approval.id} was already denied by {who} at {at}: {approval.decision_reason}"
        case Status.EXPIRED:
            return f"request {approval.id} already expired unanswered at {at}"
        case Status.CANCELLED:
            return f"request {approval.id} was already cancelled at {at} ({approval.decision_reason})"
        case _:
            return f"request {approval.id} is still pending"


def repeated_vote(result: VoteResult, voter: Voter) -> ApprovalRefused | None:
    """What to tell `voter` when `result` did not count their vote (they had voted before):
    `AlreadyDecided` once the request is decided, `AlreadyVoted` while it waits for others.
    None for a counted vote."""
    if result.counted:
        return None
    approval = result.approval
    if approval.final:
        return AlreadyDecided(decided_text(approval))
    mine = next((v for v in approval.votes if v.voter == voter.principal), None)
    missing = approval.quorum - len(approval.approvals)
    return AlreadyVoted(
        f"you already voted to {mine.choice if mine else 'approve'} request {approval.id} at "
        f"{_at(mine.at if mine else None)}; it still needs {missing} more approval"
        f"{'' if missing == 1 else 's'} from another approver ({len(approval.approvals)} of {approval.quorum})"
    )


@dataclass(frozen=True, slots=True)
class Requester:
    principal: str
    groups: tuple[str, ...]
    owner: str | None = None  # an agent's responsible person


class ApprovalService:
    def __init__(
        self,
        approvals: ApprovalRepository,
        settings: ApprovalSettings,
        *,
        bus: DecisionBus | None = None,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.approvals = approvals
        self.settings = settings
        self.bus: DecisionBus = bus or LocalBus()
        self.dispatcher: Dispatcher = dispatcher or NullDispatcher()
        self._directory_max_age = parse_duration(settings.directory_max_age)

    # -- creating ------------------------------------------------------------------------------

    async def park_statement(
        self,
        *,
        session_id: str,
        requester: Requester,
        resource: str,
        sql: str,
        rule: str,
        risk: str,
        intent: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> Approval:
        terms = terms_for(self.settings, kind="statement", resource=resource, rule=rule)
        return await self._open(
            str(uuid.uuid4()), "statement", requester, resource, terms,
            reason=intent,
            session_id=session_id,
            sql=sql,
            statement_hash=statement_hash(sql),
            fingerprint=statement_fingerprint(sql),
            rule=rule,
            risk=risk,
            details=details or {},
        )

    async def open_access_request(
        self,
        *,
        request_id: str,
        requester: Requester,
        resource: str,
        role: str,
        reason: str,
        ttl: timedelta,
        approvers: Sequence[str],
    ) -> Approval:
        """The approval behind a pending access request; it shares the request's id."""
        terms = terms_for(self.settings, kind="access", resource=resource, approvers=tuple(approvers))
        return await self._open(
            request_id, "access", requester, resource, terms,
            role=role, reason=reason, details={"ttl_seconds": int(ttl.total_seconds())},
        )

    async def _open(
        self, approval_id: str, kind: Kind, requester: Requester, resource: str, terms: Terms, **fields: Any
    ) -> Approval:
        """A pending request on `terms`: stored (and audited), then announced."""
        now = self.approvals.core.clock()
        approval = Approval(
            id=approval_id,
            kind=kind,
            status=Status.PENDING,
            requester=requester.principal,
            requester_groups=requester.groups,
            owner=requester.owner,
            resource=resource,
            created_at=now,
            expires_at=now + terms.timeout,
            approver_groups=terms.approvers,
            quorum=terms.quorum,
            scopes=terms.scopes,
            fingerprint_window=terms.fingerprint_window,
            break_glass=terms.break_glass,
            **fields,
        )
        await self.approvals.create_approval(approval)
        self._dispatch("created", approval)
        return approval

    # -- deciding ------------------------------------------------------------------------------

    async def vote(
        self,
        approval_id: str,
        voter: Voter,
        choice: Choice,
        *,
        reason: str | None = None,
        scope: Scope | str | None = None,
    ) -> VoteResult:
        """Raises `ApprovalRefused` (with a stable `.code`) or `ApprovalNotFound`.

        A repeated vote by the same voter is not an error here (`VoteResult.counted` is
        False, so a retried call is harmless); a person at the API, the CLI or the console is
        told with `repeated_vote`. A vote on a request decided by others raises
        `AlreadyDecided`, which says who decided it and when."""
        try:
            result = await self.approvals.vote_approval(approval_id, voter, choice, reason=reason, scope=scope)
        except ApprovalRefused as exc:
            metrics.APPROVAL_VOTES.labels(voter.via, exc.code).inc()
            if isinstance(exc, NotPending):
                current = await self.approvals.get_approval(approval_id)
                if current is not None and current.final:
                    raise AlreadyDecided(decided_text(current)) from None
            raise
        metrics.APPROVAL_VOTES.labels(voter.via, "counted" if result.counted else "duplicate").inc()
        if result.counted:
            log.info(
                "approval_vote", approval_id=approval_id, voter=voter.principal, choice=choice,
                via=voter.via, status=result.approval.status.value, break_glass=result.break_glass,
            )
            if result.decided:
                await self.bus.publish(approval_id, result.approval.status.value)
            self._dispatch("changed", result.approval)
        return result

    async def cancel(self, approval_id: str, *, reason: str, actor: str | None = None) -> Approval | None:
        """Withdraw a pending request; None when it was decided meanwhile (that stands)."""
        try:
            approval = await self.approvals.cancel_approval(approval_id, reason=reason, actor=actor)
        except ApprovalRefused:
            return None
        await self.bus.publish(approval_id, approval.status.value)
        self._dispatch("changed", approval)
        return approval

    async def cancel_for_session(self, session_id: str, *, reason: str) -> None:
        for approval in await self.approvals.cancel_session_approvals(session_id, reason=reason):
            await self.bus.publish(approval.id, approval.status.value)
            self._dispatch("changed", approval)

    async def expire_due(self) -> list[Approval]:
        expired = []
        for approval_id in await self.approvals.due_approvals():
            approval = await self._expire(approval_id)
            if approval is not None:
                expired.append(approval)
        return expired

    async def _expire(self, approval_id: str) -> Approval | None:
        """Expire a due request, publish and dispatch it; None when it was decided meanwhile."""
        try:
            approval = await self.approvals.expire_approval(approval_id)
        except ApprovalRefused:
            return None
        await self.bus.publish(approval.id, approval.status.value)
        self._dispatch("changed", approval)
        return approval

    # -- waiting (the proxy) -------------------------------------------------------------------

    async def wait(self, approval_id: str, seconds: float) -> Approval:
        """The request once it leaves pending, or as it stands when `seconds` run out.

        Woken by the bus; the store is read before waiting and after each wake-up, so a
        decision published before the wait began is not missed, and a lost message costs
        at most the timeout, never a wrong outcome. A request still pending at its own expiry
        is expired here, at that moment (the worker's sweep would do it up to
        `expiry_check_interval` later, and not at all without a worker).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            future = self.bus.waiter(approval_id)
            try:
                approval = await self.approvals.get_approval(approval_id)
                if approval is None:
                    raise LookupError(approval_id)
                remaining = deadline - loop.time()
                if approval.final or remaining <= 0:
                    return approval
                due_in = (approval.expires_at - self.approvals.core.clock()).total_seconds()
                if due_in <= 0 and await self._expire(approval_id) is not None:
                    continue  # read back what was committed
                try:
                    await asyncio.wait_for(asyncio.shield(future), remaining if due_in <= 0 else min(remaining, due_in))
                except TimeoutError:
                    pass
            finally:
                self.bus.discard(approval_id, future)
                future.cancel()

    async def covering(self, *, session_id: str, requester: str, resource: str, sql: str) -> Approval | None:
        return await self.approvals.find_covering_approval(
            session_id=session_id, statement_hash=statement_hash(sql), fingerprint=statement_fingerprint(sql),
            requester=requester, resource=resource,
        )

    # -- reading -------------------------------------------------------------------------------

    async def get(self, approval_id: str) -> Approval | None:
        return await self.approvals.get_approval(approval_id)

    async def find(
        self, *, status: Status | None = None, requester: str | None = None, id_prefix: str | None = None
    ) -> list[Approval]:
        return await self.approvals.list_approvals(status=status, requester=requester, id_prefix=id_prefix)

    async def list_pending(self, *, approver: Voter | None = None, requester: str | None = None) -> list[Approval]:
        """Pending requests; for an approver, only those they may decide (not their own)."""
        pending = await self.approvals.list_approvals(status=Status.PENDING, requester=requester)
        if approver is None:
            return pending
        groups = set(approver.groups)
        return [
            a for a in pending
            if groups.intersection(a.approver_groups) and not a.is_requester(approver.principal)
        ]

    async def voter_for_email(self, email: str, *, via: str = "slack") -> Voter | None:
        return await self.approvals.voter_for_email(email, via=via, max_age=self._directory_max_age)

    def _observe(self, approval: Approval) -> None:
        if approval.final and approval.decided_at is not None:
            metrics.APPROVALS_DECIDED.labels(approval.kind, approval.status.value).inc()
            metrics.APPROVAL_SECONDS.labels(approval.status.value).observe(
                max(0.0, (approval.decided_at - approval.created_at).total_seconds())
            )

    def _dispatch(self, what: str, approval: Approval) -> None:
        if what == "created":
            metrics.APPROVALS_OPENED.labels(approval.kind).inc()
        else:
            self._observe(approval)
        try:
            getattr(self.dispatcher, what)(approval)
        except Exception as exc:  # the decision is committed; the prompt catches up later
            log.warning("approval_dispatch_failed", approval_id=approval.id, what=what, error=type(exc).__name__)
