"""A real `jitgate worker` (Celery with beat, on the real Redis) signs the audit chain's head
on its schedule and writes it to the witness file, and the chain then verifies anchored."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import events
from broker.audit.signing import CheckpointVerifier, new_private_key
from broker.audit.witness import read_witness
from broker.store import Store
from tests.processes import running_worker, witness_worker_config


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return new_private_key(tmp_path / "audit.pem")


@pytest.fixture
def config(tmp_path: Path, redis_url: str, key: Ed25519PrivateKey) -> Path:
    return witness_worker_config(tmp_path, redis_url, "witness")


@pytest.fixture
def worker(config: Path, tmp_path: Path) -> Iterator[Path]:
    with running_worker(config, tmp_path / "worker.log", concurrency=1) as log:
        yield log


def entries(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def wait_for_seq(path: Path, seq: int, log: Path, seconds: float = 45.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = entries(path)
        if got and int(got[-1]["seq"]) >= seq:  # type: ignore[call-overload]
            return got
        await asyncio.sleep(0.2)
    tail = log.read_text()[-3000:]  # noqa: ASYNC240 - a test's log, on failure
    raise AssertionError(f"no witness entry for seq {seq}: {entries(path)}\n{tail}")


async def test_beat_writes_checkpoints_to_the_witness(
    config: Path, worker: Path, tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    witness = tmp_path / "worm" / "witness.jsonl"
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/jitgate.db")
    try:
        await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(3)))
        # The worker appends checkpoint seq 4 (signing seq 3) and witnesses it.
        first = await wait_for_seq(witness, 4, worker)
        assert first[-1]["kind"] == "checkpoint"
        cp = await store.audit.audit_record(4)
        assert cp is not None and cp.type == "audit.checkpoint" and first[-1]["hash"] == cp.hash
        # More records: the next tick covers them, without anyone asking.
        await store.audit.append_audit(events.config_changed(actor="ops", what="later"))
        second = await wait_for_seq(witness, 6, worker)
        assert [e["seq"] for e in second] == [4, 6]
        report = await store.audit.verify_audit(
            checkpoints=CheckpointVerifier([key.public_key()]), witness=read_witness(witness, [key.public_key()])
        )
        assert report.ok and report.anchored and report.witnessed_through == 6
    finally:
        await store.close()
