"""Redis and the `jitgate api` process freeze (SIGSTOP, later SIGCONT) instead of dying.

A frozen peer keeps its sockets open and answers nothing, so what is exercised is timeouts,
not connection errors (tests/faults/test_redis.py and test_api_restart.py kill them instead).

- Redis (a private redis-server, never the machine's shared one) freezes while a statement is
  parked: a decision taken meanwhile by another process (its PUBLISH stuck in the frozen
  server's socket) does not hang the voter, reaches the parked client at the wait's deadline
  by reading the store, and the statement runs exactly once; once Redis resumes and delivers
  the stale PUBLISH, nothing runs a second time, and push delivery works again at once.
- The API process freezes with an approval pending: the proxy keeps serving other sessions,
  the parked client keeps waiting (not errored), and after SIGCONT a vote through the API
  releases the statement exactly once.

Side effects are counted with `update ... set n = n + 1` (not idempotent, unlike a delete).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
import redis

from broker.approvals.bus import CHANNEL, RedisBus
from broker.approvals.model import Status, VoteResult
from broker.approvals.service import ApprovalService
from broker.store import Store
from tests.conftest import require_binary
from tests.e2e.conftest import Gateway
from tests.e2e.test_approvals import DBA, psql, vote, wait_pending
from tests.faults.test_api_restart import Node, _pending, node  # noqa: F401
from tests.faults.test_redis import WAIT, PrivateRedis, gw, private_redis  # noqa: F401

pytestmark = pytest.mark.e2e


def _counter(upstream, name: str) -> None:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"drop table if exists {name}")
        admin.execute(f"create table {name} (n int)")
        admin.execute(f"insert into {name} values (0)")
        admin.execute(f"grant all on {name} to public")


def _value(upstream, name: str) -> int:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        return admin.execute(f"select n from {name}").fetchone()[0]


def _reap(*procs: subprocess.Popen[str] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _drop(upstream, *names: str) -> None:
    with contextlib.suppress(Exception), psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        for name in names:
            admin.execute(f"drop table if exists {name}")


async def _vote_through_frozen_redis(
    gateway: Gateway, approval_id: str, url: str, freeze: Callable[[], None]
) -> tuple[VoteResult, float]:
    """Vote as another API instance does: its own store connection and a Redis bus that has
    published before Redis froze, so its pool holds an open connection and the PUBLISH is
    written into the frozen server's socket, unanswered. (On a fresh connection it would never
    be written: the client's handshake waits first.) Returns the result and how long the vote
    took."""
    store = await Store.open(gateway.settings.store_url.get_secret_value())
    bus = RedisBus(url)
    try:
        await bus.start()  # its subscription takes the first connection
        await bus.publish(f"warm-up-{approval_id}", "pending")  # an earlier decision: a pooled connection
        freeze()
        t0 = time.monotonic()
        service = ApprovalService(store.approvals, gateway.settings.approvals, bus=bus)
        result = await service.vote(approval_id, DBA, "approve")
        return result, time.monotonic() - t0
    finally:
        await bus.close()
        await store.close()


async def _vote_with_redis(gateway: Gateway, approval_id: str, url: str) -> VoteResult:
    store = await Store.open(gateway.settings.store_url.get_secret_value())
    bus = RedisBus(url)
    await bus.start()
    try:
        service = ApprovalService(store.approvals, gateway.settings.approvals, bus=bus)
        return await service.vote(approval_id, DBA, "approve")
    finally:
        await bus.close()
        await store.close()


def test_decision_taken_while_redis_is_frozen_runs_once(gw, upstream, private_redis):  # noqa: F811
    server: PrivateRedis = private_redis
    assert server.proc is not None and server.port != 6379
    pid = server.proc.pid
    first, second = "frozen_redis_a", "frozen_redis_b"
    _counter(upstream, first)
    _counter(upstream, second)
    # A listener of our own on the channel shows when the stale PUBLISH is finally delivered.
    watcher = redis.Redis(port=server.port, socket_timeout=5)
    sub = watcher.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(CHANNEL)
    proc = proc2 = None
    try:
        sql = f"update {first} set n = n + 1"
        proc = psql(gw, sql)
        approval = wait_pending(gw, sql)
        parked_at = time.monotonic()
        frozen = False

        def freeze() -> None:
            nonlocal frozen
            os.kill(pid, signal.SIGSTOP)
            frozen = True

        try:
            result, took = asyncio.run(_vote_through_frozen_redis(gw, approval.id, server.url, freeze))
            assert frozen
            assert result.counted and result.approval.status is Status.APPROVED
            # The voter is not hung by the frozen bus: its publish gives up (2 s) after the commit.
            assert took < 5, f"a vote hung {took:.1f}s on a frozen Redis"
            # Other sessions keep working while the bus is frozen.
            with psycopg.connect(gw.dsn(), autocommit=True, connect_timeout=10) as other:
                assert other.execute("select 1").fetchone() == (1,)
            assert proc.poll() is None, "released without a push, before its deadline"
            # No push can arrive: the parked statement finds the decision in the store at its deadline.
            out, err = proc.communicate(timeout=WAIT + 10)
            waited = time.monotonic() - parked_at
            assert proc.returncode == 0, err
            assert out.strip() == "UPDATE 1"
            assert WAIT - 2 <= waited <= WAIT + 5, f"released after {waited:.1f}s, deadline {WAIT}s"
            assert _value(upstream, first) == 1
            assert vote(gw, approval.id, DBA).counted is False
        finally:
            os.kill(pid, signal.SIGCONT)

        # Redis resumes and processes the PUBLISH buffered in its socket: every subscriber,
        # the proxy included, hears the stale decision; nothing runs a second time.
        deadline = time.monotonic() + 10
        stale = None
        while stale is None:
            assert time.monotonic() < deadline, "the PUBLISH sent while Redis was frozen was never delivered"
            message = sub.get_message(timeout=0.5)
            if message is not None and f'"{approval.id}"' in message["data"].decode():
                stale = message
        time.sleep(0.5)  # the proxy got it at the same moment; give a wrong re-run time to show
        assert _value(upstream, first) == 1, "the statement ran again when the stale decision arrived"

        # Push delivery works again: a decision after SIGCONT releases the next statement at once.
        sql = f"update {second} set n = n + 1"
        proc2 = psql(gw, sql)
        approval = wait_pending(gw, sql)
        t0 = time.monotonic()
        assert asyncio.run(_vote_with_redis(gw, approval.id, server.url)).approval.status is Status.APPROVED
        out, err = proc2.communicate(timeout=WAIT + 10)
        released = time.monotonic() - t0
        assert proc2.returncode == 0, err
        assert out.strip() == "UPDATE 1"
        assert released < WAIT / 2, f"released after {released:.1f}s: decisions are not pushed after SIGCONT"
        assert _value(upstream, second) == 1
        assert _value(upstream, first) == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        _reap(proc, proc2)
        sub.close()
        watcher.close()
        _drop(upstream, first, second)


def test_frozen_api_neither_blocks_the_proxy_nor_loses_the_parked_statement(node, upstream):  # noqa: F811
    require_binary("psql")
    n: Node = node["node"]  # type: ignore[assignment]
    dsn = f"postgresql://agent:{node['token']}@127.0.0.1:{node['proxy']}/demo"
    base = f"http://127.0.0.1:{node['api']}"
    table = f"t_frozen_api_{node['proxy']}"
    _counter(upstream, table)
    api_proc = n.procs["api"]
    proc: subprocess.Popen[str] | None = None
    try:
        sql = f"update {table} set n = n + 1"
        proc = subprocess.Popen(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dana = {"Authorization": f"Bearer {node['idp'].mint(sub='dana', email='dana@example.com', groups=['dba'])}"}
        with httpx.Client(base_url=base, headers=dana, timeout=10) as api:
            deadline = time.monotonic() + 20
            while not (pending := _pending(api, sql)):
                assert time.monotonic() < deadline, "not parked"
                time.sleep(0.1)
        os.killpg(api_proc.pid, signal.SIGSTOP)
        try:
            # Frozen: the API accepts connections (the kernel does) but answers nothing.
            with pytest.raises(httpx.TimeoutException):
                httpx.get(f"{base}/v1/approvals?status=pending", headers=dana, timeout=1.5)
            # The proxy keeps serving other sessions meanwhile.
            with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as other:
                assert other.execute("select 1").fetchone() == (1,)
                assert other.execute(f"select n from {table}").fetchone() == (0,)
            # The parked client is still waiting, not errored.
            assert proc.poll() is None, proc.communicate()
        finally:
            os.killpg(api_proc.pid, signal.SIGCONT)
        with httpx.Client(base_url=base, headers=dana, timeout=10) as api:
            assert [a["id"] for a in _pending(api, sql)] == [pending[0]["id"]]
            decided = api.post(f"/v1/approvals/{pending[0]['id']}/approve")
            assert decided.status_code == 200 and decided.json()["status"] == "approved", decided.text
            # A second vote is a duplicate: the statement cannot be released twice.
            again = api.post(f"/v1/approvals/{pending[0]['id']}/approve")
            assert again.status_code in (200, 409), again.text
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert out.strip() == "UPDATE 1", err
        assert _value(upstream, table) == 1
        time.sleep(0.5)
        assert _value(upstream, table) == 1, "the statement ran twice"
        assert api_proc.poll() is None, "the API died of the freeze"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(api_proc.pid, signal.SIGCONT)
        _reap(proc)
        _drop(upstream, table)
