"""The audit log in the store: appends serialised across processes, reads in chunks.

Appends happen inside the caller's transaction (`_append_audit`), so a session row, a batch
of statements or a token and their audit records commit or roll back together. Serialising:
SQLite transactions here start with `BEGIN IMMEDIATE` and so already hold the database's
single write lock; PostgreSQL takes a transaction-scoped advisory lock before reading the
head. Either way each append reads the head, chains onto it and moves it, and two
processes appending at once make one chain.

Reads (`iter_audit`) use keyset pagination by `seq`, one short transaction per chunk, so
verification and exports run in constant memory and never hold a long read transaction.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Row, Table, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from broker.audit.archive import ArchiveSummary, write_archive
from broker.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    Break,
    ChainVerifier,
    CheckpointCheck,
    VerifyReport,
    seal,
)
from broker.audit.events import AuditEvent, audit_pruned
from broker.audit.signing import checkpoint_event
from broker.store.base import StoreBase
from broker.store.models import AuditEventRow, AuditState

# "jitaudit" in ASCII; distinct from the migration lock.
_PG_AUDIT_LOCK_KEY = 0x6A69746175646974
_STATE_ID = 1
DEFAULT_CHUNK = 1000
# Core, not ORM, for the rows: several times cheaper for bulk inserts and chunked reads.
_EVENTS: Table = AuditEventRow.__table__  # type: ignore[assignment]


class AuditRepository(StoreBase):
    async def _lock_audit(self, session: AsyncSession) -> None:
        """Take the append lock first thing in a transaction that will append (lock order)."""
        if self.dialect == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_AUDIT_LOCK_KEY})

    async def _append_audit(self, session: AsyncSession, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Chain `events` onto the head within `session`'s transaction (lock already held)."""
        if not events:
            return []
        state = await session.get(AuditState, _STATE_ID)
        if state is None:
            state = AuditState(
                id=_STATE_ID, head_seq=0, head_hash=GENESIS_HASH, anchor_seq=0, anchor_hash=GENESIS_HASH
            )
            session.add(state)
        prev_seq, prev_hash = state.head_seq, state.head_hash
        records: list[AuditRecord] = []
        now = self.clock()
        for event in events:
            record = seal(
                seq=prev_seq + 1,
                id=str(uuid.uuid4()),
                ts=now,
                type=event.type,
                actor=event.actor,
                session_id=event.session_id,
                data=event.data,
                prev_hash=prev_hash,
            )
            records.append(record)
            prev_seq, prev_hash = record.seq, record.hash
        await session.execute(
            insert(_EVENTS),
            [
                {
                    "seq": r.seq,
                    "id": r.id,
                    "ts": r.ts,
                    "type": r.type,
                    "actor": r.actor,
                    "session_id": r.session_id,
                    "data": r.data,
                    "prev_hash": r.prev_hash,
                    "hash": r.hash,
                }
                for r in records
            ],
        )
        state.head_seq, state.head_hash = prev_seq, prev_hash
        if self.audit_listeners:
            session.info.setdefault("audit_appended", []).extend(records)
        return records

    async def append_audit(self, *events: AuditEvent) -> list[AuditRecord]:
        """Append events on their own (for events with no row of their own to commit with)."""
        async with self.transaction("append audit") as session:
            await self._lock_audit(session)
            return await self._append_audit(session, events)

    async def audit_state(self) -> AuditState | None:
        async with self.transaction("read audit head") as session:
            state = await session.get(AuditState, _STATE_ID)
            if state is not None:
                session.expunge(state)
            return state

    async def iter_audit(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> AsyncIterator[AuditRecord]:
        """Records in seq order, filtered by seq range and `since <= ts < until`."""
        last = (from_seq - 1) if from_seq is not None else None
        while True:
            query = select(_EVENTS).order_by(_EVENTS.c.seq).limit(chunk)
            if last is not None:
                query = query.where(_EVENTS.c.seq > last)
            if to_seq is not None:
                query = query.where(_EVENTS.c.seq <= to_seq)
            if since is not None:
                query = query.where(_EVENTS.c.ts >= since)
            if until is not None:
                query = query.where(_EVENTS.c.ts < until)
            async with self.transaction("read audit") as session:
                batch = [_record(r) for r in await session.execute(query)]
            for record in batch:
                yield record
            if len(batch) < chunk:
                return
            last = batch[-1].seq

    async def count_audit(self, *, since: datetime | None = None, until: datetime | None = None) -> int:
        query = select(func.count()).select_from(_EVENTS)
        if since is not None:
            query = query.where(_EVENTS.c.ts >= since)
        if until is not None:
            query = query.where(_EVENTS.c.ts < until)
        async with self.transaction("count audit") as session:
            return int(await session.scalar(query) or 0)

    async def checkpoint_audit(self, key: Ed25519PrivateKey) -> AuditRecord | None:
        """Append a signed checkpoint over the current head; None if the chain is empty."""
        async with self.transaction("checkpoint audit") as session:
            await self._lock_audit(session)
            state = await session.get(AuditState, _STATE_ID)
            if state is None or state.head_seq == 0:
                return None
            event = checkpoint_event(key, seq=state.head_seq, hash_=state.head_hash)
            (record,) = await self._append_audit(session, [event])
            return record

    async def verify_audit(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        checkpoints: CheckpointCheck | None = None,
    ) -> VerifyReport:
        """Walk the chain (or a seq range of it) and report the first break.

        A whole-chain check starts from the retention anchor and ends at the stored head; a
        range starts from the record before it (trusted, not re-checked) and ends at `to_seq`.
        """
        state = await self.audit_state()
        anchor_seq = state.anchor_seq if state is not None else 0
        anchor_hash = state.anchor_hash if state is not None else GENESIS_HASH
        whole = to_seq is None
        head = (state.head_seq, state.head_hash) if state is not None and whole else None
        start = max(from_seq or 0, anchor_seq + 1)
        if start <= anchor_seq + 1:
            verifier = ChainVerifier(
                prev_hash=anchor_hash, prev_seq=anchor_seq, head=head, checkpoints=checkpoints
            )
        else:
            prev = await self._audit_record(start - 1)
            verifier = ChainVerifier(
                prev_hash=prev.hash if prev else None, prev_seq=start - 1, head=head, checkpoints=checkpoints
            )
        async for record in self.iter_audit(from_seq=start, to_seq=to_seq, chunk=chunk):
            if verifier.feed(record) is not None:
                break
        if state is None and whole and verifier.checked and verifier.broken is None:
            # Records without a head: the head row itself was removed.
            verifier.broken = Break(verifier.last_seq + 1, None, "truncated", "the chain head record is missing")
        head_now = None
        if whole and verifier.broken is None:
            after = await self.audit_state()
            head_now = after.head_seq if after is not None else 0
        return verifier.finish(head_now=head_now)

    async def prune_audit(self, *, before: datetime, archive_dir: Path) -> ArchiveSummary | None:
        """Archive records older than `before` to a JSONL.gz file, then delete them.

        Only a prefix of the chain goes (up to the last record older than `before`); the
        archive is written and checked first, then one transaction deletes the records,
        moves the anchor to the last one archived and appends an `audit.prune` record. If
        another prune ran meanwhile (the anchor moved), nothing is deleted. Returns None
        when nothing is old enough.
        """
        state = await self.audit_state()
        if state is None:
            return None
        async with self.transaction("find audit cut") as session:
            through = await session.scalar(
                select(func.max(_EVENTS.c.seq)).where(_EVENTS.c.ts < before, _EVENTS.c.seq > state.anchor_seq)
            )
        if through is None:
            return None
        # An admin operation, not the data path: the file I/O may block this loop briefly.
        await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
        path = archive_dir / f"audit-{state.anchor_seq + 1:012d}-{through:012d}.jsonl.gz"
        summary = await write_archive(
            path,
            self.iter_audit(from_seq=state.anchor_seq + 1, to_seq=through),
            prev_seq=state.anchor_seq,
            prev_hash=state.anchor_hash,
        )
        async with self.transaction("prune audit") as session:
            await self._lock_audit(session)
            current = await session.get(AuditState, _STATE_ID)
            if current is None or current.anchor_seq != state.anchor_seq:
                await asyncio.to_thread(path.unlink, missing_ok=True)
                return None
            await session.execute(
                delete(_EVENTS).where(_EVENTS.c.seq > state.anchor_seq, _EVENTS.c.seq <= through)
            )
            current.anchor_seq, current.anchor_hash = summary.through_seq, summary.through_hash
            await self._append_audit(
                session,
                [
                    audit_pruned(
                        archive=path.name,
                        through_seq=summary.through_seq,
                        through_hash=summary.through_hash,
                        records=summary.records,
                    )
                ],
            )
        return summary

    async def _audit_record(self, seq: int) -> AuditRecord | None:
        async with self.transaction("read audit") as session:
            row = (await session.execute(select(_EVENTS).where(_EVENTS.c.seq == seq))).first()
            return None if row is None else _record(row)


def _record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        id=row.id,
        ts=row.ts,
        type=row.type,
        actor=row.actor,
        session_id=row.session_id,
        data=dict(row.data),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
