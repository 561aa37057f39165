"""A real `jitgate worker` (prefork pool of two, beat, the real Redis) with `worker.metrics_port`
serves on that port what its pool's processes count: witness deliveries and an approval it
expired, both counted in the children, summed by the main process."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.approvals.service import ApprovalService, Requester
from broker.audit import events
from broker.config import load_settings
from broker.store import Store
from tests.conftest import free_port
from tests.processes import start, stop


@pytest.fixture
def config(tmp_path: Path, redis_url: str) -> Path:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "audit.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path = tmp_path / "jitgate.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "store_url": f"sqlite+aiosqlite:///{tmp_path}/jitgate.db",
        "broker_url": redis_url,
        "installation": f"metrics-{secrets.token_hex(4)}",  # its own queue: no other worker takes the ticks
        "worker": {"metrics_port": free_port()},
        "audit": {
            "signing_key_file": str(tmp_path / "audit.pem"),
            "witness": {"file": str(tmp_path / "worm" / "witness.jsonl"), "interval": "1s"},
        },
    }))
    return path


@pytest.fixture
def worker(config: Path, tmp_path: Path) -> Iterator[Path]:
    log = tmp_path / "worker.log"
    proc = start(["worker", "--config", str(config), "--concurrency", "2"], log=log,
                 env={"JITGATE_CONFIG": str(config)})
    try:
        yield log
    finally:
        stop(proc)


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
        # Counted in the pool's processes, served from one directory of theirs.
        files = sorted(p.name for p in (tmp_path / "data" / "worker-metrics").iterdir())  # noqa: ASYNC240
        assert any(name.startswith("counter_") for name in files), files
        # A new head is witnessed by a later tick, in whichever child: the sum grows.
        before = sample(text, "jitgate_audit_witness_total", witness="file", outcome="written")
        await store.audit.append_audit(events.config_changed(actor="ops", what="later"))
        await scrape_until(port, worker, lambda t: sample(
            t, "jitgate_audit_witness_total", witness="file", outcome="written") > before)
    finally:
        await store.close()
