"""The demo's group roles demo_rw and demo_ro log nobody in.

Sessions run as the group (`current_user`, broker/credentials/statements.py), and a role may
change its own password: a session that ran `ALTER ROLE demo_rw PASSWORD ...` would have a
standing upstream login if the group could log in. In the demo's cluster the groups are
NOLOGIN without a password, whatever password state.json still holds, and a non-superuser
cannot give a role LOGIN back. (The test suite's shared upstream keeps them as login roles:
many tests connect as demo_rw directly.)
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from broker.credentials.local import LocalIssuer
from broker.credentials.settings import CredentialSettings
from broker.credentials.statements import creation_statements
from broker.demo.seed import DEMO_DB, RO_ROLE, RW_ROLE, seed_demo
from broker.demo.upstream import Upstream, start_upstream

GROUPS = (RW_ROLE, RO_ROLE)


@pytest.fixture(scope="module")
async def locked() -> AsyncIterator[Upstream]:
    """The demo's own cluster, seeded once the old way (login groups with passwords in
    state.json, as a demo before this change left it) and then as the demo seeds it now."""
    data_dir = Path(tempfile.mkdtemp(prefix="jitgate-upstream-groups-"))
    up = start_upstream(data_dir)
    try:
        old = await seed_demo(up)
        assert old.rw_password and old.ro_password
        await seed_demo(up, group_logins=False)
        yield up
    finally:
        up.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _state_passwords(up: Upstream) -> dict[str, str]:
    return json.loads((up.data_dir / "state.json").read_text())["passwords"]


async def _attributes(up: Upstream) -> dict[str, tuple[bool, bool]]:
    conn = await asyncpg.connect(up.dsn("postgres"))
    try:
        rows = await conn.fetch("SELECT rolname, rolcanlogin, rolpassword IS NULL AS nopw FROM pg_authid "
                                "WHERE rolname = ANY($1::text[])", list(GROUPS))
    finally:
        await conn.close()
    return {r["rolname"]: (r["rolcanlogin"], r["nopw"]) for r in rows}


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_no_login_as_a_group_even_with_its_password_from_state_json(
        locked: Upstream, transport: str) -> None:
    passwords = _state_passwords(locked)
    host = locked.host if transport == "tcp" else str(locked.socket_dir)
    for role in GROUPS:
        assert passwords[role]  # the old password is still on disk...
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):  # ...and opens nothing
            await asyncpg.connect(host=host, port=locked.port, user=role, password=passwords[role],
                                  database=DEMO_DB)


async def test_groups_are_nologin_without_a_password_and_stay_so_on_restart(locked: Upstream) -> None:
    assert await _attributes(locked) == {RW_ROLE: (False, True), RO_ROLE: (False, True)}
    roles = await seed_demo(locked, group_logins=False)  # the next `jitgate demo`
    assert (roles.rw_password, roles.ro_password) == ("", "")
    assert await _attributes(locked) == {RW_ROLE: (False, True), RO_ROLE: (False, True)}


async def _session_login(up: Upstream, name: str) -> asyncpg.Connection:
    """A login made as OpenBao makes it (the demo's creation statements), connected."""
    password = "session-login-pw"  # noqa: S105 - a throw-away login of this test
    sql = [s.replace("{{name}}", name).replace("{{password}}", password)
           .replace("{{expiration}}", "2999-01-01") for s in creation_statements(RW_ROLE)]
    admin = await asyncpg.connect(up.dsn(DEMO_DB))
    try:
        for statement in sql:
            await admin.execute(statement)
    finally:
        await admin.close()
    return await asyncpg.connect(up.dsn(DEMO_DB, name, password))


async def _drop_login(up: Upstream, name: str) -> None:
    admin = await asyncpg.connect(up.dsn(DEMO_DB))
    try:
        await admin.execute(f'DROP OWNED BY "{name}"; DROP ROLE IF EXISTS "{name}"')
    finally:
        await admin.close()


async def test_a_session_running_as_the_group_cannot_reopen_it(locked: Upstream) -> None:
    name = "v-test-groups-session"
    session = await _session_login(locked, name)
    try:
        assert await session.fetchval("SELECT current_user") == RW_ROLE
        assert await session.fetchval("SELECT count(*) FROM customers") == 200  # sessions work
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await session.execute(f"ALTER ROLE {RW_ROLE} LOGIN")
        # What the red team's DO block did: the group sets its own password. It may...
        await session.execute(f"ALTER ROLE {RW_ROLE} PASSWORD 'chosen-by-the-session'")
    finally:
        await session.close()
        await _drop_login(locked, name)
    try:
        # ...and it opens nothing: NOLOGIN, over either transport.
        for host in (locked.host, str(locked.socket_dir)):
            with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
                await asyncpg.connect(host=host, port=locked.port, user=RW_ROLE,
                                      password="chosen-by-the-session", database=DEMO_DB)
        assert (await _attributes(locked))[RW_ROLE] == (False, False)
    finally:
        await seed_demo(locked, group_logins=False)  # and the next start clears it again
    assert (await _attributes(locked))[RW_ROLE] == (False, True)


async def test_a_password_a_superuser_sets_opens_nothing_either(locked: Upstream) -> None:
    admin = await asyncpg.connect(locked.dsn("postgres"))
    try:
        await admin.execute(f"ALTER ROLE {RO_ROLE} PASSWORD 'set-by-the-superuser'")
    finally:
        await admin.close()
    try:
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(locked.dsn(DEMO_DB, RO_ROLE, "set-by-the-superuser"))
    finally:
        await seed_demo(locked, group_logins=False)


async def test_the_local_issuer_works_with_locked_groups(locked: Upstream) -> None:
    """Without `bao` the demo issues logins itself; they need no login on the group either."""
    issuer = LocalIssuer("demo", CredentialSettings(
        provider="local", admin_dsn=SecretStr(locked.dsn(DEMO_DB)), roles={"readwrite": RW_ROLE}))
    cred = await issuer.acquire(resource="demo", role="readwrite", session_id="s1")
    try:
        conn = await asyncpg.connect(locked.dsn(DEMO_DB, cred.username, cred.password))
        try:
            assert await conn.fetchval("SELECT current_user") == RW_ROLE
            assert await conn.fetchval("SELECT count(*) FROM orders") > 0
        finally:
            await conn.close()
    finally:
        await issuer.release(cred)
