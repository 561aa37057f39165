"""Per-session upstream credentials end to end: a real proxy, real OpenBao, real PostgreSQL.

The gateway reaches OpenBao through a FlakyTcp proxy so that tests can take Vault away at
connect time and in the middle of a session.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from pydantic import SecretStr

from broker.config import ResourceSettings, UpstreamSettings
from broker.credentials.ledger import LeaseLedger
from broker.credentials.reaper import reap
from broker.credentials.settings import CredentialSettings
from broker.demo.seed import RW_ROLE, DemoRoles
from broker.demo.upstream import Upstream
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.openbao_fixture import TEST_TTL, FlakyTcp, VaultFixture, role_exists

pytestmark = pytest.mark.e2e


def _resource(upstream: Upstream, credentials: CredentialSettings) -> ResourceSettings:
    return ResourceSettings(
        upstream=UpstreamSettings(host=upstream.host, port=upstream.port, dbname="demo", sslmode="disable"),
        credentials=credentials,
    )


@pytest.fixture(scope="module")
def vault_path(openbao: VaultFixture) -> Iterator[FlakyTcp]:
    flaky = FlakyTcp("127.0.0.1", int(openbao.bao.address.rsplit(":", 1)[1]))
    yield flaky
    flaky.close()


@pytest.fixture(scope="module")
def dyn_gateway(
    upstream: Upstream, demo_roles: DemoRoles, openbao: VaultFixture, vault_path: FlakyTcp
) -> Iterator[Gateway]:
    extra = {
        "vault_demo": _resource(upstream, CredentialSettings(provider="vault")),
        "local_demo": _resource(
            upstream,
            CredentialSettings(
                provider="local", admin_dsn=SecretStr(upstream.dsn("postgres")), roles={"readwrite": RW_ROLE}
            ),
        ),
    }
    vault = openbao.settings(address=vault_path.address, timeout_seconds=1)
    with tempfile.TemporaryDirectory(prefix="jitgate-dyn-") as tmp:
        gw = start_gateway(upstream, demo_roles, Path(tmp), extra=extra, vault=vault)
        try:
            yield gw
        finally:
            stop_gateway(gw)


async def _gone(upstream: Upstream, role: str, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not await role_exists(upstream, role):
            return True
        await asyncio.sleep(0.05)
    return False


def _issued_passwords(gw: Gateway) -> list[str]:
    return [cred.password for cred, _ in gw.server.ctx.credentials._issued.values()]  # type: ignore[attr-defined]


async def test_vault_session_uses_and_revokes_a_dynamic_role(dyn_gateway: Gateway, upstream: Upstream) -> None:
    conn = await asyncpg.connect(dyn_gateway.dsn("vault_demo"))
    try:
        user = await conn.fetchval("select current_user")
        assert user.startswith("v-") and user != RW_ROLE  # Vault's generated name, not a standing login
        assert await role_exists(upstream, user)
        (lease_id,) = [c.lease_id for c, _ in dyn_gateway.server.ctx.credentials._issued.values()]  # type: ignore[attr-defined]
        # readwrite: SELECT, INSERT, UPDATE, DELETE through membership in demo_rw (rolled back).
        tr = conn.transaction()
        await tr.start()
        await conn.execute("insert into orders (customer_id, status, amount) values (1, 'x', 1)")
        await conn.execute("update orders set status = status where id = 1")
        await conn.execute("delete from orders where id = -1")
        await tr.rollback()
        # What the client is told about its session names the client's user, not the role.
        assert conn.get_settings().session_authorization == "agent"
    finally:
        await conn.close()
    assert await _gone(upstream, user), "the Vault role outlived its session"
    outstanding = await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(LeaseLedger(dyn_gateway.store).outstanding(), dyn_gateway.loop)
    )
    assert lease_id not in [lease.lease_id for lease in outstanding]


async def test_local_issuer_session(dyn_gateway: Gateway, upstream: Upstream) -> None:
    conn = await asyncpg.connect(dyn_gateway.dsn("local_demo"))
    try:
        user = await conn.fetchval("select current_user")
        assert user.startswith("jit_readwrite_")
        assert await conn.fetchval("select count(*) from customers") > 0
    finally:
        await conn.close()
    assert await _gone(upstream, user)


async def _vault_roles(upstream: Upstream) -> set[str]:
    conn = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        return {r[0] for r in await conn.fetch("select rolname from pg_roles where rolname like 'v-%'")}
    finally:
        await conn.close()


async def test_vault_down_at_connect_refuses_with_08006(
    dyn_gateway: Gateway, upstream: Upstream, vault_path: FlakyTcp
) -> None:
    before = await _vault_roles(upstream)
    vault_path.down()
    try:
        with pytest.raises(asyncpg.PostgresError) as err:
            await asyncpg.connect(dyn_gateway.dsn("vault_demo"))
    finally:
        vault_path.up()
    assert err.value.sqlstate == "08006"
    assert "cannot obtain a database credential" in str(err.value)
    assert "Vault is unreachable" in str(err.value)
    assert await _vault_roles(upstream) == before  # nothing was issued, nothing reached the upstream


async def test_vault_down_mid_session_keeps_the_session_and_reaps_later(
    dyn_gateway: Gateway, upstream: Upstream, vault_path: FlakyTcp
) -> None:
    conn = await asyncpg.connect(dyn_gateway.dsn("vault_demo"))
    manager = dyn_gateway.server.ctx.credentials.manager  # type: ignore[attr-defined]
    provider = manager.providers["vault_demo"]
    try:
        user = await conn.fetchval("select current_user")
        vault_path.down()
        # Past the renewal point (2/3 of the TTL), before the lease would lapse.
        await asyncio.sleep(TEST_TTL * 2 / 3 + 0.5)
        assert sum(provider.renewal_failures.values()) >= 1
        assert await conn.fetchval("select 1") == 1  # the session lives on
    finally:
        await conn.close()
    await asyncio.sleep(0.3)  # the proxy's release runs (and fails) after the client left
    vault_path.up()

    async def reap_now() -> tuple[int, list[str]]:
        assert manager.ledger is not None
        result = await reap(manager.ledger, manager.providers)
        return result.revoked, [lease.lease_id for lease in await manager.ledger.outstanding()]

    revoked, outstanding = dyn_gateway.call(reap_now())
    assert revoked >= 1 and outstanding == []
    assert await _gone(upstream, user)


async def test_no_secret_reaches_the_client_logs_or_store(dyn_gateway: Gateway, upstream: Upstream) -> None:
    with structlog.testing.capture_logs() as logs:
        conn = await asyncpg.connect(dyn_gateway.dsn("vault_demo", application_name="leak-scan"))
        try:
            user = await conn.fetchval("select current_user")
            (password,) = _issued_passwords(dyn_gateway)
            visible = [repr(conn.get_settings())]
            for sql in ("select 1/0", "select pg_read_file('/etc/passwd')", "select * from no_such_table"):
                try:
                    await conn.execute(sql)
                except asyncpg.PostgresError as exc:
                    visible.append(repr(exc.as_dict()))
        finally:
            await conn.close()
        assert await _gone(upstream, user)
    dyn_gateway.flush()
    store_file = Path(dyn_gateway.settings.store_url.get_secret_value().split("///", 1)[1])
    stored = await asyncio.to_thread(
        lambda: b"".join(p.read_bytes() for p in store_file.parent.glob(store_file.name + "*"))
    )
    for secret in (password, user):
        assert all(secret not in text for text in visible), "a secret reached the client"
        assert secret not in repr(logs), "a secret reached the logs"
        assert secret.encode() not in stored, "a secret reached the store"
