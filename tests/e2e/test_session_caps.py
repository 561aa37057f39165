"""Concurrent-session caps through the real proxy: per token and per agent, refused with 53300
before any upstream connection, counted across proxy processes, and every way a session ends
(client gone, backend killed, failed connect, proxy process killed) gives its slot back."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from broker.config import ProxySettings, ResourceSettings, UpstreamSettings
from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from tests.conftest import free_port
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.processes import issue_token, start, stop, wait_port
from tests.wire_client import WireClient, WireError, query

pytestmark = pytest.mark.e2e

CAPS = ProxySettings(listen_port=0, max_sessions_per_agent=3, max_sessions_per_token=2, session_slot_lease_seconds=3)


@pytest.fixture(scope="module")
def capped(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="jitgate-caps-") as tmp:
        nowhere = ResourceSettings(upstream=UpstreamSettings(
            host="127.0.0.1", port=free_port(), dbname="demo", sslmode="disable", username="x", password="y",
        ))  # fmt: skip
        gw = start_gateway(upstream, demo_roles, Path(tmp), extra={"nowhere": nowhere}, proxy=CAPS)
        try:
            yield gw
        finally:
            stop_gateway(gw)


def _connect(gw: Gateway | int, token: str, resource: str = "demo") -> WireClient:
    port = gw if isinstance(gw, int) else gw.port
    return WireClient.connect("127.0.0.1", port, user="agent", database=resource, password=token)


def _refused(gw: Gateway | int, token: str, resource: str = "demo") -> WireError:
    with pytest.raises(WireError) as err:
        _connect(gw, token, resource).close()
    return err.value


def _held(gw: Gateway, *, token: str | None = None, principal: str | None = None) -> int:
    token_id = None
    if token is not None:
        grant = gw.call(gw.store.tokens.verify_token(token, "demo"))
        token_id = grant.token_id
    return int(gw.call(gw.store.slots.session_slots(token_id=token_id, principal=principal)))


def _eventually(what: str, condition: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        time.sleep(0.05)


def _backends(upstream: Upstream) -> int:
    with psycopg.connect(upstream.dsn("postgres"), autocommit=True) as admin:
        return int(admin.execute("select count(*) from pg_stat_activity where datname = 'demo'").fetchone()[0])  # type: ignore[index]


def test_one_token_gets_its_cap_and_a_clear_53300(capped, upstream) -> None:
    token = capped.issue(principal="agent:cap-token")
    with contextlib.ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(_connect(capped, token))
        backends = _backends(upstream)
        err = _refused(capped, token)
        assert err.sqlstate == "53300"
        assert "too many concurrent sessions for this token: the gateway allows 2" in str(err)
        assert token not in str(err) and token not in repr(err.fields)
        assert _backends(upstream) == backends  # refused before any upstream connection
        # Another agent is not affected by this one's sessions.
        stack.enter_context(_connect(capped, capped.issue(principal="agent:cap-other")))
    # Closed: the slots are free again.
    _eventually("the token's slots are freed", lambda: _held(capped, token=token) == 0)
    with _connect(capped, token), _connect(capped, token):
        pass


def test_one_agent_gets_its_cap_over_all_its_tokens(capped) -> None:
    tokens = [capped.issue(principal="agent:cap-many") for _ in range(4)]
    with contextlib.ExitStack() as stack:
        for token in tokens[:3]:
            stack.enter_context(_connect(capped, token))
        err = _refused(capped, tokens[3])
        assert err.sqlstate == "53300"
        assert "too many concurrent sessions for this agent: the gateway allows 3" in str(err)


def test_a_client_that_vanishes_frees_its_slot(capped) -> None:
    token = capped.issue(principal="agent:cap-vanish")
    for _ in range(3):  # more than the cap, one after another: each end gives its slot back
        a, b = _connect(capped, token), _connect(capped, token)
        for client in (a, b):  # no Terminate: the socket is just gone (a killed agent)
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            client.sock.close()
        _eventually("the vanished sessions' slots are freed", lambda: _held(capped, token=token) == 0)


def test_a_backend_killed_under_the_session_frees_its_slot(capped, upstream) -> None:
    token = capped.issue(principal="agent:cap-killed")
    with _connect(capped, token) as a, _connect(capped, token):
        a.send(query("select pg_backend_pid()"))
        pid = int([m.body for m in a.read(ready=1).messages if m.kind == "D"][0][6:])  # count, length, text
        with psycopg.connect(upstream.dsn("postgres"), autocommit=True) as admin:
            admin.execute("select pg_terminate_backend(%s)", (pid,))
        _eventually("the killed session's slot is freed", lambda: _held(capped, token=token) == 1)
        with _connect(capped, token):  # its slot is usable again at once
            pass


def test_a_connect_that_fails_after_admission_frees_its_slot(capped) -> None:
    """The upstream is unreachable: each attempt is admitted, fails, and gives its slot
    back, so failures never add up to a cap."""
    token = capped.issue("nowhere", principal="agent:cap-fail")
    for _ in range(4):
        err = _refused(capped, token, "nowhere")
        assert err.sqlstate == "08006", err
    _eventually("the failed sessions' slots are freed", lambda: _held(capped, principal="agent:cap-fail") == 0)


def test_the_count_is_shared_by_proxy_processes_and_a_killed_one_frees_its_slots(
    tmp_path, upstream, demo_roles
) -> None:
    """Two real `jitgate proxy` processes on one store: the cap spans both; SIGKILL one that
    holds sessions, and its slots lapse within the lease, not never."""
    ports = [free_port(), free_port()]
    config = tmp_path / "jitgate.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "store_url": f"sqlite+aiosqlite:///{tmp_path / 'jitgate.db'}",
        "proxy": {"max_sessions_per_token": 2, "max_sessions_per_agent": 2, "session_slot_lease_seconds": 3},
        "resources": {"demo": {"upstream": {
            "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
            "username": demo_roles.rw_user, "password": demo_roles.rw_password,
        }}},
    }))  # fmt: skip
    procs = []
    try:
        for i, port in enumerate(ports):
            log = tmp_path / f"proxy{i}.log"
            procs.append(
                start(["proxy", "--config", str(config)], log=log, env={"JITGATE_PROXY__LISTEN_PORT": str(port)})
            )
            wait_port(port, procs[-1], log)
        token = issue_token(config, principal="agent:cap-procs")
        held = [_connect(ports[0], token), _connect(ports[0], token)]
        err = _refused(ports[1], token)  # the other process counts the first one's sessions
        assert err.sqlstate == "53300"
        os.killpg(procs[0].pid, signal.SIGKILL)  # no finally runs: the slots are left behind
        procs[0].wait(10)
        started = time.monotonic()
        assert _refused(ports[1], token).sqlstate == "53300"  # still counted: within the lease
        while True:
            try:
                with _connect(ports[1], token), _connect(ports[1], token):
                    break
            except WireError as exc:
                assert exc.sqlstate == "53300"
                assert time.monotonic() - started < 10, "the killed process's slots never lapsed"
                time.sleep(0.2)
        for client in held:
            with contextlib.suppress(OSError):
                client.close()
    finally:
        stop(procs)


def test_sessions_cancelled_at_shutdown_free_their_slots(upstream, demo_roles, tmp_path) -> None:
    gw = start_gateway(upstream, demo_roles, tmp_path, proxy=CAPS)
    try:
        token = gw.issue(principal="agent:cap-shutdown")
        clients = [_connect(gw, token), _connect(gw, token)]
        assert _held(gw, token=token) == 2
        gw.call(gw.server.close())  # cancels the session tasks
        assert _held(gw, token=token) == 0
        for client in clients:
            client.close()
    finally:
        stop_gateway(gw)
