"""The witness outbox: a prune one witness missed reaches it when it is back, and the worker
keeps signing meanwhile; overlapping runs (prefork children, `jitgate audit checkpoint` next
to the worker) lose no queued entry."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import structlog.testing

from broker.audit.witness import WitnessEntry, WitnessError, read_witness, sign_entry
from broker.audit.witnessing import FileWitness, Outbox, Witness, WitnessSetup, deliver, prune_witnessed, witness_head
from broker.store import Store
from tests.broker.audit.test_witness import CHECKPOINTS, KEY, ListWitness, append, build, sql
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


class FlakyFile(FileWitness):
    """The file witness on a volume that can go away for a while."""

    down = False

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        if self.down:
            raise OSError("volume gone")
        await super().write(entries)


def kinds(path: Path) -> list[tuple[str, int]]:
    return [(e["kind"], e["seq"]) for e in map(json.loads, path.read_text().splitlines())]


async def test_a_prune_the_file_witness_missed_reaches_it_when_it_is_back(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    file = FlakyFile(tmp_path / "worm" / "audit.jsonl")
    hook = ListWitness()
    setup = WitnessSetup(KEY, [file, hook], tmp_path / "state")
    await build(store, setup)  # checkpoints 6 and 10 in both witnesses, then seq 11..12
    clock.advance(timedelta(days=2))
    await append(store, 3, 20)  # seq 13..15, young
    file.down = True
    with structlog.testing.capture_logs() as logs:
        summary = await prune_witnessed(store.audit, setup, before=clock.now - timedelta(days=1),
                                        archive_dir=tmp_path / "a")
    # The webhook took the prune entry, so the prune went ahead (past the file's last
    # checkpoint, 10), and it says so: nothing refused.
    assert summary is not None and summary.through_seq == 12
    assert (await store.audit.audit_state()).anchor_seq == 12  # type: ignore[union-attr]
    assert not [e for e in logs if e["event"] == "audit_witness_refused"]
    pruned = next(e for e in logs if e["event"] == "audit_pruned")
    assert pruned["through_seq"] == 12 and pruned["witnesses"] == {"file": "failed", "webhook": "written"}
    assert Outbox(setup.state_dir, "file").pending()[0].kind == "prune"
    assert kinds(file.path)[-1] == ("checkpoint", 10)

    # Still down: the webhook is still signed for; the file's queue grows.
    await append(store, 1, 30)
    down = await witness_head(store.audit, setup)
    assert down is not None and down["witnesses"] == {"file": "failed", "webhook": "written"}

    # Back: the next scheduled run delivers the queued prune entry, then signs the head.
    file.down = False
    await append(store, 1, 31)
    back = await witness_head(store.audit, setup)
    assert back is not None and back["witnesses"] == {"file": "written", "webhook": "written"}
    assert Outbox(setup.state_dir, "file").pending() == []
    got = kinds(file.path)
    assert got[:3] == [("checkpoint", 6), ("checkpoint", 10), ("prune", 12)] and got[-1] == ("checkpoint", back["seq"])
    report = await store.audit.verify_audit(checkpoints=CHECKPOINTS, witness=read_witness(file.path,
        [KEY.public_key()]))
    assert report.ok and report.anchored and report.witnessed_through == back["seq"]


async def test_a_queued_prune_covers_only_its_own_cut(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    """While the file is down, its last checkpoint is covered by the queued prune only if that
    prune is signed and ends at the store's anchor: a further cut, or a forged entry in the
    queue, is still refused."""
    file = FlakyFile(tmp_path / "worm" / "audit.jsonl")
    setup = WitnessSetup(KEY, [file, ListWitness()], tmp_path / "state")
    await build(store, setup)
    clock.advance(timedelta(days=2))
    await append(store, 3, 20)
    file.down = True
    assert await prune_witnessed(store.audit, setup, before=clock.now - timedelta(days=1), archive_dir=tmp_path / "a")
    outbox = Outbox(setup.state_dir, "file")
    queued = outbox.pending()
    prune = queued[0]
    assert prune.kind == "prune" and prune.seq == 12

    forged = dataclasses.replace(prune, signature=base64.b64encode(b"x" * 64).decode())
    outbox.save([forged], outbox.delivered())
    with pytest.raises(WitnessError, match=r"file \(in the file\): the chain no longer holds witnessed seq 10"):
        await witness_head(store.audit, setup)

    outbox.save(queued, outbox.delivered())
    fourteenth = await store.audit.audit_record(14)
    assert fourteenth is not None
    await sql(store, "DELETE FROM audit_events WHERE seq <= 14")
    await sql(store, "UPDATE audit_state SET anchor_seq = 14, anchor_hash = :h", h=fourteenth.hash)
    with pytest.raises(WitnessError, match=r"file \(in the file\): .* seq 10 .* anchor is seq 14"):
        await witness_head(store.audit, setup)


class SlowDown:
    """A witness that is down and slow to say so: overlapping runs both wait in `write`."""

    name = "file"

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        await asyncio.sleep(0.05)
        raise OSError("down")

    async def aclose(self) -> None:
        return None


def test_overlapping_deliveries_lose_no_queued_entry(tmp_path: Path) -> None:
    state = tmp_path / "state"
    entries = [
        sign_entry(KEY, kind="prune", seq=n, id=None, hash_=f"{n:064x}",
                   archive={"from_seq": 1, "through_seq": n, "through_hash": f"{n:064x}", "sha256": "ab" * 32})
        for n in range(1, 9)
    ]
    start = threading.Barrier(len(entries))

    def run(entry: WitnessEntry) -> dict[str, str]:
        start.wait()
        witnesses: list[Witness] = [SlowDown()]
        return asyncio.run(deliver(witnesses, entry, state_dir=state))

    with ThreadPoolExecutor(len(entries)) as pool:
        outcomes = list(pool.map(run, entries))  # re-raises a run's exception (a lost tmp file)
    assert outcomes == [{"file": "failed"}] * len(entries)
    assert sorted(e.seq for e in Outbox(state, "file").pending()) == list(range(1, 9))
    assert sorted(p.name for p in state.iterdir()) == ["witness-file.last", "witness-file.outbox.jsonl", "witness.lock"]
