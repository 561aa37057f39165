"""The lease ledger: which credentials are out, in the store, so another process can revoke them.

A row is written when a credential is issued, its expiry moved on each renewal, and
`revoked_at` set once revocation succeeded. It holds lease ids, never user names or
passwords (a Vault lease id names the role path, not the generated login).

Each of these writes appends its `lease.issue|renew|revoke` audit record in the same
transaction, so the trail and the ledger cannot disagree, whichever process (session,
renewal loop, reaper) did the work. That is why the ledger is given the store's audit
repository (`LeaseLedger(store.audit)`): its transactions are the store's, under the audit lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from broker.audit import events
from broker.credentials.base import Credential
from broker.store.audit import AuditRepository
from broker.store.models import Lease, Session


@dataclass(frozen=True, slots=True)
class OutstandingLease:
    lease_id: str
    resource: str
    session_id: str
    expires_at: datetime
    attempts: int


class LeaseLedger:
    def __init__(self, audit: AuditRepository) -> None:
        self._audit = audit
        self._core = audit.core

    async def issued(self, credential: Credential, *, session_id: str) -> None:
        assert credential.lease_id is not None
        now = self._core.clock()
        async with self._core.transaction("record a lease") as db:
            await self._audit.lock(db)  # lock order: the audit lock first
            db.add(
                Lease(
                    lease_id=credential.lease_id,
                    resource=credential.resource,
                    role=credential.role,
                    session_id=session_id,
                    issued_at=now,
                    expires_at=now + timedelta(seconds=credential.lease_duration),
                    attempts=0,
                )
            )
            await self._audit.append(
                db,
                [
                    events.lease(
                        action="issue", lease_id=credential.lease_id, resource=credential.resource,
                        role=credential.role, session_id=session_id, ttl_seconds=credential.lease_duration,
                    )
                ],
            )

    async def renewed(self, lease_id: str, expires_at: datetime) -> None:
        async with self._core.transaction("renew a lease") as db:
            await self._audit.lock(db)
            row = await db.get(Lease, lease_id)
            if row is None or row.revoked_at is not None:
                return
            ttl = (expires_at - self._core.clock()).total_seconds()
            row.expires_at = expires_at
            await self._audit.append(
                db,
                [
                    events.lease(
                        action="renew", lease_id=lease_id, resource=row.resource, role=row.role,
                        session_id=row.session_id, ttl_seconds=round(ttl, 3),
                    )
                ],
            )

    async def revoked(self, lease_id: str) -> None:
        async with self._core.transaction("mark a lease revoked") as db:
            await self._audit.lock(db)
            row = await db.get(Lease, lease_id)
            if row is None or row.revoked_at is not None:
                return  # audited once, by whoever revoked it first
            row.revoked_at = self._core.clock()
            await self._audit.append(
                db,
                [
                    events.lease(
                        action="revoke", lease_id=lease_id, resource=row.resource, role=row.role,
                        session_id=row.session_id,
                    )
                ],
            )

    async def failed(self, lease_id: str) -> None:
        async with self._core.transaction("count a failed revocation") as db:
            await db.execute(update(Lease).where(Lease.lease_id == lease_id).values(attempts=Lease.attempts + 1))

    async def due(self, *, now: datetime | None = None) -> list[OutstandingLease]:
        """Unrevoked leases whose session has ended (or never was recorded) or that lapsed."""
        now = now or self._core.clock()
        query = (
            select(Lease)
            .outerjoin(Session, Session.id == Lease.session_id)
            .where(Lease.revoked_at.is_(None))
            .where(or_(Session.id.is_(None), Session.ended_at.is_not(None), Lease.expires_at < now))
            .order_by(Lease.issued_at)
        )
        async with self._core.transaction("list outstanding leases") as db:
            rows = (await db.execute(query)).scalars().all()
        return [OutstandingLease(r.lease_id, r.resource, r.session_id, r.expires_at, r.attempts) for r in rows]

    async def outstanding(self) -> list[OutstandingLease]:
        async with self._core.transaction("list outstanding leases") as db:
            rows = (await db.execute(select(Lease).where(Lease.revoked_at.is_(None)))).scalars().all()
        return [OutstandingLease(r.lease_id, r.resource, r.session_id, r.expires_at, r.attempts) for r in rows]
