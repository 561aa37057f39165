"""Per-session upstream credentials end to end: a real proxy, real OpenBao, real PostgreSQL.

The gateway reaches OpenBao through a FlakyTcp proxy so that tests can take Vault away at
connect time and in the middle of a session.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
import structlog
from pydantic import SecretStr

from broker.api.app import create_app
from broker.audit.export import render
from broker.config import ResourceSettings, UpstreamSettings
from broker.credentials.ledger import LeaseLedger
from broker.credentials.reaper import reap
from broker.credentials.settings import CredentialSettings
from broker.demo.seed import RW_ROLE, DemoRoles
from broker.demo.upstream import Upstream
from broker.identity.devissuer import DevIssuer, DevUser
from broker.identity.oidc import OIDCVerifier
from broker.identity.settings import AccessRuleSettings, AccessSettings, OidcIssuerSettings, OidcSettings
from broker.metrics import VAULT_ERRORS
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.openbao_fixture import TEST_TTL, FlakyTcp, VaultFixture, role_exists, vault_roles

pytestmark = pytest.mark.e2e


def _resource(upstream: Upstream, credentials: CredentialSettings, **kw: str) -> ResourceSettings:
    return ResourceSettings(
        upstream=UpstreamSettings(host=upstream.host, port=upstream.port, dbname="demo", sslmode="disable"),
        credentials=credentials,
        **kw,  # type: ignore[arg-type]
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
        # Policy out of the way (observe forwards everything): what is tested is ownership.
        "vault_observe": _resource(upstream, CredentialSettings(provider="vault"), policy="observe"),
        "local_demo": _resource(
            upstream,
            CredentialSettings(
                provider="local", admin_dsn=SecretStr(upstream.dsn("postgres")), roles={"readwrite": RW_ROLE}
            ),
        ),
        "local_observe": _resource(
            upstream,
            # The admin connection names the database sessions create objects in.
            CredentialSettings(
                provider="local", admin_dsn=SecretStr(upstream.dsn("demo")), roles={"readwrite": RW_ROLE}
            ),
            policy="observe",
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
        user = await conn.fetchval("select session_user")
        assert user.startswith("v-") and user != RW_ROLE  # Vault's generated name, not a standing login
        assert await conn.fetchval("select current_user") == RW_ROLE  # it runs as the resource's group
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
        asyncio.run_coroutine_threadsafe(LeaseLedger(dyn_gateway.store.audit).outstanding(), dyn_gateway.loop)
    )
    assert lease_id not in [lease.lease_id for lease in outstanding]


@pytest.fixture
async def agent_schema(upstream: Upstream) -> AsyncIterator[str]:
    """A schema where the readwrite group may create tables (the seed grants none on public)."""
    admin = await asyncpg.connect(upstream.dsn("demo"))
    try:
        await admin.execute(f"create schema agent_work; grant usage, create on schema agent_work to {RW_ROLE}")
        yield "agent_work"
    finally:
        await admin.execute("drop schema if exists agent_work cascade")
        await admin.close()


async def _owner(upstream: Upstream, table: str) -> str | None:
    conn = await asyncpg.connect(upstream.dsn("demo"))
    try:
        return await conn.fetchval("select tableowner from pg_tables where schemaname || '.' || tablename = $1", table)
    finally:
        await conn.close()


@pytest.mark.parametrize("resource", ["vault_observe", "local_observe"])
async def test_two_sessions_of_one_agent_see_one_owner(
    dyn_gateway: Gateway, upstream: Upstream, agent_schema: str, resource: str
) -> None:
    """Each session logs in as a fresh role, yet what session 1 creates belongs to the group,
    so session 2 may alter and drop it, and neither login outlives its session."""
    table = f"{agent_schema}.t"
    one = await asyncpg.connect(dyn_gateway.dsn(resource))
    try:
        login1, user1 = await one.fetchrow("select session_user, current_user")
        assert user1 == RW_ROLE  # sessions run as the group ...
        assert login1 != RW_ROLE  # ... logged in as their own role
        await one.execute(f"create table {table} (id int primary key, v text)")
        await one.execute(f"insert into {table} values (1, 'one')")
    finally:
        await one.close()
    assert await _owner(upstream, table) == RW_ROLE
    assert await _gone(upstream, login1), "session 1's login outlived it (a table it created blocks DROP ROLE?)"

    two = await asyncpg.connect(dyn_gateway.dsn(resource))
    try:
        login2 = await two.fetchval("select session_user")
        assert login2 != login1
        assert await two.fetch(f"select id, v from {table}") == [(1, "one")]
        await two.execute(f"insert into {table} values (2, 'two')")
        await two.execute(f"alter table {table} add column w int")
        await two.execute(f"create table {table}2 (id int)")  # left behind: must not block revocation
        await two.execute(f"drop table {table}")
    finally:
        await two.close()
    assert await _gone(upstream, login2), "session 2's login outlived it"
    assert await _owner(upstream, f"{table}2") == RW_ROLE


@pytest.mark.parametrize("resource", ["vault_observe", "local_observe"])
async def test_revocation_copes_with_objects_the_login_itself_owns(
    dyn_gateway: Gateway, upstream: Upstream, agent_schema: str, resource: str
) -> None:
    """A session that got out of the group (`SET ROLE NONE`, which agent-safe refuses and
    observe forwards) creates objects owned by its login: revocation gives them to the group
    and still drops the login."""
    conn = await asyncpg.connect(dyn_gateway.dsn(resource))
    try:
        login = await conn.fetchval("select session_user")
        await conn.execute("set role none")
        assert await conn.fetchval("select current_user") == login
        await conn.execute(f"create table {agent_schema}.mine (id int)")
        await conn.execute(f"grant select on {agent_schema}.mine to {RW_ROLE}")
    finally:
        await conn.close()
    assert await _gone(upstream, login), "the login outlived its session because it owned a table"
    assert await _owner(upstream, f"{agent_schema}.mine") == RW_ROLE


def test_agent_safe_keeps_sessions_in_the_group(dyn_gateway: Gateway) -> None:
    """Statements that would leave the group role are refused; those that return to the
    role's default (RESET ROLE, DISCARD ALL, SET SESSION AUTHORIZATION DEFAULT) stay in it."""
    with psycopg.connect(dyn_gateway.dsn("vault_demo"), autocommit=True) as conn:
        login = conn.execute("select session_user").fetchone()[0]  # type: ignore[index]
        for sql in ("set role none", f'set session authorization "{login}"',
                    "select set_config('role', 'none', false)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)  # type: ignore[arg-type]
        for sql in ("reset role", "set role to default", "discard all", "reset all",
                    "set session authorization default", "reset session authorization"):
            conn.execute(sql)  # type: ignore[arg-type]
            assert conn.execute("select current_user").fetchone() == (RW_ROLE,), sql


async def test_local_issuer_session(dyn_gateway: Gateway, upstream: Upstream) -> None:
    conn = await asyncpg.connect(dyn_gateway.dsn("local_demo"))
    try:
        user = await conn.fetchval("select session_user")
        assert user.startswith("jit_readwrite_")
        assert await conn.fetchval("select count(*) from customers") > 0
    finally:
        await conn.close()
    assert await _gone(upstream, user)


async def test_vault_down_at_connect_refuses_with_08006(
    dyn_gateway: Gateway, upstream: Upstream, vault_path: FlakyTcp
) -> None:
    before = await vault_roles(upstream)
    vault_path.down()
    try:
        with pytest.raises(asyncpg.PostgresError) as err:
            await asyncpg.connect(dyn_gateway.dsn("vault_demo"))
    finally:
        vault_path.up()
    assert err.value.sqlstate == "08006"
    assert "cannot obtain a database credential" in str(err.value)
    assert "Vault is unreachable" in str(err.value)
    assert await vault_roles(upstream) == before  # nothing was issued, nothing reached the upstream


async def test_vault_frozen_at_connect_refuses_in_bounded_time_and_leaves_no_lease(
    dyn_gateway: Gateway, upstream: Upstream, openbao: VaultFixture
) -> None:
    """OpenBao stopped (SIGSTOP), not gone: its port still accepts, nothing answers. The
    client gets 08006 once the gateway's wait (2 x timeout_seconds = 2 s) runs out, sessions
    on other resources keep working, and when Vault continues it leaves no lease or role."""
    before = await vault_roles(upstream)
    provider = dyn_gateway.server.ctx.credentials.manager.providers["vault_demo"]  # type: ignore[attr-defined]
    late = VAULT_ERRORS.labels("late")._value.get()
    other = await asyncpg.connect(dyn_gateway.dsn())  # a static-credential resource
    try:
        os.kill(openbao.bao.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            connecting = asyncio.ensure_future(asyncpg.connect(dyn_gateway.dsn("vault_demo"), timeout=15))
            await asyncio.sleep(0.5)
            assert await other.fetchval("select count(*) from customers") > 0  # not held up
            with pytest.raises(asyncpg.PostgresError) as err:
                await connecting
            assert time.monotonic() - started < 5
        finally:
            os.kill(openbao.bao.process.pid, signal.SIGCONT)
        assert err.value.sqlstate == "08006"
        assert "cannot obtain a database credential right now" in str(err.value)
        # Vault, continued, may still answer the abandoned request: then the gateway revokes that
        # late lease itself (counted, then revoked by a task of its own). Wait on that, not on a
        # wall-clock bound a loaded machine misses; a login seen meanwhile must have been revoked
        # by the gateway, not left to Vault's own expiry (TTL 4 s).
        deadline, settled = time.monotonic() + 20, time.monotonic() + 1
        seen: set[str] = set()
        while True:
            left = await vault_roles(upstream) - before
            seen |= left
            if not left and not provider._late and time.monotonic() > settled:
                break
            assert time.monotonic() < deadline, f"left behind: {left}"
            await asyncio.sleep(0.05)
        if seen:
            assert VAULT_ERRORS.labels("late")._value.get() > late, f"{seen} was not revoked by the gateway"
        conn = await asyncpg.connect(dyn_gateway.dsn("vault_demo"))  # Vault back: sessions work again
        try:
            assert await conn.fetchval("select session_user") not in before
        finally:
            await conn.close()
    finally:
        await other.close()  # (a failed assertion above must not leave it to later tests)


async def test_vault_down_mid_session_keeps_the_session_and_reaps_later(
    dyn_gateway: Gateway, upstream: Upstream, vault_path: FlakyTcp
) -> None:
    conn = await asyncpg.connect(dyn_gateway.dsn("vault_demo"))
    manager = dyn_gateway.server.ctx.credentials.manager  # type: ignore[attr-defined]
    provider = manager.providers["vault_demo"]
    try:
        user = await conn.fetchval("select session_user")
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
            user = await conn.fetchval("select session_user")
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


def test_access_request_and_vault_session_are_audited_without_secrets(
    dyn_gateway: Gateway, upstream: Upstream
) -> None:
    """Login, exchange, request (granted, pending, refused) and the lease's life are in the
    chain, the chain verifies, and the export holds no token, no upstream login or password."""
    gw = dyn_gateway
    dev = DevIssuer(
        "http://jitgate.test/dev-issuer", users={"alice": DevUser(groups=("ai-agents",), email="alice@example.com")}
    )
    settings = gw.settings.model_copy(
        update={
            "oidc": OidcSettings(issuers=[OidcIssuerSettings(issuer=dev.issuer, audience="jitgate")]),
            "access": AccessSettings(
                gateway_address=f"127.0.0.1:{gw.port}",
                rules=[
                    AccessRuleSettings(groups=["ai-agents"], resources=["vault_demo"], roles=["readwrite"],
                                       approval="auto", max_ttl="1h"),
                    AccessRuleSettings(groups=["ai-agents"], resources=["vault_demo"], roles=["admin"],
                                       approval="required", approvers=["dba"]),
                ],
            ),
        }
    )

    async def api(path: str, body: dict[str, str], bearer: str | None = None) -> httpx.Response:
        app = create_app(settings, gw.store, dev_issuer=dev)
        asgi = httpx.ASGITransport(app)
        app.state.oidc = OIDCVerifier(settings.oidc.issuers, http=httpx.AsyncClient(transport=asgi))
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        async with httpx.AsyncClient(transport=asgi, base_url="http://jitgate.test") as client:
            return await client.post(path, json=body, headers=headers)

    req = {"resource": "vault_demo", "role": "readwrite", "reason": "audit e2e"}
    granted = gw.call(api("/v1/access-requests", req, dev.mint("alice"))).json()
    assert granted["status"] == "granted", granted
    pending = gw.call(api("/v1/access-requests", {**req, "role": "admin"}, dev.mint("alice"))).json()
    assert pending["status"] == "pending", pending
    refused = gw.call(api("/v1/access-requests", {**req, "role": "superuser"}, dev.mint("alice")))
    assert refused.status_code == 403
    exchanged = gw.call(api("/v1/tokens/exchange", {**req, "subject_token": dev.mint("alice", kind="agent")}))
    assert exchanged.status_code == 201, exchanged.text
    bad = gw.call(api("/v1/tokens/exchange", {**req, "subject_token": "not-a-jwt"}))
    assert bad.status_code == 401

    token = granted["token"]
    with psycopg.connect(gw.dsn("vault_demo", token=token), sslmode="disable", connect_timeout=10) as conn:
        user = conn.execute("select session_user").fetchone()[0]  # type: ignore[index]
        (password,) = _issued_passwords(gw)
        time.sleep(TEST_TTL * 0.8)  # past the renewal point (2/3 of the TTL)
    assert gw.call(_gone(upstream, user))
    gw.flush()

    def lease_actions_of(records: list[dict[str, Any]]) -> list[str]:
        starts = [r for r in records if r["type"] == "session.start" and r["data"]["token_id"] == granted["token_id"]]
        assert len(starts) == 1, starts
        session_id = starts[0]["session_id"]
        return [r["type"] for r in records if r["type"].startswith("lease.") and r["session_id"] == session_id]

    async def export(within: float = 5.0) -> tuple[str, list[dict[str, Any]]]:
        # The lease's revocation is audited once Vault answers, just after the role is gone
        # upstream: read the chain until this session's lease.revoke is there (or give up, and
        # fail below). Other tests on this gateway revoke leases too, so look at this session's.
        deadline = time.monotonic() + within
        while True:
            text = "".join([chunk async for chunk in render(gw.store.audit.iter_audit(), "jsonl")])
            records = [json.loads(line) for line in text.splitlines()]
            if "lease.revoke" in lease_actions_of(records) or time.monotonic() > deadline:
                return text, records
            await asyncio.sleep(0.05)

    text, records = gw.call(export())
    assert gw.call(gw.store.audit.verify_audit()).ok
    lease_actions = lease_actions_of(records)
    assert lease_actions[0] == "lease.issue" and "lease.renew" in lease_actions and lease_actions[-1] == "lease.revoke"
    statuses = {
        r["data"]["status"] for r in records
        if r["type"] == "access.request" and r["actor"] == granted["principal"]
        and r["data"]["resource"] == "vault_demo"
    }
    assert {"granted", "pending", "denied"} <= statuses
    assert any(r["type"] == "access.grant" and r["data"]["token_id"] == granted["token_id"] for r in records)
    assert any(r["type"] == "auth.login" and r["actor"] == granted["principal"] for r in records)
    exchanges = [r["data"]["ok"] for r in records if r["type"] == "auth.token_exchange"]
    assert True in exchanges and False in exchanges
    for secret in (token, user, password):
        assert secret not in text, "a secret reached the audit export"


async def test_grant_expiry_mid_session_revokes_the_dynamic_role(dyn_gateway: Gateway, upstream: Upstream) -> None:
    token = await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(
            dyn_gateway.store.tokens.issue_token("agent:test", ["ai-agents"], "vault_demo", "readwrite",
                timedelta(seconds=2)),
            dyn_gateway.loop,
        )
    )
    conn = await asyncpg.connect(dyn_gateway.dsn("vault_demo", token=token.token))
    try:
        user = await conn.fetchval("select session_user")
        # The client keeps its connection open; the gateway ends it and revokes the lease.
        assert await _gone(upstream, user, within=6), "the Vault role outlived the grant"
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await conn.fetchval("select 1")
    finally:
        await conn.close()
