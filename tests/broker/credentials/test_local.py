"""The local issuer against the real embedded PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest
from pydantic import SecretStr

from broker.credentials.local import LocalIssuer
from broker.credentials.settings import CredentialSettings
from broker.demo.seed import RO_ROLE, RW_ROLE
from broker.demo.upstream import Upstream
from broker.exceptions import CredentialError, CredentialSourceUnavailable
from tests.conftest import free_port
from tests.openbao_fixture import role_exists


def _issuer(dsn: str) -> LocalIssuer:
    conf = CredentialSettings(
        provider="local", admin_dsn=SecretStr(dsn), roles={"readwrite": RW_ROLE, "readonly": RO_ROLE}, ttl_seconds=60
    )
    return LocalIssuer("demo", conf)


async def test_issue_login_membership_and_drop(upstream: Upstream) -> None:
    issuer = _issuer(upstream.dsn("postgres"))
    cred = await issuer.acquire(resource="demo", role="readonly", session_id="s1")
    assert cred.username.startswith("jit_readonly_") and cred.lease_id == f"local:{cred.username}"
    conn = await asyncpg.connect(host=upstream.host, port=upstream.port, user=cred.username,
                                 password=cred.password, database="demo")
    try:
        assert await conn.fetchval("select count(*) from customers") > 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # readonly: member of demo_ro only
            await conn.execute("delete from orders where id = -1")
        valid_until = await conn.fetchval("select rolvaliduntil from pg_roles where rolname = session_user")
        assert valid_until is not None
        # Release ends the role's backends first, so a revoked credential stops working now.
        await issuer.release(cred)
        with pytest.raises((asyncpg.PostgresError, ConnectionError, asyncpg.InterfaceError)):
            await conn.fetchval("select 1")
    finally:
        await conn.close()
    assert not await role_exists(upstream, cred.username)
    await issuer.revoke(cred.lease_id)  # idempotent


async def test_unmapped_role_and_unreachable_admin(upstream: Upstream) -> None:
    with pytest.raises(CredentialError):
        await _issuer(upstream.dsn("postgres")).acquire(resource="demo", role="admin", session_id="s2")
    down = _issuer(f"postgresql://postgres:pw@127.0.0.1:{free_port()}/postgres")
    with pytest.raises(CredentialSourceUnavailable) as err:
        await down.acquire(resource="demo", role="readwrite", session_id="s3")
    assert "pw" not in f"{err.value} {err.value.detail}"
