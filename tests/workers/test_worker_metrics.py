"""A real `jitgate worker` (prefork pool of two, beat, the real Redis) with `worker.metrics_port`
serves on that port what its pool's processes count: witness deliveries and an approval it
expired, both counted in the children, summed by the main process. Two workers on one data
dir each serve their own counts; a child the pool replaces leaves no gauge series; a port
that cannot be bound stops the worker before it starts."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from broker.approvals.service import ApprovalService, Requester
from broker.audit import events
from broker.audit.signing import new_private_key
from broker.config import load_settings
from broker.store import Store
from tests.conftest import free_port
from tests.processes import running_worker, start_worker, stop, witness_worker_config


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> Path:
    new_private_key(tmp_path / "audit.pem")
    return witness_worker_config(tmp_path, redis_url, "metrics", worker={"metrics_port": free_port()})


@pytest.fixture
def worker(config: Path, tmp_path: Path) -> Iterator[Path]:
    with running_worker(config, tmp_path / "worker.log", concurrency=2) as log:
        yield log


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in an exposition, 0 when it is not there."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match[1] != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if got == labels:
            return float(match[3])
    return 0.0


async def scrape_until(port: int, log: Path, done: object, seconds: float = 60.0) -> str:
    deadline = time.monotonic() + seconds
    text = ""
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=3)).text
            except httpx.TransportError:
                text = ""
            if text and done(text):  # type: ignore[operator]
                return text
            await asyncio.sleep(0.3)
    tail = log.read_text()[-3000:]  # noqa: ASYNC240 - a test's log, on failure
    raise AssertionError(f"the worker's metrics never moved:\n{text[-3000:]}\n{tail}")


async def test_the_worker_serves_what_its_pool_counts(config: Path, worker: Path, tmp_path: Path) -> None:
    settings = load_settings(config)
    port = settings.worker.metrics_port
    assert port is not None
    store = await Store.open(settings.store_url.get_secret_value())
    try:
        service = ApprovalService(store.approvals, settings.approvals)
        parked = await service.park_statement(
            session_id="s1", requester=Requester("agent:bot", ("ai-agents",), "person:olga@example.com"),
            resource="demo", sql="delete from orders", rule="agent-safe/write-without-where", risk="no WHERE",
        )
        # Due now: the worker's beat expires it within expiry_check_interval.
        await store.approvals.create_approval(dataclasses.replace(parked, id=parked.id + "-x",
                                                                  expires_at=parked.created_at))

        def moved(text: str) -> bool:
            return (sample(text, "jitgate_audit_witness_total", witness="file", outcome="written") >= 1
                    and sample(text, "jitgate_approvals_decided_total", kind="statement", status="expired") >= 1)

        text = await scrape_until(port, worker, moved)
        assert sample(text, "jitgate_approval_seconds_count", status="expired") >= 1
        # Counted in the pool's processes, served from one private directory of this worker's.
        (own,) = instance_dirs(tmp_path / "data")
        assert own.stat().st_mode & 0o777 == 0o700  # noqa: ASYNC240
        files = sorted(p.name for p in own.iterdir())  # noqa: ASYNC240
        assert any(name.startswith("counter_") for name in files), files
        # A new head is witnessed by a later tick, in whichever child: the sum grows.
        before = sample(text, "jitgate_audit_witness_total", witness="file", outcome="written")
        await store.audit.append_audit(events.config_changed(actor="ops", what="later"))
        await scrape_until(port, worker, lambda t: sample(
            t, "jitgate_audit_witness_total", witness="file", outcome="written") > before)
    finally:
        await store.close()


def instance_dirs(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "worker-metrics").iterdir() if p.is_dir() and not p.name.startswith("."))


def write_config(path: Path, *, data_dir: Path, store: Path, redis_url: str, port: int) -> None:
    path.write_text(yaml.safe_dump({
        "data_dir": str(data_dir),
        "store_url": f"sqlite+aiosqlite:///{store}",
        "broker_url": redis_url,
        "installation": f"metrics-{secrets.token_hex(4)}",
        "worker": {"metrics_port": port},
    }))


async def expire(config: Path, n: int) -> None:
    """`n` statement approvals that are due now: the worker's expiry sweep expires each."""
    settings = load_settings(config)
    store = await Store.open(settings.store_url.get_secret_value())
    try:
        service = ApprovalService(store.approvals, settings.approvals)
        for i in range(n):
            parked = await service.park_statement(
                session_id=f"s{i}", requester=Requester("agent:bot", ("ai-agents",), "person:olga@example.com"),
                resource="demo", sql="delete from orders", rule="agent-safe/write-without-where", risk="no WHERE",
            )
            await store.approvals.create_approval(dataclasses.replace(parked, id=parked.id + "-x",
                                                                      expires_at=parked.created_at))
    finally:
        await store.close()


def expired(text: str) -> float:
    return sample(text, "jitgate_approvals_decided_total", kind="statement", status="expired")


async def test_two_workers_on_one_data_dir_each_serve_their_own_counts(tmp_path: Path, redis_url: str) -> None:
    data = tmp_path / "data"
    # What a worker killed earlier leaves (its lock free), and a live one's (its lock held).
    stale = data / "worker-metrics" / "4194304-gone"
    stale.mkdir(parents=True)
    (stale / "lock").touch()
    (stale / "counter_4194304.db").write_bytes(b"x")
    live = data / "worker-metrics" / "4194305-live"
    live.mkdir()
    held = os.open(live / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)
    ports = free_port(), free_port()
    configs = [tmp_path / f"{name}.yaml" for name in ("a", "b")]
    for config, name, port in zip(configs, ("a", "b"), ports, strict=True):
        write_config(config, data_dir=data, store=tmp_path / f"{name}.db", redis_url=redis_url, port=port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(start_worker(configs[0], tmp_path / "a.log"))
        await scrape_until(ports[0], tmp_path / "a.log", lambda t: "jitgate_" in t)
        procs.append(start_worker(configs[1], tmp_path / "b.log"))  # after a's files exist
        await scrape_until(ports[1], tmp_path / "b.log", lambda t: "jitgate_" in t)
        assert not stale.exists() and live.exists()
        dirs = instance_dirs(data)
        assert len(dirs) == 3 and all(d.stat().st_mode & 0o777 == 0o700 for d in dirs if d != live)  # noqa: ASYNC240
        await expire(configs[0], 1)
        await expire(configs[1], 2)
        await scrape_until(ports[0], tmp_path / "a.log", lambda t: expired(t) >= 1)
        await scrape_until(ports[1], tmp_path / "b.log", lambda t: expired(t) >= 2)
        for _ in range(3):  # and they stay apart
            a = await scrape_until(ports[0], tmp_path / "a.log", lambda t: True)
            b = await scrape_until(ports[1], tmp_path / "b.log", lambda t: True)
            assert (expired(a), expired(b)) == (1, 2)
            await asyncio.sleep(0.5)
    finally:
        stop(procs)
    assert [p.returncode for p in procs] == [0, 0]
    assert instance_dirs(data) == [live]  # each removed its own at exit, not the live one
    os.close(held)


def gauge_pids(text: str) -> set[str]:
    return set(re.findall(r'^jitgate_sessions_active\{pid="(\d+)"\}', text, re.M))


async def test_a_replaced_child_leaves_no_gauge_series(config: Path, tmp_path: Path) -> None:
    settings = load_settings(config)
    port = settings.worker.metrics_port
    assert port is not None
    store = await Store.open(settings.store_url.get_secret_value())
    try:
        await store.audit.append_audit(events.config_changed(actor="ops", what="witness me"))
    finally:
        await store.close()
    log = tmp_path / "worker.log"
    proc = start_worker(config, log, concurrency=1)
    try:
        # A witness delivery in the child: its processes' values, gauges included, are in files.
        text = await scrape_until(port, log, lambda t: sample(
            t, "jitgate_audit_witness_total", witness="file", outcome="written") >= 1)
        children = gauge_pids(text) - {str(proc.pid)}
        assert children, text
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)  # no cleanup of its own: the pool just replaces it
        text = await scrape_until(port, log, lambda t: not (gauge_pids(t) & children))
        assert gauge_pids(text) == {str(proc.pid)}  # the main process's own stay
        # Its counts stay in the sum.
        assert sample(text, "jitgate_audit_witness_total", witness="file", outcome="written") >= 1
    finally:
        stop(proc)


def test_a_metrics_port_in_use_stops_the_worker(config: Path, tmp_path: Path) -> None:
    port = load_settings(config).worker.metrics_port
    log = tmp_path / "worker.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = start_worker(config, log)
        try:
            code = proc.wait(60)
        finally:
            stop(proc)
    out = log.read_text()
    assert code != 0, out
    assert f"worker.metrics_port {port}: cannot serve the worker's metrics on 127.0.0.1:{port}" in out, out
    assert "Address already in use" in out
    assert "ready." not in out  # no pool, no tasks: it never started
    assert instance_dirs(tmp_path / "data") == []  # its directory went with it


def test_a_metrics_directory_that_cannot_be_made_stops_the_worker(config: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "worker-metrics").write_text("not a directory")
    log = tmp_path / "worker.log"
    proc = start_worker(config, log)
    try:
        code = proc.wait(60)
    finally:
        stop(proc)
    out = log.read_text()
    assert code != 0 and "worker.metrics_port" in out and "worker-metrics" in out, out
    assert "ready." not in out
