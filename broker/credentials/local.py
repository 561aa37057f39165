"""A local issuer for setups without Vault: one throw-away login role per session.

Through an admin connection it runs `CREATE ROLE jit_<role>_<hex> LOGIN PASSWORD ... VALID
UNTIL ... IN ROLE <member role>` and `ALTER ROLE ... SET role = <member role>`, so sessions run
as the member (group) role and what they create belongs to it, whichever session comes next.
At release, in one transaction, it ends the role's backends, gives what the role still owns to
its group (REASSIGN OWNED), drops what is left (DROP OWNED: privileges granted to it) and drops
the role; the same statements as Vault's (broker/credentials/statements.py). REASSIGN and DROP
OWNED act on the admin connection's database: `admin_dsn` must name the resource's database.
VALID UNTIL bounds the damage when nobody drops it (a crashed gateway): the login stops
working, and the reaper drops the role later. Identifiers and literals go through the
server's own `format('%I', '%L')`, so no name or password is ever spliced in Python.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from broker.credentials.base import Credential
from broker.credentials.settings import CredentialSettings
from broker.exceptions import CredentialError, CredentialSourceUnavailable

log = structlog.get_logger("jitgate.credentials")

LEASE_PREFIX = "local:"
_SAFE_ROLE = re.compile(r"[^a-z0-9_]")
_TIMEOUT = 10.0


class LocalIssuer:
    """Issues roles on the upstream itself; one instance per resource (one admin DSN)."""

    def __init__(self, resource: str, settings: CredentialSettings) -> None:
        assert settings.admin_dsn is not None
        self._resource = resource
        self._dsn = settings.admin_dsn.get_secret_value()
        self._roles = settings.roles
        self._ttl = settings.ttl_seconds

    async def acquire(self, *, resource: str, role: str, session_id: str) -> Credential:
        member_of = self._roles.get(role)
        if member_of is None:
            raise CredentialError(f"no database role is configured for grant role {role!r}")
        name = f"jit_{_SAFE_ROLE.sub('_', role.lower())[:20]}_{secrets.token_hex(6)}"
        password = secrets.token_urlsafe(32)
        valid_until = (datetime.now(UTC) + timedelta(seconds=self._ttl)).isoformat()
        async with self._admin("issue a credential") as conn:
            sql = await conn.fetchval(
                "SELECT format('CREATE ROLE %I WITH LOGIN PASSWORD %L VALID UNTIL %L IN ROLE %I',"
                " $1::text, $2::text, $3::text, $4::text)",
                name, password, valid_until, member_of,
            )
            await conn.execute(sql)
            sql = await conn.fetchval(
                "SELECT format('ALTER ROLE %I SET role = %L', $1::text, $2::text)", name, member_of
            )
            await conn.execute(sql)
        log.info("credential_issued", resource=resource, role=role, session_id=session_id, lease_id=LEASE_PREFIX + name)
        return Credential(
            username=name,
            password=password,
            resource=resource,
            role=role,
            lease_id=LEASE_PREFIX + name,
            lease_duration=self._ttl,
        )

    async def release(self, credential: Credential) -> None:
        if credential.lease_id:
            await self.revoke(credential.lease_id)

    async def revoke(self, lease_id: str) -> None:
        if not lease_id.startswith(LEASE_PREFIX):
            raise CredentialError("not a lease of the local issuer")
        name = lease_id.removeprefix(LEASE_PREFIX)
        async with self._admin("revoke a credential") as conn, conn.transaction():
            # A role with live backends can be dropped, but those backends would keep its
            # privileges until they disconnect: end them first (grant expiry, revocation).
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", name
            )
            if await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name):
                await self._disown(conn, name)
            sql = await conn.fetchval("SELECT format('DROP ROLE IF EXISTS %I', $1::text)", name)
            await conn.execute(sql)
        log.info("lease_revoked", lease_id=lease_id)

    async def _disown(self, conn: asyncpg.Connection, name: str) -> None:
        """Give what `name` owns to its group and drop what is left, so DROP ROLE succeeds."""
        group = await conn.fetchval(
            "SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 AND g.rolname = ANY($2::text[])"
            " ORDER BY 1 LIMIT 1",
            name, sorted(set(self._roles.values())),
        )
        if group is None:
            # Without its group, DROP OWNED would destroy what the sessions made: keep it all.
            raise CredentialError("the login is in none of the configured member roles, not dropping it")
        # A CREATEROLE admin that is not a superuser has ADMIN on the roles it made, not their
        # privileges, which REASSIGN OWNED and DROP OWNED need.
        for template in ("GRANT %I TO CURRENT_USER", "REASSIGN OWNED BY %I TO %I", "DROP OWNED BY %I"):
            sql = await conn.fetchval("SELECT format($1::text, $2::text, $3::text)", template, name, group)
            await conn.execute(sql)

    async def aclose(self) -> None:
        return None

    def _admin(self, action: str) -> _AdminConnection:
        return _AdminConnection(self._dsn, action)


class _AdminConnection:
    """A short-lived admin connection whose errors never quote the DSN or a statement."""

    def __init__(self, dsn: str, action: str) -> None:
        self._dsn = dsn
        self._action = action
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            self._conn = await asyncpg.connect(self._dsn, timeout=_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise CredentialSourceUnavailable(
                f"the admin connection is unavailable, cannot {self._action}", detail=type(exc).__name__
            ) from None
        return self._conn

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        assert self._conn is not None
        await self._conn.close()
        if isinstance(exc, asyncpg.PostgresError):
            # The statement text holds the password: report the SQLSTATE only.
            raise CredentialError(
                f"the upstream refused to {self._action}", detail=f"SQLSTATE {exc.sqlstate}"
            ) from None
