"""Redis (the decision bus) dies while a statement is parked, then comes back.

A private redis-server on a free port, never the machine's shared one. The store is the
truth: a decision taken while Redis is down still reaches the parked client (at its wait's
deadline, by reading the store), runs exactly once, and push delivery resumes after Redis
returns.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from broker.approvals.bus import CHANNEL, LocalBus, RedisBus
from broker.approvals.model import Status
from broker.approvals.service import ApprovalService
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from broker.config import ProxySettings
from broker.store import Store
from tests.conftest import free_port, require_binary
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.e2e.test_approvals import DBA, psql, vote, wait_pending

pytestmark = pytest.mark.e2e

WAIT = 8  # review_wait_seconds: the bound on how late a decision may arrive without Redis


class PrivateRedis:
    def __init__(self) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="module")
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def gw(upstream, demo_roles, private_redis) -> Iterator[Gateway]:
    approvals = ApprovalSettings(rules=[ApprovalRuleSettings(approvers=["dba"])])
    with tempfile.TemporaryDirectory(prefix="jitgate-fault-redis-") as tmp:
        gateway = start_gateway(
            upstream, demo_roles, Path(tmp), approvals=approvals, broker_url=private_redis.url,
            proxy=ProxySettings(listen_port=0, review_wait_seconds=WAIT),
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _table(upstream, name: str, rows: int) -> None:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"drop table if exists {name}")
        admin.execute(f"create table {name} (id int)")
        admin.execute(f"insert into {name} select generate_series(1, {rows})")
        admin.execute(f"grant all on {name} to public")


def _count(upstream, name: str) -> int:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        return admin.execute(f"select count(*) from {name}").fetchone()[0]


async def _vote_elsewhere(gw: Gateway, approval_id: str):
    """Vote the way another process (an API instance) does: its own store connection and a
    bus that cannot reach the proxy, as Redis is down."""
    store = await Store.open(gw.settings.store_url.get_secret_value())
    try:
        other = ApprovalService(store.approvals, gw.settings.approvals, bus=LocalBus())
        return await other.vote(approval_id, DBA, "approve")
    finally:
        await store.close()


def test_decision_taken_while_redis_is_down_runs_once(gw, upstream, private_redis):
    _table(upstream, "fault_redis_a", 5)
    proc = psql(gw, "delete from fault_redis_a")
    approval = wait_pending(gw, "delete from fault_redis_a")
    private_redis.kill()
    try:
        # Other sessions keep working while the bus is down.
        with psycopg.connect(gw.dsn(), autocommit=True) as other:
            assert other.execute("select 1").fetchone() == (1,)
        assert asyncio.run(_vote_elsewhere(gw, approval.id)).approval.status is Status.APPROVED
        # No push can arrive: the parked statement finds the decision in the store at its deadline.
        out, err = proc.communicate(timeout=WAIT + 10)
        assert proc.returncode == 0, err
        assert out.strip() == "DELETE 5"
        assert _count(upstream, "fault_redis_a") == 0
        # Decided once: the same vote again is a duplicate, and nothing runs a second time.
        assert vote(gw, approval.id, DBA).counted is False
        time.sleep(0.5)
        assert _count(upstream, "fault_redis_a") == 0
    finally:
        private_redis.start()

    # Redis is back: the bus reconnects (with backoff) and a vote from elsewhere is pushed again.
    _table(upstream, "fault_redis_b", 3)
    # The listener retries with backoff (capped at 5 s): wait until it has resubscribed.
    client = redis.Redis(port=private_redis.port)
    deadline = time.monotonic() + 10
    while dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0) < 1:
        assert time.monotonic() < deadline, "the proxy never resubscribed"
        time.sleep(0.1)
    client.close()
    proc = psql(gw, "delete from fault_redis_b")
    approval = wait_pending(gw, "delete from fault_redis_b")
    t0 = time.monotonic()

    async def vote_with_redis():
        store = await Store.open(gw.settings.store_url.get_secret_value())
        bus = RedisBus(private_redis.url)
        await bus.start()
        try:
            service = ApprovalService(store.approvals, gw.settings.approvals, bus=bus)
            return await service.vote(approval.id, DBA, "approve")
        finally:
            await bus.close()
            await store.close()

    asyncio.run(vote_with_redis())
    out, err = proc.communicate(timeout=WAIT + 10)
    assert proc.returncode == 0, err
    assert out.strip() == "DELETE 3"
    assert time.monotonic() - t0 < WAIT / 2, "decisions are not pushed after Redis returned"
