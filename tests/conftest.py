"""Fixtures shared by the whole suite: real parts, started once per session.

    upstream        session  Upstream: embedded PostgreSQL 18 on 127.0.0.1:<free port>, seeded
                             with the `demo` database; stopped (and its files removed) at the end
    demo_roles      session  DemoRoles: logins and passwords of demo_rw / demo_ro
    demo_db         function str: name of a fresh copy of `demo` on `upstream`, dropped after
                             the test; use it when a test writes, so others see pristine data
    local_pg_dsn    session  str: DSN of the machine's PostgreSQL at 127.0.0.1:5432
    free_port       function the free_port() helper below
    require_binary  function the require_binary() helper below

Helpers, importable as `from tests.conftest import free_port, require_binary, unavailable`:
`unavailable(reason)` fails the test under CI=true and skips it otherwise (design.md: with
CI=true a test that cannot get a real part fails instead of skipping).

Exit status: pytest already exits 5 when no test was collected, which is a failure for any
runner that checks the status; whatever wraps pytest (Makefile, CI script) must propagate it
instead of piping pytest into something that swallows it.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest

from broker.demo.seed import DEMO_DB, DemoRoles, seed_demo
from broker.demo.upstream import Upstream, UpstreamError, start_upstream

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
LOCAL_PG_DSN = os.environ.get("JITGATE_LOCAL_PG_DSN",
                              "postgresql://postgres@127.0.0.1:5432/postgres")
# Cloned for each demo_db; nobody connects to it, because CREATE DATABASE ... TEMPLATE
# refuses a source with open connections, and `demo` itself may have some.
_PRISTINE_DB = "demo_pristine"


def unavailable(reason: str) -> NoReturn:
    """Fail under CI=true, skip otherwise: a CI run must never turn green by skipping."""
    if IN_CI:
        pytest.fail(f"{reason} (required because CI=true)", pytrace=False)
    pytest.skip(reason)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel picks it; races are rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The path of executable `name`, or skip (fail under CI=true) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        unavailable(f"binary {name!r} is not on PATH")
    return path


@pytest.fixture(name="free_port")
def _free_port_fixture() -> Callable[..., int]:
    return free_port


@pytest.fixture(name="require_binary")
def _require_binary_fixture() -> Callable[[str], str]:
    return require_binary


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[Upstream]:
    # Under /tmp rather than tmp_path_factory: pytest-of-root is 0700, and the server runs as
    # another account when we are root; a short path also keeps the unix socket in data_dir.
    data_dir = Path(tempfile.mkdtemp(prefix="jitgate-upstream-"))
    try:
        # With the roles that let the proxy's tests speak every upstream auth method; the
        # demo's upstream has none of them (tests/demo/test_upstream.py).
        up = await asyncio.to_thread(start_upstream, data_dir, auth_test_roles=True)
    except UpstreamError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        unavailable(f"embedded PostgreSQL did not start: {exc}")
    # Teardown may not run if the session is interrupted hard; never leave a server behind.
    atexit.register(up.stop)
    try:
        await seed_demo(up)
        # Snapshot before any test can connect to or change `demo` (a template must have no
        # open connections), so every demo_db starts from exactly the seeded rows.
        admin = await asyncpg.connect(up.dsn("postgres"))
        try:
            await admin.execute(f"CREATE DATABASE {_PRISTINE_DB} TEMPLATE {DEMO_DB}")
        finally:
            await admin.close()
        yield up
    finally:
        await asyncio.to_thread(up.stop)
        atexit.unregister(up.stop)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def demo_roles(upstream: Upstream) -> DemoRoles:
    return await seed_demo(upstream)  # already seeded: this only reads the passwords back


@pytest.fixture
async def demo_db(upstream: Upstream) -> AsyncIterator[str]:
    name = f"demo_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {_PRISTINE_DB}")
        yield name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(scope="session")
def local_pg_dsn() -> str:
    import psycopg

    try:
        with psycopg.connect(LOCAL_PG_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        unavailable(f"local PostgreSQL at {LOCAL_PG_DSN} does not answer: {exc}")
    return LOCAL_PG_DSN


# Real OpenBao for the credential tests (broker/credentials and e2e); defined in its own module.
from tests.openbao_fixture import openbao  # noqa: E402, F401

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A flushed database of the machine's Redis (127.0.0.1:6379), as a redis:// URL."""
    import redis

    db = 13
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        unavailable(f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer ({type(exc).__name__})")
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()
