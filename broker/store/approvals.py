"""Approvals in the store: create, vote, expire, cancel, and find the approval covering a re-run.

Every transition runs in one transaction that first takes the audit append lock (the same
lock every audited write takes: `BEGIN IMMEDIATE` on SQLite, an advisory transaction lock on
PostgreSQL). Transitions are therefore serialised across processes: two approvers clicking
at once are applied one after the other, and the second sees the outcome of the first. The
rules themselves are the pure functions of `broker.approvals.model`; this module only loads,
applies and saves, and writes the audit records in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from broker.approvals.model import (
    Approval,
    ApprovalRefused,
    Choice,
    Scope,
    Status,
    Vote,
    Voter,
    VoteResult,
    cancel,
    cast_vote,
    covers,
    expire,
)
from broker.audit import events
from broker.identity.oidc import Principal
from broker.store.audit import AuditRepository
from broker.store.base import StoreBase
from broker.store.models import AccessRequest, ApprovalRow, ApprovalVoteRow, PrincipalRow, SlackMessageRow


class ApprovalNotFound(LookupError):
    pass


# The access request's status once its approval leaves pending.
_ACCESS_STATUS = {
    Status.APPROVED: "approved",
    Status.DENIED: "denied",
    Status.EXPIRED: "expired",
    Status.CANCELLED: "cancelled",
}


def _to_model(row: ApprovalRow, votes: Iterable[ApprovalVoteRow]) -> Approval:
    return Approval(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]
        status=Status(row.status),
        requester=row.requester,
        requester_groups=tuple(row.requester_groups),
        resource=row.resource,
        created_at=row.created_at,
        expires_at=row.expires_at,
        approver_groups=tuple(row.approver_groups),
        quorum=row.quorum,
        scopes=tuple(Scope(s) for s in row.scopes),
        fingerprint_window=timedelta(seconds=row.fingerprint_window_seconds),
        break_glass=row.break_glass,
        owner=row.owner,
        role=row.role,
        reason=row.reason,
        session_id=row.session_id,
        sql=row.sql,
        statement_hash=row.statement_hash,
        fingerprint=row.fingerprint,
        rule=row.rule,
        risk=row.risk,
        details=dict(row.details or {}),
        votes=tuple(
            Vote(v.voter, v.choice, v.at, v.reason, Scope(v.scope), v.break_glass, v.via)  # type: ignore[arg-type]
            for v in sorted(votes, key=lambda v: v.at)
        ),
        decided_at=row.decided_at,
        decided_by=tuple(row.decided_by),
        decision_reason=row.decision_reason,
        scope=Scope(row.scope) if row.scope else None,
        covers_until=row.covers_until,
        used=row.used,
    )


def _state(approval: Approval) -> dict[str, object]:
    """The columns a transition changes."""
    return {
        "status": approval.status.value,
        "decided_at": approval.decided_at,
        "decided_by": list(approval.decided_by),
        "decision_reason": approval.decision_reason,
        "scope": approval.scope.value if approval.scope else None,
        "covers_until": approval.covers_until,
        "used": approval.used,
    }


def _decided_event(approval: Approval, actor: str | None) -> events.AuditEvent:
    return events.approval_decided(
        approval_id=approval.id,
        status=approval.status.value,
        actor=actor,
        reason=approval.decision_reason,
        decided_by=approval.decided_by,
        scope=approval.scope.value if approval.scope else None,
        session_id=approval.session_id,
    )


class ApprovalRepository:
    def __init__(self, core: StoreBase, audit: AuditRepository) -> None:
        self.core = core
        self._audit = audit

    async def create_approval(self, approval: Approval) -> Approval:
        row = ApprovalRow(
            id=approval.id,
            kind=approval.kind,
            status=approval.status.value,
            requester=approval.requester,
            owner=approval.owner,
            requester_groups=list(approval.requester_groups),
            resource=approval.resource,
            role=approval.role,
            reason=approval.reason,
            session_id=approval.session_id,
            sql=approval.sql,
            statement_hash=approval.statement_hash,
            fingerprint=approval.fingerprint,
            rule=approval.rule,
            risk=approval.risk,
            details=dict(approval.details),
            approver_groups=list(approval.approver_groups),
            quorum=approval.quorum,
            scopes=[s.value for s in approval.scopes],
            fingerprint_window_seconds=int(approval.fingerprint_window.total_seconds()),
            break_glass=approval.break_glass,
            created_at=approval.created_at,
            expires_at=approval.expires_at,
            decided_at=None,
            decided_by=[],
            decision_reason=None,
            scope=None,
            covers_until=None,
            used=0,
        )
        async with self.core.transaction("create approval") as session:
            await self._audit.lock(session)
            session.add(row)
            await self._audit.append(
                session,
                [
                    events.approval_requested(
                        approval_id=approval.id, kind=approval.kind, requester=approval.requester,
                        resource=approval.resource, approvers=approval.approver_groups, quorum=approval.quorum,
                        expires_at=approval.expires_at, session_id=approval.session_id, sql=approval.sql,
                        rule=approval.rule, role=approval.role, owner=approval.owner,
                    )
                ],
            )
        return approval

    async def _load(self, session: AsyncSession, approval_id: str) -> tuple[ApprovalRow, Approval]:
        row = await session.get(ApprovalRow, approval_id)
        if row is None:
            raise ApprovalNotFound(f"no approval request {approval_id!r}")
        votes = (
            await session.execute(select(ApprovalVoteRow).where(ApprovalVoteRow.approval_id == approval_id))
        ).scalars()
        return row, _to_model(row, votes)

    async def get_approval(self, approval_id: str) -> Approval | None:
        async with self.core.transaction("get approval", read_only=True) as session:
            try:
                return (await self._load(session, approval_id))[1]
            except ApprovalNotFound:
                return None

    async def list_approvals(
        self,
        *,
        status: Status | None = None,
        requester: str | None = None,
        session_id: str | None = None,
        id_prefix: str | None = None,
        limit: int = 200,
    ) -> list[Approval]:
        query = select(ApprovalRow).order_by(ApprovalRow.created_at.desc()).limit(limit)
        if id_prefix is not None:
            # autoescape: a % or _ in the prefix is a character to match, not a wildcard.
            query = query.where(ApprovalRow.id.startswith(id_prefix.lower(), autoescape=True))
        if status is not None:
            query = query.where(ApprovalRow.status == status.value)
        if requester is not None:
            query = query.where(ApprovalRow.requester == requester)
        if session_id is not None:
            query = query.where(ApprovalRow.session_id == session_id)
        async with self.core.transaction("list approvals", read_only=True) as session:
            rows = list((await session.execute(query)).scalars())
            votes: dict[str, list[ApprovalVoteRow]] = {r.id: [] for r in rows}
            if rows:
                for v in (
                    await session.execute(select(ApprovalVoteRow).where(ApprovalVoteRow.approval_id.in_(votes)))
                ).scalars():
                    votes[v.approval_id].append(v)
            return [_to_model(r, votes[r.id]) for r in rows]

    async def vote_approval(
        self,
        approval_id: str,
        voter: Voter,
        choice: Choice,
        *,
        reason: str | None = None,
        scope: Scope | str | None = None,
    ) -> VoteResult:
        """Apply a vote under the append lock. Refusals are audited too, then re-raised."""
        refused: ApprovalRefused | None = None
        async with self.core.transaction("vote approval") as session:
            await self._audit.lock(session)
            row, approval = await self._load(session, approval_id)
            try:
                result = cast_vote(approval, voter, choice, now=self.core.clock(), reason=reason, scope=scope)
            except ApprovalRefused as exc:
                refused = exc
                await self._audit.append(
                    session,
                    [
                        events.approval_vote(
                            approval_id=approval_id, approver=voter.principal, approve=choice == "approve",
                            reason=f"refused ({exc.code}): {exc.message}", session_id=approval.session_id,
                            via=voter.via,
                        )
                    ],
                )
            else:
                if result.counted and result.vote is not None:
                    vote = result.vote
                    session.add(
                        ApprovalVoteRow(
                            approval_id=approval_id, voter=vote.voter, choice=vote.choice, reason=vote.reason,
                            scope=vote.scope.value, break_glass=vote.break_glass, via=vote.via, at=vote.at,
                        )
                    )
                    audit = [
                        events.approval_vote(
                            approval_id=approval_id, approver=vote.voter, approve=vote.choice == "approve",
                            reason=vote.reason, session_id=approval.session_id, scope=vote.scope.value,
                            break_glass=vote.break_glass, via=vote.via,
                        )
                    ]
                    if result.decided:
                        for key, value in _state(result.approval).items():
                            setattr(row, key, value)
                        audit.append(_decided_event(result.approval, vote.voter))
                        if approval.kind == "access":
                            await self._settle_access_request(session, result.approval)
                    await self._audit.append(session, audit)
        if refused is not None:
            raise refused
        return result

    async def _settle_access_request(self, session: AsyncSession, approval: Approval) -> None:
        await session.execute(
            update(AccessRequest)
            .where(AccessRequest.id == approval.id, AccessRequest.status == "pending")
            .values(status=_ACCESS_STATUS[approval.status], decided_at=approval.decided_at)
        )

    async def _transition(
        self, approval_id: str, action: str, change: Callable[[Approval], Approval], actor: str | None
    ) -> Approval:
        async with self.core.transaction(action) as session:
            await self._audit.lock(session)
            row, approval = await self._load(session, approval_id)
            changed = change(approval)
            for key, value in _state(changed).items():
                setattr(row, key, value)
            if approval.kind == "access":
                await self._settle_access_request(session, changed)
            await self._audit.append(session, [_decided_event(changed, actor)])
        return changed

    async def expire_approval(self, approval_id: str) -> Approval:
        return await self._transition(approval_id, "expire approval", lambda a: expire(a, now=self.core.clock()), None)

    async def cancel_approval(self, approval_id: str, *, reason: str, actor: str | None = None) -> Approval:
        return await self._transition(
            approval_id, "cancel approval", lambda a: cancel(a, now=self.core.clock(), reason=reason), actor
        )

    async def due_approvals(self, *, now: datetime | None = None, limit: int = 500) -> list[str]:
        """Ids of pending requests past their expiry."""
        now = now or self.core.clock()
        async with self.core.transaction("due approvals", read_only=True) as session:
            rows = await session.execute(
                select(ApprovalRow.id)
                .where(ApprovalRow.status == Status.PENDING.value, ApprovalRow.expires_at <= now)
                .limit(limit)
            )
            return [r[0] for r in rows]

    async def find_covering_approval(
        self,
        *,
        session_id: str,
        statement_hash: str,
        fingerprint: str | None,
        requester: str,
        resource: str,
    ) -> Approval | None:
        """An approved request that lets this statement run now, consuming a ONCE approval.

        Consuming is a conditional update (`used = 0` → 1) in the same transaction, so a
        once-approval lets exactly one run through even when two sessions race for it.
        """
        now = self.core.clock()
        query = select(ApprovalRow).where(
            ApprovalRow.status == Status.APPROVED.value,
            ApprovalRow.kind == "statement",
            ApprovalRow.requester == requester,
            ApprovalRow.resource == resource,
            (ApprovalRow.session_id == session_id) & (ApprovalRow.statement_hash == statement_hash)
            | (ApprovalRow.fingerprint == fingerprint) & (ApprovalRow.scope == Scope.FINGERPRINT.value),
        )
        async with self.core.transaction("find covering approval") as session:
            for row in (await session.execute(query)).scalars():
                approval = _to_model(row, ())
                if not covers(
                    approval, session_id=session_id, statement_hash=statement_hash, fingerprint=fingerprint,
                    requester=requester, resource=resource, now=now,
                ):
                    continue
                if approval.scope is Scope.ONCE:
                    taken = await session.execute(
                        update(ApprovalRow).where(ApprovalRow.id == row.id, ApprovalRow.used == 0).values(used=1)
                    )
                    if taken.rowcount != 1:  # type: ignore[attr-defined]
                        continue
                    return replace(approval, used=1)
                await session.execute(
                    update(ApprovalRow).where(ApprovalRow.id == row.id).values(used=ApprovalRow.used + 1)
                )
                return approval
        return None

    async def use_approval(self, approval_id: str) -> None:
        """Count a run under an approval (a once-approval is then spent)."""
        async with self.core.transaction("use approval") as session:
            await session.execute(
                update(ApprovalRow).where(ApprovalRow.id == approval_id).values(used=ApprovalRow.used + 1)
            )

    async def cancel_session_approvals(self, session_id: str, *, reason: str) -> list[Approval]:
        """Cancel what a session left pending when it ended."""
        async with self.core.transaction("session approvals", read_only=True) as session:
            ids = [
                r[0]
                for r in await session.execute(
                    select(ApprovalRow.id).where(
                        ApprovalRow.session_id == session_id, ApprovalRow.status == Status.PENDING.value
                    )
                )
            ]
        cancelled = []
        for approval_id in ids:
            try:
                cancelled.append(await self.cancel_approval(approval_id, reason=reason))
            except ApprovalRefused:
                pass  # decided meanwhile: that decision stands
        return cancelled

    # -- the Slack messages of an approval (slackapp.ports.MessageLedger) ----------------------

    async def claim_slack_message(
        self, approval_id: str, kind: str, *, channel: str, stale_after: timedelta,
    ) -> tuple[str, str | None] | None:
        """Claim the right to post the `kind` message of an approval, before posting it.

        None: claimed; post, then `record_slack_message` (or `release_slack_message` if
        Slack surely did not post). (channel, ts): already posted there. (channel, None):
        another delivery claimed it less than `stale_after` ago and may be posting now. A
        claim older than that (its poster died) is taken over.
        """
        table = cast(Table, SlackMessageRow.__table__)
        now = self.core.clock()
        upsert = pg_insert if self.core.dialect == "postgresql" else sqlite_insert
        async with self.core.transaction("claim slack message") as session:
            inserted = await session.execute(
                upsert(table)
                .values(approval_id=approval_id, kind=kind, channel=channel, ts=None, claimed_at=now)
                .on_conflict_do_nothing()
            )
            if inserted.rowcount == 1:  # type: ignore[attr-defined]
                return None
            row = (
                await session.execute(
                    select(table.c.channel, table.c.ts, table.c.claimed_at)
                    .where(table.c.approval_id == approval_id, table.c.kind == kind)
                    .with_for_update()
                )
            ).one()
            if row.ts is not None:
                return row.channel, row.ts
            if row.claimed_at > now - stale_after:
                return row.channel, None
            await session.execute(
                update(table)
                .where(table.c.approval_id == approval_id, table.c.kind == kind)
                .values(channel=channel, claimed_at=now)
            )
            return None

    async def record_slack_message(self, approval_id: str, kind: str, *, channel: str, ts: str) -> None:
        """The claimed message is posted: keep where, so later deliveries update it."""
        table = cast(Table, SlackMessageRow.__table__)
        async with self.core.transaction("record slack message") as session:
            await session.execute(
                update(table)
                .where(table.c.approval_id == approval_id, table.c.kind == kind)
                .values(channel=channel, ts=ts)
            )

    async def release_slack_message(self, approval_id: str, kind: str) -> None:
        """Give up a claim whose post surely failed, so the next delivery posts at once."""
        table = cast(Table, SlackMessageRow.__table__)
        async with self.core.transaction("release slack message") as session:
            await session.execute(
                delete(table).where(table.c.approval_id == approval_id, table.c.kind == kind, table.c.ts.is_(None))
            )

    async def approval_message(self, approval_id: str, kind: str = "prompt") -> tuple[str, str] | None:
        """(channel, ts) of the approval's posted prompt (or other `kind`), if it was posted."""
        table = cast(Table, SlackMessageRow.__table__)
        async with self.core.transaction("approval message", read_only=True) as session:
            row = (
                await session.execute(
                    select(table.c.channel, table.c.ts).where(
                        table.c.approval_id == approval_id, table.c.kind == kind, table.c.ts.is_not(None)
                    )
                )
            ).first()
            return None if row is None else (row.channel, row.ts)

    async def mark_approval_nudged(self, approval_id: str, *, escalated: bool) -> bool:
        """Record a reminder (or escalation) once; False if it was already recorded."""
        column = ApprovalRow.escalated_at if escalated else ApprovalRow.reminded_at
        async with self.core.transaction("mark approval nudged") as session:
            done = await session.execute(
                update(ApprovalRow)
                .where(ApprovalRow.id == approval_id, column.is_(None), ApprovalRow.status == Status.PENDING.value)
                .values({column.key: self.core.clock()})
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    async def pending_older_than(self, age: timedelta, *, escalated: bool) -> list[str]:
        """Pending ids created before now-age and not yet reminded (or escalated)."""
        column = ApprovalRow.escalated_at if escalated else ApprovalRow.reminded_at
        async with self.core.transaction("pending approvals", read_only=True) as session:
            rows = await session.execute(
                select(ApprovalRow.id).where(
                    ApprovalRow.status == Status.PENDING.value,
                    ApprovalRow.created_at <= self.core.clock() - age,
                    column.is_(None),
                )
            )
            return [r[0] for r in rows]

    # -- the directory ------------------------------------------------------------------------

    async def remember_principal(self, principal: Principal) -> None:
        """Upsert who authenticated, with the groups their token carried this time.

        Called on every OIDC-authenticated API request: an unchanged principal seen within
        the last minute is not written again."""
        email = principal.email.lower() if principal.email else None
        async with self.core.transaction("remember principal") as session:
            row = await session.get(PrincipalRow, principal.id)
            if (
                row is not None
                and row.last_seen > self.core.clock() - timedelta(minutes=1)
                and (row.kind, row.email, row.groups, row.owner, row.issuer)
                == (principal.kind, email, list(principal.groups), principal.owner, principal.issuer)
            ):
                return
            if row is None:
                row = PrincipalRow(id=principal.id)
                session.add(row)
            row.kind = principal.kind
            row.email = email
            row.groups = list(principal.groups)
            row.owner = principal.owner
            row.issuer = principal.issuer
            row.last_seen = self.core.clock()

    async def voter_for_email(self, email: str, *, via: str, max_age: timedelta) -> Voter | None:
        """The person with this email, as last seen through OIDC within `max_age`."""
        async with self.core.transaction("principal by email", read_only=True) as session:
            row = (
                await session.execute(
                    select(PrincipalRow)
                    .where(PrincipalRow.email == email.lower(), PrincipalRow.kind == "person")
                    .order_by(PrincipalRow.last_seen.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
        if row is None or row.last_seen < self.core.clock() - max_age:
            return None
        return Voter(row.id, tuple(row.groups), via)
