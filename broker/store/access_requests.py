"""Access requests: who asked for which role on which resource, why, and the outcome.

A granted request names the gateway token minted for it by `issue_token` (which audits the
issue); `broker.identity.grants.request_access` does both in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from broker.audit import events
from broker.store.audit import AuditRepository
from broker.store.base import StoreBase
from broker.store.models import AccessRequest, GatewayToken

# approved: an approver said yes and the requester has not collected the token yet.
STATUSES = ("pending", "approved", "granted", "denied", "expired", "cancelled")


@dataclass(frozen=True, slots=True)
class AccessRequestInfo:
    id: str
    principal: str
    groups: tuple[str, ...]
    resource: str
    role: str
    reason: str
    ttl: timedelta
    reusable: bool
    approvers: tuple[str, ...]
    status: str
    token_id: str | None
    created_at: datetime
    decided_at: datetime | None
    expires_at: datetime | None = None  # of the granted token


@dataclass(frozen=True, slots=True)
class TokenOwner:
    token_id: str
    principal: str
    revoked: bool


def _info(row: AccessRequest, expires_at: datetime | None) -> AccessRequestInfo:
    return AccessRequestInfo(
        id=row.id,
        principal=row.principal,
        groups=tuple(row.groups),
        resource=row.resource,
        role=row.role,
        reason=row.reason,
        ttl=timedelta(seconds=row.ttl_seconds),
        reusable=row.reusable,
        approvers=tuple(row.approvers),
        status=row.status,
        token_id=row.token_id,
        created_at=row.created_at,
        decided_at=row.decided_at,
        expires_at=expires_at,
    )


class AccessRequestRepository:
    def __init__(self, core: StoreBase, audit: AuditRepository) -> None:
        self.core = core
        self._audit = audit

    async def create_access_request(
        self,
        *,
        principal: str,
        groups: Iterable[str],
        resource: str,
        role: str,
        reason: str,
        ttl: timedelta,
        reusable: bool,
        status: str,
        approvers: Iterable[str] = (),
        token_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> AccessRequestInfo:
        """Record a request; a granted one names the token already issued for it."""
        if status not in STATUSES:
            raise ValueError(f"unknown access request status {status!r}")
        if (status == "granted") != (token_id is not None):
            raise ValueError("a granted request, and only a granted one, names its token")
        now = self.core.clock()
        row = AccessRequest(
            id=str(uuid.uuid4()),
            principal=principal,
            groups=list(groups),
            resource=resource,
            role=role,
            reason=reason,
            ttl_seconds=max(1, int(ttl.total_seconds())),
            reusable=reusable,
            approvers=list(approvers),
            status=status,
            token_id=token_id,
            created_at=now,
            decided_at=None if status == "pending" else now,
        )
        # The request and its audit records commit together: a refused request is audited
        # as much as a granted one, and no record claims a request that was never stored.
        audit = [
            events.access_requested(
                request_id=row.id, principal=principal, resource=resource, role=role, reason=reason,
                ttl_seconds=row.ttl_seconds, status=status,
            )
        ]
        if token_id is not None:
            audit.append(
                events.access_granted(
                    request_id=row.id, principal=principal, resource=resource, role=role, token_id=token_id
                )
            )
        async with self.core.transaction("create access request") as session:
            await self._audit.lock(session)
            session.add(row)
            await self._audit.append(session, audit)
        return _info(row, expires_at)

    async def get_access_request(self, request_id: str) -> AccessRequestInfo | None:
        async with self.core.transaction("get access request", read_only=True) as session:
            found = (
                await session.execute(
                    select(AccessRequest, GatewayToken.expires_at)
                    .outerjoin(GatewayToken, GatewayToken.id == AccessRequest.token_id)
                    .where(AccessRequest.id == request_id)
                )
            ).first()
            if found is None:
                return None
            return _info(found[0], found[1])

    async def token_owner(self, token_id: str) -> TokenOwner | None:
        """Who holds a gateway token (for deciding who may revoke it)."""
        async with self.core.transaction("token owner", read_only=True) as session:
            row = await session.get(GatewayToken, token_id)
            if row is None:
                return None
            return TokenOwner(row.id, row.principal, row.revoked_at is not None)

    async def mark_access_request_granted(self, request_id: str, *, token_id: str) -> AccessRequestInfo | None:
        """approved → granted, naming the token; None if it was not `approved` any more."""
        async with self.core.transaction("grant access request") as session:
            await self._audit.lock(session)
            done = await session.execute(
                update(AccessRequest)
                .where(AccessRequest.id == request_id, AccessRequest.status == "approved")
                .values(status="granted", token_id=token_id)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = await session.get(AccessRequest, request_id)
            assert row is not None
            await self._audit.append(
                session,
                [
                    events.access_granted(
                        request_id=row.id, principal=row.principal, resource=row.resource, role=row.role,
                        token_id=token_id,
                    )
                ],
            )
            return _info(row, None)
