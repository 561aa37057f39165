"""Proxy sessions and the statements recorded in them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, case, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from broker.audit import events
from broker.store.audit import AuditRepository
from broker.store.base import enum_value
from broker.store.models import Session, Statement
from broker.store.records import (
    Grant,
    SessionDetail,
    SessionInfo,
    SessionStats,
    StatementInfo,
    StatementRecord,
)


class SessionRepository(AuditRepository):
    async def start_session(
        self,
        grant: Grant,
        *,
        client_addr: str | None = None,
        application_name: str | None = None,
        intent: str | None = None,
    ) -> str:
        """Record a session's start and return its id (a UUID string)."""
        row = Session(
            id=str(uuid.uuid4()),
            token_id=grant.token_id,
            principal=grant.principal,
            groups=list(grant.groups),
            resource=grant.resource,
            role=grant.role,
            client_addr=client_addr,
            application_name=application_name,
            intent=intent,
            started_at=self.clock(),
            statements=0,
            bytes_in=0,
            bytes_out=0,
        )
        async with self.transaction("start session") as session:
            await self._lock_audit(session)
            session.add(row)
            await self._append_audit(
                session,
                [
                    events.session_started(
                        session_id=row.id,
                        principal=grant.principal,
                        groups=grant.groups,
                        resource=grant.resource,
                        role=grant.role,
                        token_id=grant.token_id,
                        client_addr=client_addr,
                        application_name=application_name,
                        intent=intent,
                    )
                ],
            )
        return row.id

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        """Insert a batch of statements in one transaction.

        Idempotent: a record whose `(session_id, seq)` is already stored is skipped, so a
        batch retried after an ambiguous failure is not duplicated. A record for an unknown
        session raises `StoreIntegrityError` and nothing of the batch is written.

        Each statement written gets its audit record in the same transaction; a skipped
        duplicate gets none, so a retried batch leaves one audit record per statement.
        """
        if not records:
            return
        insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
        # The table, not the ORM entity: a plain Core executemany, several times cheaper
        # than the ORM bulk path for the proxy's steady stream of small batches.
        table = cast(Table, Statement.__table__)
        stmt = insert(table).on_conflict_do_nothing(
            index_elements=["session_id", "seq"]
        )
        async with self.transaction("record statements") as session:
            # The audit lock also serialises racing retries of one batch on PostgreSQL, so
            # the "already stored" check below cannot go stale before the insert.
            await self._lock_audit(session)
            stored = await _stored_keys(session, records)
            fresh: list[StatementRecord] = []
            for r in records:
                key = (r.session_id, r.seq)
                if key not in stored:
                    stored.add(key)
                    fresh.append(r)
            if not fresh:
                return
            await session.execute(stmt, [_statement_values(r) for r in fresh])
            # Who ran it and from where, so each audit record stands on its own in an export.
            owners = {
                sid: (principal, addr)
                for sid, principal, addr in await session.execute(
                    select(Session.id, Session.principal, Session.client_addr).where(
                        Session.id.in_({r.session_id for r in fresh})
                    )
                )
            }
            await self._append_audit(
                session, [_statement_event(r, *owners.get(r.session_id, (None, None))) for r in fresh]
            )

    async def end_session(
        self, session_id: str, *, reason: str, stats: SessionStats | None = None
    ) -> bool:
        """Mark a session ended; True if this call ended it (later calls change nothing).

        Without `stats`, the statement count is taken from the recorded statements.
        """
        values: dict[str, Any] = {"ended_at": self.clock(), "end_reason": reason}
        if stats is not None:
            values.update(
                statements=stats.statements, bytes_in=stats.bytes_in, bytes_out=stats.bytes_out
            )
        else:
            values["statements"] = _recorded_count()
        async with self.transaction("end session") as session:
            await self._lock_audit(session)
            result = await session.execute(
                update(Session)
                .where(Session.id == session_id, Session.ended_at.is_(None))
                .values(**values)
            )
            ended = bool(result.rowcount)  # type: ignore[attr-defined]
            if ended:
                event = events.session_ended(
                    session_id=session_id,
                    reason=reason,
                    statements=None if stats is None else stats.statements,
                    bytes_in=None if stats is None else stats.bytes_in,
                    bytes_out=None if stats is None else stats.bytes_out,
                )
                await self._append_audit(session, [event])
            return ended

    async def list_sessions(
        self,
        *,
        active_only: bool = False,
        limit: int = 100,
        started_before: datetime | None = None,
    ) -> list[SessionInfo]:
        """Sessions, newest first. `started_before` pages backwards through older ones."""
        query = _session_query().order_by(Session.started_at.desc(), Session.id.desc())
        if active_only:
            query = query.where(Session.ended_at.is_(None))
        if started_before is not None:
            query = query.where(Session.started_at < started_before)
        async with self.transaction("list sessions") as session:
            result = await session.execute(query.limit(limit))
            return [_session_info(row, count) for row, count in result]

    async def get_session(self, session_id: str) -> SessionDetail | None:
        """A session with its statements in order, or None if there is no such session."""
        async with self.transaction("get session") as session:
            found = (
                await session.execute(_session_query().where(Session.id == session_id))
            ).first()
            if found is None:
                return None
            statements = await session.scalars(
                select(Statement).where(Statement.session_id == session_id).order_by(Statement.seq)
            )
            return SessionDetail(
                session=_session_info(found[0], found[1]),
                statements=tuple(_statement_info(s) for s in statements),
            )


async def _stored_keys(session: AsyncSession, records: Sequence[StatementRecord]) -> set[tuple[str, int]]:
    """Which `(session_id, seq)` of the batch are already stored (a coarse IN, exact here)."""
    sids = {r.session_id for r in records}
    seqs = {r.seq for r in records}
    rows = await session.execute(
        select(Statement.session_id, Statement.seq).where(
            Statement.session_id.in_(sids), Statement.seq.in_(seqs)
        )
    )
    return {(sid, seq) for sid, seq in rows}


def _statement_event(
    r: StatementRecord, principal: str | None, client_addr: str | None
) -> events.AuditEvent:
    return events.statement(
        principal=principal,
        client_addr=client_addr,
        session_id=r.session_id,
        seq=r.seq,
        sql=r.sql,
        decision=enum_value(r.decision),
        started_at=r.started_at,
        fingerprint=r.fingerprint,
        rule=r.rule,
        reason=r.reason,
        shadow_decision=None if r.shadow_decision is None else enum_value(r.shadow_decision),
        duration_ms=r.duration_ms,
        rows=r.rows,
        masked_values=r.masked_values,
        error_sqlstate=r.error_sqlstate,
    )


def _recorded_count() -> Any:
    return (
        select(func.count())
        .select_from(Statement)
        .where(Statement.session_id == Session.id)
        .correlate(Session)
        .scalar_subquery()
    )


def _session_query() -> Any:
    # A live session's counter is only written at its end; count what has been recorded.
    count = case((Session.ended_at.is_(None), _recorded_count()), else_=Session.statements)
    return select(Session, count)


def _statement_values(r: StatementRecord) -> dict[str, Any]:
    return {
        "session_id": r.session_id,
        "seq": r.seq,
        "sql": r.sql,
        "fingerprint": r.fingerprint,
        "decision": enum_value(r.decision),
        "rule": r.rule,
        "reason": r.reason,
        "shadow_decision": None if r.shadow_decision is None else enum_value(r.shadow_decision),
        "started_at": r.started_at,
        "duration_ms": r.duration_ms,
        "rows": r.rows,
        "masked_values": r.masked_values,
        "error_sqlstate": r.error_sqlstate,
        "results": r.results,
    }


def _session_info(row: Session, statements: int) -> SessionInfo:
    return SessionInfo(
        id=row.id,
        token_id=row.token_id,
        principal=row.principal,
        groups=tuple(row.groups),
        resource=row.resource,
        role=row.role,
        client_addr=row.client_addr,
        application_name=row.application_name,
        intent=row.intent,
        started_at=row.started_at,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
        statements=int(statements),
        bytes_in=row.bytes_in,
        bytes_out=row.bytes_out,
    )


def _statement_info(s: Statement) -> StatementInfo:
    return StatementInfo(
        seq=s.seq,
        sql=s.sql,
        fingerprint=s.fingerprint,
        decision=s.decision,
        rule=s.rule,
        reason=s.reason,
        shadow_decision=s.shadow_decision,
        started_at=s.started_at,
        duration_ms=s.duration_ms,
        rows=s.rows,
        masked_values=s.masked_values,
        error_sqlstate=s.error_sqlstate,
        results=s.results,
    )
