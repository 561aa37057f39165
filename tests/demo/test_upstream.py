"""The embedded upstream and the shared fixtures: every auth method, seeding, stop; and the
demo's own upstream, where every role on every transport needs a password."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import psutil
import psycopg
import pytest

from broker.demo.pii import generate_orders
from broker.demo.seed import DEMO_DB, DemoRoles, seed_demo
from broker.demo.upstream import MD5_USER, TRUST_USER, Upstream, is_alive, start_upstream


async def _auth_of(dsn: str) -> tuple[str, str | None]:
    conn = await asyncpg.connect(dsn)
    try:
        # system_user is "<auth method>:<identity>", and NULL for trust.
        row = await conn.fetchrow("SELECT current_user, system_user")
        return row[0], row[1]
    finally:
        await conn.close()


async def test_md5_role_authenticates_with_md5(upstream: Upstream) -> None:
    dsn = upstream.dsn("demo", MD5_USER, upstream.md5user_password)
    assert await _auth_of(dsn) == (MD5_USER, f"md5:{MD5_USER}")


async def test_scram_role_authenticates_with_scram(upstream: Upstream,
                                                   demo_roles: DemoRoles) -> None:
    dsn = upstream.dsn("demo", demo_roles.rw_user, demo_roles.rw_password)
    assert await _auth_of(dsn) == ("demo_rw", "scram-sha-256:demo_rw")
    assert await _auth_of(upstream.dsn("demo")) == ("postgres", "scram-sha-256:postgres")


async def test_trust_role_needs_no_password(upstream: Upstream) -> None:
    assert await _auth_of(upstream.dsn("demo", TRUST_USER)) == (TRUST_USER, None)


@pytest.mark.parametrize("user", ["postgres", MD5_USER, "demo_rw"])
async def test_wrong_password_is_rejected(upstream: Upstream, user: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(upstream.dsn("demo", user, "not-the-password"))


def test_psycopg_reads_seeded_rows(upstream: Upstream, demo_roles: DemoRoles) -> None:
    dsn = upstream.dsn("demo", demo_roles.ro_user, demo_roles.ro_password)
    with psycopg.connect(dsn) as conn:
        customers = conn.execute("SELECT count(*) FROM customers").fetchone()
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()
        listen = conn.execute("SHOW listen_addresses").fetchone()
    assert customers == (200,)
    assert orders == (len(generate_orders()),)
    assert listen == ("127.0.0.1",)


async def test_demo_rw_can_write(upstream: Upstream, demo_roles: DemoRoles) -> None:
    conn = await asyncpg.connect(upstream.dsn("demo", demo_roles.rw_user, demo_roles.rw_password))
    try:
        tx = conn.transaction()
        await tx.start()  # rolled back: the session's `demo` stays pristine for other tests
        new_id = await conn.fetchval(
            "INSERT INTO customers (full_name, email) VALUES ('T', 't@example.com') RETURNING id")
        assert new_id == 201  # the serial is usable, i.e. USAGE on the sequence
        assert await conn.execute("DELETE FROM customers WHERE id = 1") == "DELETE 1"
        assert await conn.execute("UPDATE orders SET status = 'x' WHERE id = 2") == "UPDATE 1"
        await tx.rollback()
    finally:
        await conn.close()


async def test_demo_ro_cannot_write(upstream: Upstream, demo_roles: DemoRoles) -> None:
    conn = await asyncpg.connect(upstream.dsn("demo", demo_roles.ro_user, demo_roles.ro_password))
    try:
        assert await conn.fetchval("SELECT count(*) FROM customers") == 200
        for stmt in ("DELETE FROM customers WHERE id = 1",
                     "UPDATE customers SET notes = 'x' WHERE id = 1",
                     "INSERT INTO orders (customer_id, status, amount) VALUES (1, 'x', 1)"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(stmt)
    finally:
        await conn.close()


async def test_demo_db_is_a_private_copy(upstream: Upstream, demo_db: str) -> None:
    conn = await asyncpg.connect(upstream.dsn(demo_db))
    try:
        await conn.execute("DELETE FROM customers")  # cascades to orders
        assert await conn.fetchval("SELECT count(*) FROM orders") == 0
    finally:
        await conn.close()
    shared = await asyncpg.connect(upstream.dsn("demo"))
    try:
        assert await shared.fetchval("SELECT count(*) FROM customers") == 200
    finally:
        await shared.close()


async def test_seed_is_idempotent(upstream: Upstream, demo_roles: DemoRoles) -> None:
    admin = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        oid_sql = "SELECT oid FROM pg_database WHERE datname = 'demo'"
        before = await admin.fetchval(oid_sql)
        again = await seed_demo(upstream)
        assert await admin.fetchval(oid_sql) == before  # adopted, not rebuilt
    finally:
        await admin.close()
    assert again == demo_roles


def test_start_is_idempotent_and_reprs_hide_passwords(upstream: Upstream,
                                                      demo_roles: DemoRoles) -> None:
    started = time.monotonic()
    again = start_upstream(upstream.data_dir, auth_test_roles=True)
    assert time.monotonic() - started < 2
    assert again == upstream
    for obj, secret in ((upstream, upstream.superuser_password),
                        (upstream, upstream.md5user_password),
                        (demo_roles, demo_roles.rw_password)):
        assert secret and secret not in repr(obj)


def _postgres_processes_of(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return [p for p in found if is_alive(p)]


def test_stop_leaves_no_process_and_restart_reuses_cluster(free_port) -> None:
    # Its own cluster: stopping the session's shared server would break every other test.
    data_dir = Path(tempfile.mkdtemp(prefix="jitgate-stoptest-"))
    port = free_port()
    up = start_upstream(data_dir, port=port)
    try:
        assert up.port == port
        postmaster = psutil.Process(up.pid)
        tree = [postmaster, *postmaster.children(recursive=True)]
        assert len(tree) > 1  # checkpointer, walwriter, ...
        assert _postgres_processes_of(up.pgdata) == [postmaster]
        client = psycopg.connect(up.dsn("postgres"), autocommit=True)
        assert client.execute("SELECT 1").fetchone() == (1,)
        up.stop()  # with a client still connected: fast shutdown must not wait for it
        client.close()
        assert not [p.pid for p in tree if is_alive(p)]
        assert _postgres_processes_of(up.pgdata) == []
        up.stop()  # stopping twice is a no-op

        initialised = (up.pgdata / "PG_VERSION").stat().st_mtime_ns
        started = time.monotonic()
        again = start_upstream(data_dir)  # no port given: the previous one is preferred
        assert time.monotonic() - started < 5
        assert (again.port, again.superuser_password) == (up.port, up.superuser_password)
        assert (again.pgdata / "PG_VERSION").stat().st_mtime_ns == initialised  # no initdb
        with psycopg.connect(again.dsn("postgres")) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    finally:
        up.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    assert _postgres_processes_of(up.pgdata) == []


def test_local_pg_fixture_answers(local_pg_dsn: str) -> None:
    with psycopg.connect(local_pg_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import conftest

    assert conftest.require_binary("sh").endswith("/sh")
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception):
        conftest.require_binary("no-such-binary-jitgate")
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception):
        conftest.require_binary("no-such-binary-jitgate")


# --- the demo's upstream: no side doors ------------------------------------------------------

@pytest.fixture(scope="module")
async def demo_upstream() -> AsyncIterator[Upstream]:
    """An upstream started as `jitgate demo` starts it: without the auth-method test roles."""
    data_dir = Path(tempfile.mkdtemp(prefix="jitgate-upstream-demo-"))
    up = start_upstream(data_dir)
    try:
        await seed_demo(up, group_logins=False)
        yield up
    finally:
        up.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


# Every role an attacker on the machine can name: from the README, the tests, the banner, the
# agent file (its DSN's user) and the proxy's own answers.
_NAMEABLE_ROLES = [TRUST_USER, MD5_USER, "postgres", "demo_rw", "demo_ro", "demo-agent", "agent"]


@pytest.mark.parametrize("user", _NAMEABLE_ROLES)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_demo_upstream_lets_no_role_in_without_its_password(
        demo_upstream: Upstream, user: str, transport: str) -> None:
    host = demo_upstream.host if transport == "tcp" else str(demo_upstream.socket_dir)
    for password in (None, "", "not-the-password"):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(host=host, port=demo_upstream.port, user=user,
                                  password=password, database=DEMO_DB)


async def test_demo_upstream_authenticates_everyone_with_scram(demo_upstream: Upstream) -> None:
    over_socket = await asyncpg.connect(
        host=str(demo_upstream.socket_dir), port=demo_upstream.port, user="postgres",
        password=demo_upstream.superuser_password, database=DEMO_DB)
    try:
        assert await over_socket.fetchval("SELECT system_user") == "scram-sha-256:postgres"
        rules = await over_socket.fetch("SELECT type, user_name, auth_method FROM pg_hba_file_rules")
        # The roles that exist only for the proxy's auth-method tests do not exist here.
        test_roles = await over_socket.fetch(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1::text[])", [TRUST_USER, MD5_USER])
    finally:
        await over_socket.close()
    assert {r["auth_method"] for r in rules} == {"scram-sha-256"}, rules
    assert {r["type"] for r in rules} == {"local", "host"}
    assert test_roles == []
    assert demo_upstream.md5user_password == ""


async def test_auth_test_roles_are_opt_in(upstream: Upstream) -> None:
    # The session's shared upstream opts in (tests/conftest.py): the proxy's tests need them.
    assert upstream.auth_test_roles
    conn = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        methods = {r["auth_method"] for r in await conn.fetch("SELECT auth_method FROM pg_hba_file_rules")}
    finally:
        await conn.close()
    assert methods == {"trust", "md5", "scram-sha-256"}


async def test_seeded_tables_are_analysed(demo_upstream: Upstream) -> None:
    # Without ANALYZE the planner guesses from page counts (2550 rows for a 1-row table), and
    # the approval card shows that guess as the statement's reach.
    conn = await asyncpg.connect(demo_upstream.dsn(DEMO_DB))
    try:
        for table in ("customers", "orders"):
            actual = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT * FROM {table}")  # noqa: S608
            assert json.loads(plan)[0]["Plan"]["Plan Rows"] == actual, table
            analysed = await conn.fetchval(
                "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = $1", table)
            assert analysed, table
    finally:
        await conn.close()
