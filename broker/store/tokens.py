"""Gateway tokens: minted once, stored only as a SHA-256 digest, verified on every connect.

A token is `jgt_` followed by `secrets.token_urlsafe(32)` (256 random bits). The prefix lets
secret scanners and people recognise one; the digest in the store is useless to a reader of
the database. A token is bound to (principal, groups, resource, role, expiry) and is either
reusable until it expires or good for a single session: a single-session token is consumed
by its first successful `verify_token`, atomically, so two racing connects cannot both use it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import select, update

from broker.audit import events
from broker.exceptions import ExpiredToken, InvalidToken
from broker.store.audit import AuditRepository
from broker.store.base import StoreBase
from broker.store.models import GatewayToken
from broker.store.records import Grant, IssuedToken

TOKEN_PREFIX = "jgt_"  # noqa: S105 - a prefix, not a secret
_TOKEN_RE = re.compile(r"^jgt_[A-Za-z0-9_-]{32,128}$")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_like_token(value: str) -> bool:
    """Cheap shape check, done before touching the store."""
    return bool(_TOKEN_RE.match(value))


class TokenRepository:
    def __init__(self, core: StoreBase, audit: AuditRepository) -> None:
        self.core = core
        self._audit = audit

    async def issue_token(
        self,
        principal: str,
        groups: Iterable[str],
        resource: str,
        role: str,
        ttl: timedelta,
        reusable: bool = False,
        *,
        owner: str | None = None,
    ) -> IssuedToken:
        """Mint a token for a grant. The plaintext is returned here and nowhere else.

        `owner`: for an agent, the person it acts for; sessions and approvals show it."""
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        token = new_token()
        now = self.core.clock()
        row = GatewayToken(
            id=str(uuid.uuid4()),
            token_hash=hash_token(token),
            principal=principal,
            owner=owner,
            groups=list(groups),
            resource=resource,
            role=role,
            created_at=now,
            expires_at=now + ttl,
            reusable=reusable,
        )
        async with self.core.transaction("issue token") as session:
            await self._audit.lock(session)
            session.add(row)
            await self._audit.append(
                session,
                [
                    events.token_issued(
                        token_id=row.id,
                        principal=principal,
                        groups=row.groups,
                        resource=resource,
                        role=role,
                        expires_at=row.expires_at,
                        reusable=reusable,
                        owner=owner,
                    )
                ],
            )
        return IssuedToken(token_id=row.id, token=token, expires_at=row.expires_at)

    async def verify_token(self, token: str, resource: str) -> Grant:
        """Return the grant behind `token` for `resource`, or raise.

        Raises `InvalidToken` (reason: malformed, unknown, revoked, wrong_resource, used),
        `ExpiredToken`, or `StoreError` when the store cannot answer (fail closed).
        """
        if not looks_like_token(token):
            raise InvalidToken("not a gateway token", reason="malformed")
        digest = hash_token(token)
        # A read: a connect burst's verifications run side by side instead of queueing for
        # the write lock. Only a single-use token is then consumed, in a write of its own.
        async with self.core.transaction("verify token", read_only=True) as session:
            row = await session.scalar(
                select(GatewayToken).where(GatewayToken.token_hash == digest)
            )
            # The lookup is by digest; the constant-time comparison keeps the final
            # equality check free of timing differences whatever the index does.
            if row is None or not hmac.compare_digest(row.token_hash, digest):
                raise InvalidToken("unknown gateway token", reason="unknown")
            if row.revoked_at is not None:
                raise InvalidToken(f"gateway token {row.id} was revoked", reason="revoked", token_id=row.id)
            if row.resource != resource:
                raise InvalidToken(
                    f"gateway token {row.id} is for another resource", reason="wrong_resource", token_id=row.id
                )
            now = self.core.clock()
            if now >= row.expires_at:
                raise ExpiredToken(
                    f"gateway token {row.id} expired at {row.expires_at.isoformat()}", token_id=row.id
                )
        if not row.reusable:
            async with self.core.transaction("consume token") as session:
                # Atomic: of two connects racing with one token, one updates the row.
                consumed = await session.execute(
                    update(GatewayToken)
                    .where(
                        GatewayToken.id == row.id,
                        GatewayToken.used_at.is_(None),
                        GatewayToken.revoked_at.is_(None),
                    )
                    .values(used_at=now)
                )
                if consumed.rowcount != 1:  # type: ignore[attr-defined]
                    raise InvalidToken(
                        f"single-session gateway token {row.id} was already used", reason="used", token_id=row.id
                    )
        return Grant(
            token_id=row.id,
            principal=row.principal,
            groups=tuple(row.groups),
            resource=row.resource,
            role=row.role,
            expires_at=row.expires_at,
            reusable=row.reusable,
            owner=row.owner,
        )

    async def revoked_token_ids(self, token_ids: Iterable[str]) -> set[str]:
        """Which of `token_ids` are revoked: one query per 500 ids, for the proxy's periodic
        check that ends the open sessions of a revoked grant."""
        ids = list(dict.fromkeys(token_ids))
        revoked: set[str] = set()
        async with self.core.transaction("check revoked tokens") as session:
            for start in range(0, len(ids), 500):
                query = select(GatewayToken.id).where(
                    GatewayToken.id.in_(ids[start : start + 500]), GatewayToken.revoked_at.is_not(None)
                )
                revoked.update((await session.execute(query)).scalars())
        return revoked

    async def revoke_token(self, token_id: str) -> bool:
        """Revoke a token; True if it was live until now. Sessions already open are not cut."""
        async with self.core.transaction("revoke token") as session:
            await self._audit.lock(session)
            result = await session.execute(
                update(GatewayToken)
                .where(GatewayToken.id == token_id, GatewayToken.revoked_at.is_(None))
                .values(revoked_at=self.core.clock())
            )
            revoked = bool(result.rowcount)  # type: ignore[attr-defined]
            if revoked:
                await self._audit.append(session, [events.token_revoked(token_id=token_id)])
            return revoked
