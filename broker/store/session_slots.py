"""Open sessions counted against the concurrent-session caps, shared by every proxy process.

Proxies on several hosts (or ``--workers N`` on one) serve the same agents, so a count kept
in one process would let an agent open N times its cap. Each admitted session holds a row
here: `admit_session` counts the live rows of the token and of the principal and inserts
one in the same transaction, serialised across processes (SQLite's write lock, taken by
``BEGIN IMMEDIATE``; a transaction-scoped advisory lock on PostgreSQL), so two connects
racing for the last slot cannot both win. Rows are leases: the holding process renews them
(`renew_session_slots`) and deletes them at session end (`release_session_slot`); the rows
of a process that died lapse at `expires_at` and are deleted by the next admission.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import timedelta
from typing import Any, Literal, cast

from sqlalchemy import Table, delete, func, select, text, update

from broker.store.base import StoreBase
from broker.store.models import SessionSlot

__all__ = ["SessionSlotRepository"]

# A transaction-scoped advisory lock key for admissions ("jitslot" in ASCII).
_PG_SLOT_LOCK_KEY = 0x6A6974736C6F74

Refusal = Literal["token", "agent"]


class SessionSlotRepository:
    def __init__(self, core: StoreBase) -> None:
        self.core = core

    async def admit_session(
        self,
        slot_id: str,
        *,
        token_id: str | None,
        principal: str,
        resource: str,
        per_token: int | None,
        per_principal: int | None,
        lease: timedelta,
    ) -> Refusal | None:
        """Take a slot for a new session, or say which cap is full ("token" or "agent");
        None for a cap means no cap. Expired slots (a dead process's) are dropped first."""
        table = cast(Table, SessionSlot.__table__)
        now = self.core.clock()
        async with self.core.transaction("admit a session") as session:
            if self.core.dialect == "postgresql":
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_SLOT_LOCK_KEY})
            await session.execute(delete(table).where(table.c.expires_at < now))
            if per_token is not None and token_id is not None:
                held = await session.scalar(select(func.count()).where(table.c.token_id == token_id))
                if int(held or 0) >= per_token:
                    return "token"
            if per_principal is not None:
                held = await session.scalar(select(func.count()).where(table.c.principal == principal))
                if int(held or 0) >= per_principal:
                    return "agent"
            await session.execute(
                table.insert().values(
                    slot_id=slot_id,
                    token_id=token_id,
                    principal=principal,
                    resource=resource,
                    started_at=now,
                    expires_at=now + lease,
                )
            )
        return None

    async def release_session_slot(self, slot_id: str) -> None:
        table = cast(Table, SessionSlot.__table__)
        async with self.core.transaction("release a session slot") as session:
            await session.execute(delete(table).where(table.c.slot_id == slot_id))

    async def renew_session_slots(self, slot_ids: Collection[str], lease: timedelta) -> int:
        """Extend the leases of these slots (one process's live sessions); how many exist."""
        if not slot_ids:
            return 0
        table = cast(Table, SessionSlot.__table__)
        async with self.core.transaction("renew session slots") as session:
            result: Any = await session.execute(
                update(table).where(table.c.slot_id.in_(list(slot_ids))).values(expires_at=self.core.clock() + lease)
            )
            return int(result.rowcount or 0)

    async def session_slots(self, *, token_id: str | None = None, principal: str | None = None) -> int:
        """Live slots of a token or a principal (expired ones not counted)."""
        table = cast(Table, SessionSlot.__table__)
        query = select(func.count()).where(table.c.expires_at >= self.core.clock())
        if token_id is not None:
            query = query.where(table.c.token_id == token_id)
        if principal is not None:
            query = query.where(table.c.principal == principal)
        async with self.core.transaction("count session slots", read_only=True) as session:
            return int(await session.scalar(query) or 0)
