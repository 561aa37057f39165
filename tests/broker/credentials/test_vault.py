"""VaultProvider against a real OpenBao dev server and the real embedded PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from broker.credentials.settings import CredentialSettings
from broker.credentials.vault import VaultProvider
from broker.demo.seed import RW_ROLE
from broker.demo.upstream import Upstream
from broker.exceptions import CredentialError, CredentialSourceUnavailable
from tests.conftest import free_port
from tests.openbao_fixture import TEST_TTL, FlakyTcp, VaultFixture, role_exists

RESOURCES = {"demo": CredentialSettings(provider="vault")}


async def _whoami(upstream: Upstream, username: str, password: str) -> tuple[str, str]:
    conn = await asyncpg.connect(host=upstream.host, port=upstream.port, user=username, password=password,
                                 database="demo")
    try:
        # Privileges come through membership in demo_rw: the issued role can read the tables.
        assert await conn.fetchval("SELECT count(*) FROM customers") > 0
        session_user, current_user = await conn.fetchrow("SELECT session_user, current_user")
        return str(session_user), str(current_user)
    finally:
        await conn.close()


async def test_issue_login_and_revoke(openbao: VaultFixture, upstream: Upstream) -> None:
    provider = VaultProvider(openbao.settings(), RESOURCES)
    try:
        cred = await provider.acquire(resource="demo", role="readwrite", session_id="s1")
        assert cred.lease_id and cred.lease_id.startswith("database/creds/readwrite/")
        assert cred.renewable and cred.lease_duration == TEST_TTL
        assert cred.username not in repr(cred) and cred.password not in repr(cred)
        # Logged in as its own role, running as the group: what it creates is the group's.
        assert await _whoami(upstream, cred.username, cred.password) == (cred.username, RW_ROLE)
        await provider.release(cred)
        assert not await role_exists(upstream, cred.username)
        # Revoking again (the reaper after a lost ack) is harmless.
        await provider.revoke(cred.lease_id)
    finally:
        await provider.aclose()


async def test_lease_is_renewed_while_the_session_lives(openbao: VaultFixture, upstream: Upstream) -> None:
    renewed: list[str] = []

    async def heartbeat(lease_id: str, expires: object) -> None:
        renewed.append(lease_id)

    provider = VaultProvider(openbao.settings(), RESOURCES, on_renewed=heartbeat)
    try:
        cred = await provider.acquire(resource="demo", role="readonly", session_id="s2")
        await asyncio.sleep(TEST_TTL + 1)
        assert renewed and renewed[0] == cred.lease_id
        # Past the first TTL and still there: the renewal kept the role alive.
        assert await role_exists(upstream, cred.username)
        await provider.release(cred)
        assert not await role_exists(upstream, cred.username)
    finally:
        await provider.aclose()


async def test_vault_down_is_unavailable_without_secrets(openbao: VaultFixture) -> None:
    from broker import metrics

    before = metrics.REGISTRY.get_sample_value("jitgate_vault_errors_total", {"kind": "unreachable"}) or 0
    provider = VaultProvider(openbao.settings(address=f"http://127.0.0.1:{free_port()}", timeout_seconds=1), RESOURCES)
    with pytest.raises(CredentialSourceUnavailable) as err:
        await provider.acquire(resource="demo", role="readwrite", session_id="s3")
    assert "Vault is unreachable" in str(err.value)
    assert metrics.REGISTRY.get_sample_value("jitgate_vault_errors_total", {"kind": "unreachable"}) == before + 1
    assert openbao.login.secret_id not in f"{err.value} {err.value.detail}"
    await provider.aclose()


async def test_unknown_role_is_a_credential_error(openbao: VaultFixture) -> None:
    provider = VaultProvider(openbao.settings(), RESOURCES)
    with pytest.raises(CredentialError) as err:
        await provider.acquire(resource="demo", role="superuser", session_id="s4")
    assert not isinstance(err.value, CredentialSourceUnavailable)
    await provider.aclose()


async def test_renewal_failure_is_counted_not_fatal(openbao: VaultFixture, upstream: Upstream) -> None:
    flaky = FlakyTcp("127.0.0.1", int(openbao.bao.address.rsplit(":", 1)[1]))
    provider = VaultProvider(openbao.settings(address=flaky.address, timeout_seconds=1), RESOURCES)
    try:
        cred = await provider.acquire(resource="demo", role="readwrite", session_id="s5")
        assert cred.lease_id
        flaky.down()
        await asyncio.sleep(TEST_TTL * 2 / 3 + 0.5)
        assert provider.renewal_failures.get(cred.lease_id, 0) >= 1
        with pytest.raises(CredentialSourceUnavailable):
            await provider.release(cred)
        flaky.up()
        await provider.revoke(cred.lease_id)
        assert not await role_exists(upstream, cred.username)
    finally:
        flaky.close()
        await provider.aclose()


async def test_gateway_logs_in_with_a_jwt(openbao: VaultFixture, upstream: Upstream, tmp_path) -> None:
    """Production auth without a root token: the gateway's workload JWT, re-read from a file."""
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from pydantic import SecretStr

    from broker.credentials.settings import VaultAuthSettings, VaultSettings

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    root = openbao.bao.client()
    root.sys.enable_auth_method("jwt", path="jwt-test")
    root.auth.jwt.configure(jwt_validation_pubkeys=[pem], path="jwt-test")
    root.auth.jwt.create_role(
        name="jitgate", role_type="jwt", allowed_redirect_uris=[], user_claim="sub",
        bound_audiences=["openbao"], token_policies=["jitgate"], path="jwt-test",
    )
    root.adapter.close()
    now = int(time.time())
    token = jwt.encode({"sub": "jitgate-gateway", "aud": "openbao", "iat": now, "exp": now + 300}, key, "RS256")
    token_file = tmp_path / "token"
    token_file.write_text(token)

    for auth in (
        VaultAuthSettings(method="jwt", mount="jwt-test", role="jitgate", jwt=SecretStr(token)),
        VaultAuthSettings(method="jwt", mount="jwt-test", role="jitgate", jwt_file=token_file),
    ):
        provider = VaultProvider(VaultSettings(address=openbao.bao.address, auth=auth), RESOURCES)
        try:
            cred = await provider.acquire(resource="demo", role="readonly", session_id="jwt")
            assert await role_exists(upstream, cred.username)
            await provider.release(cred)
            assert not await role_exists(upstream, cred.username)
        finally:
            await provider.aclose()


def _approle(openbao: VaultFixture, name: str, **token: str) -> VaultProvider:
    from pydantic import SecretStr

    from broker.credentials.settings import VaultAuthSettings, VaultSettings

    root = openbao.bao.client()
    root.auth.approle.create_or_update_approle(role_name=name, token_policies=["jitgate"], **token)
    role_id = root.auth.approle.read_role_id(role_name=name)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role_name=name)["data"]["secret_id"]
    root.adapter.close()
    auth = VaultAuthSettings(method="approle", role_id=role_id, secret_id=SecretStr(secret_id))
    return VaultProvider(VaultSettings(address=openbao.bao.address, auth=auth), RESOURCES)


async def test_gateway_token_is_renewed_and_replaced(openbao: VaultFixture, upstream: Upstream) -> None:
    # Vault revokes a token's leases with the token: a periodic token, renewed by the
    # provider, keeps a session's role alive past the token's period.
    periodic = _approle(openbao, "periodic", token_period="2s")
    try:
        cred = await periodic.acquire(resource="demo", role="readonly", session_id="a")
        await asyncio.sleep(3)
        assert await role_exists(upstream, cred.username)
        await periodic.release(cred)
    finally:
        await periodic.aclose()
    # A token that cannot be renewed any more is replaced by a fresh login on the next 403.
    short = _approle(openbao, "short", token_ttl="2s", token_max_ttl="2s")
    try:
        await short.release(await short.acquire(resource="demo", role="readonly", session_id="b"))
        await asyncio.sleep(2.5)
        cred = await short.acquire(resource="demo", role="readonly", session_id="c")
        assert await role_exists(upstream, cred.username)
        await short.release(cred)
        assert not await role_exists(upstream, cred.username)
    finally:
        await short.aclose()
