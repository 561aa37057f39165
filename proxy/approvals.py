"""The review hook backed by the broker's approvals service.

A statement under `review`:

1. runs at once when an earlier approval covers it (same statement in this session after a
   late approval, a session-scoped approval, or a fingerprint window);
2. otherwise is parked: an approval request is stored (and its Slack prompt dispatched), the
   client gets a NoticeResponse naming the request and where to decide it, and the proxy
   waits up to `wait_seconds` for the decision, woken by the decision bus;
3. approved: it runs on the same upstream connection. Denied, expired or cancelled: refused
   with the reason, and a hint true to it (denied: by whom and why; expired or cancelled:
   re-run to ask again). Still pending when the wait ends: refused, saying that the request
   stays open and that re-running the same statement after its approval will run it.

If the client goes away while parked, the request is cancelled. Anything failing on the way
(store down, ...) refuses the statement: the hook fails closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from broker.approvals.model import Approval, Status
from broker.approvals.service import ApprovalService, Requester
from broker.policy import Verdict
from proxy.hooks import ReviewOutcome, SessionInfo
from proxy.rehearsal import BlastRadius

log = structlog.get_logger("jitgate.proxy")


class ApprovalReviewHook:
    def __init__(self, service: ApprovalService, *, wait_seconds: float, console_url: str | None = None) -> None:
        self.service = service
        self.wait_seconds = wait_seconds
        self.console_url = (console_url or "").rstrip("/") or None
        self._withdrawing: set[asyncio.Future[None]] = set()

    async def review(
        self,
        *,
        session: SessionInfo,
        sql: str,
        verdict: Verdict,
        notify: Callable[[str], None],
        estimate: int | None = None,
        blast_radius: BlastRadius | None = None,
    ) -> ReviewOutcome:
        grant = session.grant
        covering = await self.service.covering(
            session_id=session.session_id, requester=grant.principal, resource=grant.resource, sql=sql
        )
        if covering is not None:
            notify(f"jitgate: runs under approval {covering.id} ({covering.scope.value if covering.scope else 'once'})")
            return ReviewOutcome(approved=True, approval_id=covering.id)
        approval = await self.service.park_statement(
            session_id=session.session_id,
            requester=Requester(grant.principal, tuple(grant.groups), _owner(session)),
            resource=grant.resource,
            sql=sql,
            rule=verdict.rule,
            risk=verdict.reason,
            # The requester's stated intent only (`options=-c jitgate.intent=...`, the MCP
            # tool's `intent`): application_name is the client program's name, never a reason.
            intent=session.intent,
            details={**_details(verdict, estimate, blast_radius), **_client(session)},
        )
        where = f" at {self.console_url}/approvals/{approval.id}" if self.console_url else ""
        notify(
            f"jitgate: awaiting approval {approval.id}{where} "
            f"(rule {verdict.rule}; approvers: {', '.join(approval.approver_groups)}; "
            f"waiting up to {int(self.wait_seconds)} s)"
        )
        try:
            final = await self.service.wait(approval.id, self.wait_seconds)
        except asyncio.CancelledError:
            # The client left (or the session ended) while parked: withdraw the request. The
            # cancel runs in its own task so that this cancellation does not interrupt it.
            task = asyncio.ensure_future(self._withdraw(approval.id, session.session_id))
            self._withdrawing.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._withdrawing.discard)
            raise
        return await self._outcome(final)

    async def _withdraw(self, approval_id: str, session_id: str) -> None:
        try:
            await self.service.cancel(approval_id, reason="the requesting client disconnected", actor=None)
        except Exception as exc:
            log.warning("approval_cancel_failed", approval_id=approval_id, error=type(exc).__name__)

    async def _outcome(self, approval: Approval) -> ReviewOutcome:
        if approval.status is Status.APPROVED:
            # The parked run is the one run a once-approval allows.
            await self.service.approvals.use_approval(approval.id)
            return ReviewOutcome(approved=True, approval_id=approval.id)
        return refused_outcome(approval, waited=self.wait_seconds)

    async def session_ended(self, session_id: str) -> None:
        """Cancel what the session left pending (called when a session ends)."""
        try:
            await self.service.cancel_for_session(session_id, reason="the session ended")
        except Exception as exc:
            log.warning("approval_cancel_failed", session_id=session_id, error=type(exc).__name__)


def refused_outcome(approval: Approval, *, waited: float) -> ReviewOutcome:
    """The refusal of a parked statement whose request was not approved, saying what is true:
    only a request still pending after the wait is one that a re-run after approval will use."""
    who = " and ".join(approval.decided_by)
    if approval.status is Status.PENDING:
        return ReviewOutcome(
            approved=False,
            approval_id=approval.id,
            reason=(
                f"approval {approval.id} is still pending after {int(waited)} s; it stays open "
                f"until {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC"
            ),
            hint=(
                "The request stays open: re-run the same statement in this session once it is approved "
                "(the MCP tool approval_status reports it)."
            ),
        )
    if approval.status is Status.DENIED:
        return ReviewOutcome(
            approved=False,
            approval_id=approval.id,
            reason=f"approval {approval.id} denied by {who}: {approval.decision_reason}",
            hint=(
                f"{who} denied this statement: {approval.decision_reason}. Re-running it asks for a new "
                "review; change it as the reason says, or talk to the approver first."
            ),
        )
    if approval.status is Status.EXPIRED:
        return ReviewOutcome(
            approved=False,
            approval_id=approval.id,
            reason=f"approval {approval.id} expired: {approval.decision_reason}",
            hint="No approver answered in time: the request expired unanswered; re-run to ask again.",
        )
    return ReviewOutcome(
        approved=False,
        approval_id=approval.id,
        reason=f"approval {approval.id} {approval.status.value}: {approval.decision_reason}",
        hint=f"The request was cancelled ({approval.decision_reason}); re-run to ask again.",
    )


def _client(session: SessionInfo) -> dict[str, str]:
    """The client program's name for approvers, labelled as what it is (not a reason)."""
    return {"application_name": session.application_name} if session.application_name else {}


def _details(verdict: Verdict, estimate: int | None, blast: BlastRadius | None = None) -> dict[str, object]:
    """The blast radius shown to approvers: tables touched, the planner's row estimate, and
    for a write parked for its size the rows its rehearsal changed per table ("would change
    406 of 406 rows of orders"), or the planner's estimate marked as such."""
    details: dict[str, object] = {}
    if verdict.tables:
        details["tables"] = list(verdict.tables)
    if estimate is not None:
        details["row_estimate"] = estimate
    if blast is not None:
        details.update(blast.details())
        if blast.estimated and blast.changes:
            details.setdefault("row_estimate", sum(change.rows for change in blast.changes))
    return details


def _owner(session: SessionInfo) -> str | None:
    """The person an agent's grant acts for: they may not approve their agent's statements."""
    return session.grant.owner
