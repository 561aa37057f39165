"""The upstream PostgreSQL goes away at connect and in the middle of a query.

Three ways: a FlakyTcp proxy (asyncpg's adversity proxy, small) in front of the shared server,
whose `down()` resets every relayed connection and refuses new ones, with a second resource
on the same server that must keep serving throughout; a real fast shutdown of a dedicated
server, started again on the same port; and a dedicated server's postmaster frozen (SIGSTOP),
which accepts connections and never answers them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.config import ProxySettings, ResourceSettings, UpstreamSettings
from broker.demo.seed import DemoRoles, seed_demo
from broker.demo.upstream import Upstream, start_upstream
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.openbao_fixture import FlakyTcp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def flaky(upstream) -> Iterator[FlakyTcp]:
    path = FlakyTcp(upstream.host, upstream.port)
    yield path
    path.close()


@pytest.fixture(scope="module")
def gw(upstream, demo_roles, flaky) -> Iterator[Gateway]:
    extra = {"flaky": ResourceSettings(upstream=UpstreamSettings(
        host="127.0.0.1", port=flaky.port, dbname="demo", sslmode="disable",
        username=demo_roles.rw_user, password=demo_roles.rw_password,
    ))}
    with tempfile.TemporaryDirectory(prefix="jitgate-fault-pg-") as tmp:
        gateway = start_gateway(upstream, demo_roles, Path(tmp), extra=extra)
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _no_open_sessions(gw: Gateway, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        gw.flush()
        active = gw.call(gw.store.sessions.list_sessions(active_only=True))
        if not active and gw.server.active_sessions == 0:
            return
        assert time.monotonic() < deadline, f"sessions left open: {active}"
        time.sleep(0.1)


def test_upstream_down_at_connect_refuses_clearly_and_recovers(gw, flaky, demo_roles):
    flaky.down()
    try:
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(gw.dsn("flaky"), connect_timeout=10)
        text = str(err.value)
        assert "upstream" in text.lower() or "unavailable" in text.lower(), text
        assert demo_roles.rw_password not in text
        # Other resources are unaffected.
        with psycopg.connect(gw.dsn(), autocommit=True) as other:
            assert other.execute("select 1").fetchone() == (1,)
    finally:
        flaky.up()
    with psycopg.connect(gw.dsn("flaky"), autocommit=True) as conn:
        assert conn.execute("select count(*) from customers").fetchone()[0] > 0
    _no_open_sessions(gw)


def test_upstream_lost_mid_query_ends_that_session_only(gw, flaky, demo_roles):
    other = psycopg.connect(gw.dsn(), autocommit=True)
    victim = psycopg.connect(gw.dsn("flaky"), autocommit=True)
    errors: list[BaseException] = []

    def long_query() -> None:
        try:
            victim.execute("select pg_sleep(20)")
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=long_query)
    worker.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    flaky.down()
    try:
        worker.join(15)
        assert not worker.is_alive(), "the client was left hanging"
        assert time.monotonic() - t0 < 10
        assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError), errors
        assert demo_roles.rw_password not in str(errors[0])
        # The session is closed, not left half-open.
        with pytest.raises(psycopg.OperationalError):
            victim.execute("select 1")
        assert other.execute("select 2").fetchone() == (2,)
    finally:
        flaky.up()
        victim.close()
        other.close()
    with psycopg.connect(gw.dsn("flaky"), autocommit=True) as conn:
        assert conn.execute("select 3").fetchone() == (3,)
    _no_open_sessions(gw)


@contextlib.contextmanager
def _dedicated_upstream() -> Iterator[tuple[Path, Upstream, DemoRoles]]:
    """A seeded PostgreSQL of this test's own, to stop or freeze; removed afterwards."""
    # Not under tmp_path: the server may run as another account, which must reach its files.
    pg_dir = Path(tempfile.mkdtemp(prefix="jitgate-fault-upstream-"))
    own = start_upstream(pg_dir)
    try:
        yield pg_dir, own, asyncio.run(seed_demo(own))
    finally:
        own.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def test_upstream_server_stopped_mid_query_and_restarted(tmp_path):
    """A real stop (pg_ctl -m fast) of a dedicated server, then a start on the same port."""
    with _dedicated_upstream() as (pg_dir, own, roles):
        gw = start_gateway(own, roles, tmp_path / "gw")
        try:
            victim = psycopg.connect(gw.dsn(), autocommit=True)
            errors: list[BaseException] = []

            def long_query() -> None:
                try:
                    victim.execute("select pg_sleep(20)")
                except BaseException as exc:
                    errors.append(exc)

            worker = threading.Thread(target=long_query)
            worker.start()
            time.sleep(0.5)
            own.stop()
            worker.join(15)
            assert not worker.is_alive(), "the client was left hanging"
            assert len(errors) == 1 and isinstance(errors[0], psycopg.OperationalError), errors
            assert roles.rw_password not in str(errors[0])
            victim.close()
            # While the server is down a new session is refused, clearly and quickly.
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as err:
                psycopg.connect(gw.dsn(), connect_timeout=15)
            assert time.monotonic() - t0 < 12
            assert roles.rw_password not in str(err.value)
            again = start_upstream(pg_dir, port=own.port)
            assert again.port == own.port
            with psycopg.connect(gw.dsn(), autocommit=True) as conn:
                assert conn.execute("select count(*) from customers").fetchone()[0] > 0
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("select pg_read_file('/etc/passwd')")
            _no_open_sessions(gw)
        finally:
            stop_gateway(gw)


def test_upstream_frozen_at_connect_refuses_in_bounded_time(tmp_path):
    """The postmaster stopped, not gone: the kernel still accepts connections, nothing answers.
    A new session is refused once `proxy.connect_timeout_seconds` runs out, instead of hanging;
    a session already open keeps working (its backend is a process of its own); once the
    server continues the gateway serves new sessions again."""
    with _dedicated_upstream() as (_, own, roles):
        gw = start_gateway(own, roles, tmp_path / "gw", proxy=ProxySettings(listen_port=0, connect_timeout_seconds=2))
        try:
            established = psycopg.connect(gw.dsn(), autocommit=True)
            os.kill(own.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(psycopg.OperationalError) as err:
                    psycopg.connect(gw.dsn(), connect_timeout=15)
                assert time.monotonic() - started < 6, "the connect was left hanging"
                assert "upstream" in str(err.value).lower(), err.value
                assert roles.rw_password not in str(err.value)
                assert established.execute("select count(*) from customers").fetchone()[0] > 0
            finally:
                os.kill(own.pid, signal.SIGCONT)
            established.close()
            with psycopg.connect(gw.dsn(), autocommit=True) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            _no_open_sessions(gw)
        finally:
            stop_gateway(gw)
