"""Retention: archive the oldest records, prune them, and the chain still verifies across the
cut; the archive verifies on its own, and tampering with it shows."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import functools
import gzip
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from broker.audit import events
from broker.audit.archive import ArchiveSummary, verify_archive, write_archive
from broker.audit.chain import GENESIS_HASH
from broker.exceptions import StoreError
from broker.store import Grant, SessionStart, StatementRecord, Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


async def append_days(store: Store, clock: FakeClock, days: int, per_day: int = 3) -> None:
    for _ in range(days):
        await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(per_day)))
        clock.advance(timedelta(days=1))


async def test_prune_archives_and_the_chain_verifies_across_the_cut(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 10)  # seq 1..30, three per day
    cut = clock.now - timedelta(days=5)
    summary = await store.audit.prune_audit(before=cut, archive_dir=tmp_path)
    assert summary is not None and (summary.from_seq, summary.through_seq, summary.records) == (1, 15, 15)

    remaining = [r async for r in store.audit.iter_audit()]
    assert remaining[0].seq == 16 and remaining[0].prev_hash == summary.through_hash
    assert remaining[-1].type == "audit.prune" and remaining[-1].data["through_seq"] == 15
    report = await store.audit.verify_audit()
    assert report.ok and report.first_seq == 16 and report.checked == 16

    archived, trailer = verify_archive(summary.path)
    assert archived.ok and archived.checked == 15 and trailer is not None
    assert trailer["through_hash"] == summary.through_hash

    # A second prune chains onto the first: its archive starts where the first ended.
    clock.advance(timedelta(days=3))
    second = await store.audit.prune_audit(before=clock.now - timedelta(days=4), archive_dir=tmp_path)
    assert second is not None and second.prev_hash == summary.through_hash and second.from_seq == 16
    assert (await store.audit.verify_audit()).ok
    assert await store.audit.prune_audit(before=cut - timedelta(days=30), archive_dir=tmp_path) is None


async def test_deleting_the_first_record_after_the_cut_is_detected(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 4)
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=2), archive_dir=tmp_path)
    assert summary is not None
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": summary.through_seq + 1})
    b = (await store.audit.verify_audit()).broken
    assert b is not None and (b.seq, b.kind) == (summary.through_seq + 2, "missing")


async def test_a_broken_chain_is_not_archived(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    await append_days(store, clock, 4)
    async with store.engine.begin() as conn:
        await conn.execute(text("UPDATE audit_events SET actor = 'x' WHERE seq = 2"))
    with pytest.raises(ValueError, match="broken at seq 2"):
        await store.audit.prune_audit(before=clock.now, archive_dir=tmp_path)
    assert os.listdir(tmp_path) == []  # noqa: ASYNC240 - a test's temp dir
    assert len([r async for r in store.audit.iter_audit()]) == 12


async def test_a_tampered_archive_is_detected(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    await append_days(store, clock, 4)
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert summary is not None
    with gzip.open(summary.path, "rt") as f:
        lines = f.read().splitlines()
    record = json.loads(lines[1])
    record["data"]["what"] = "nothing to see"
    lines[1] = json.dumps(record)
    forged = tmp_path / "forged.jsonl.gz"
    with gzip.open(forged, "wt") as f:
        f.write("\n".join(lines) + "\n")
    report, _ = verify_archive(forged)
    assert not report.ok and report.broken is not None and report.broken.seq == 2
    # Dropping the tail (trailer included) is caught too.
    with gzip.open(forged, "wt") as f:
        f.write("\n".join(lines[:3]) + "\n")
    assert not verify_archive(forged)[0].ok


async def test_one_old_event_time_does_not_pull_younger_records_into_the_prune(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 4)  # seq 1..12, three a day from day 0
    # A statement recorded now whose event time is long ago (its batch was written late).
    grant = Grant(None, "agent:demo", ("ai-agents",), "demo", "readwrite", clock.now + timedelta(days=30), True)
    sid = await store.sessions.start_session(SessionStart(grant, client_addr="10.0.0.7:5000", application_name="psql"))
    await store.sessions.record_statements([StatementRecord(session_id=sid, seq=1, sql="select 1", decision="allow",
                                                   started_at=clock.now - timedelta(days=10))])
    old = [r async for r in store.audit.iter_audit() if r.type == "statement"]
    assert len(old) == 1 and old[0].seq == 14
    # Retention of two days: only days 0 and 1 (seq 1..6) are older than the cutoff.
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=2), archive_dir=tmp_path)
    assert summary is not None and (summary.from_seq, summary.through_seq) == (1, 6)
    assert (await store.audit.verify_audit()).ok


async def test_prunes_are_serialised_and_a_waiting_one_signs_nothing_stale(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 4)
    signed: list[tuple[int, int]] = []
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(summary: ArchiveSummary) -> None:
        signed.append((summary.from_seq, summary.through_seq))
        entered.set()
        await release.wait()

    async def quick(summary: ArchiveSummary) -> None:
        signed.append((summary.from_seq, summary.through_seq))

    first = asyncio.create_task(store.audit.prune_audit(before=clock.now - timedelta(days=1),
        archive_dir=tmp_path / "1",
                                                  on_archived=slow))
    await asyncio.wait_for(entered.wait(), 10)
    second = asyncio.create_task(store.audit.prune_audit(before=clock.now, archive_dir=tmp_path / "2",
        on_archived=quick))
    await asyncio.sleep(0.5)
    assert signed == [(1, 9)] and not second.done()  # waits for the first, has signed nothing
    release.set()
    assert (await first) is not None
    done = await asyncio.wait_for(second, 10)
    # It starts where the first ended: the signed prunes follow each other.
    assert done is not None and signed == [(1, 9), (10, 12)]  # seq 13, the prune record, is not older
    assert (await store.audit.verify_audit()).ok


def archive_path(archive_dir: Path, from_seq: int, through_seq: int) -> Path:
    return archive_dir / f"audit-{from_seq:012d}-{through_seq:012d}.jsonl.gz"


def listing(archive_dir: Path) -> list[str]:
    return sorted(p.name for p in archive_dir.iterdir())


async def archive_like_a_dead_prune(
    store: Store, archive_dir: Path, through: int, *, name_through: int | None = None
) -> Path:
    """What a prune that died after archiving (and maybe signing) leaves: its archive only."""
    path = archive_path(archive_dir, 1, name_through or through)
    await write_archive(path, store.audit.iter_audit(to_seq=through), prev_seq=0, prev_hash=GENESIS_HASH)
    return path


async def test_an_unfinished_prune_is_finished_at_its_cut_before_a_new_one(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 4)  # seq 1..12
    kept = await archive_like_a_dead_prune(store, tmp_path, 6)
    _, trailer = verify_archive(kept)
    signed: list[dict[str, object]] = []

    async def sign(summary: ArchiveSummary) -> None:
        signed.append(summary.trailer()["archive"])

    # `before` would cut through 12; the earlier run's cut is kept.
    done = await store.audit.prune_audit(before=clock.now, archive_dir=tmp_path, on_archived=sign)
    assert done is not None and done.resumed and (done.from_seq, done.through_seq, done.path) == (1, 6, kept)
    assert signed == [trailer]  # what is signed again is the archive the earlier run signed
    assert (await store.audit.audit_state()).anchor_seq == 6  # type: ignore[union-attr]
    new = await store.audit.prune_audit(before=clock.now, archive_dir=tmp_path, on_archived=sign)
    assert new is not None and not new.resumed and (new.from_seq, new.prev_hash) == (7, done.through_hash)
    assert (await store.audit.verify_audit()).ok
    assert listing(tmp_path) == [kept.name, new.path.name]  # no check file left


async def test_a_junk_file_under_an_unfinished_prunes_name_moves_nothing(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    # Whoever can write the archive dir must not be able to make a prune take recent records.
    await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(5)))
    junk = archive_path(tmp_path, 1, 5)
    junk.write_bytes(b"junk")
    with pytest.raises(StoreError, match=f"{junk.name} .* is not a whole archive .*nothing deleted.*move it out"):
        await store.audit.prune_audit(before=clock.now - timedelta(days=365), archive_dir=tmp_path)
    assert (await store.audit.audit_state()).anchor_seq == 0  # type: ignore[union-attr]
    assert [r.seq async for r in store.audit.iter_audit()] == [1, 2, 3, 4, 5]
    assert listing(tmp_path) == [junk.name] and junk.read_bytes() == b"junk"


async def test_a_damaged_unfinished_archive_is_not_replaced(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    await append_days(store, clock, 2)
    kept = await archive_like_a_dead_prune(store, tmp_path, 4)
    kept.write_bytes(damaged := kept.read_bytes()[:40])
    with pytest.raises(StoreError, match="is not a whole archive"):
        await store.audit.prune_audit(before=clock.now, archive_dir=tmp_path)
    assert (await store.audit.audit_state()).anchor_seq == 0  # type: ignore[union-attr]
    assert kept.read_bytes() == damaged and listing(tmp_path) == [kept.name]


async def test_an_archive_of_recent_records_is_finished_only_if_a_witness_holds_it(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    # A valid archive of the live chain (anyone who can read the store can write one): its cut
    # is not one `before` allows, so only a witness's signed prune entry makes it a prune to finish.
    await append_days(store, clock, 2)  # seq 1..6, none older than a year
    kept = await archive_like_a_dead_prune(store, tmp_path, 6)
    asked: list[Path] = []

    async def held(answer: bool, summary: ArchiveSummary) -> bool:
        asked.append(summary.path)
        return answer

    year_ago = clock.now - timedelta(days=365)
    with pytest.raises(StoreError, match=f"{kept.name} .*no witness holds .*seq 1 .* not older than"):
        await store.audit.prune_audit(before=year_ago, archive_dir=tmp_path)
    with pytest.raises(StoreError, match="no witness holds"):
        await store.audit.prune_audit(
            before=year_ago, archive_dir=tmp_path, held_by_witness=functools.partial(held, False)
        )
    assert asked == [kept] and (await store.audit.audit_state()).anchor_seq == 0  # type: ignore[union-attr]
    assert listing(tmp_path) == [kept.name]
    done = await store.audit.prune_audit(
        before=year_ago, archive_dir=tmp_path, held_by_witness=functools.partial(held, True)
    )
    assert done is not None and done.resumed and (done.from_seq, done.through_seq) == (1, 6)
    assert (await store.audit.verify_audit()).ok


async def test_an_unwitnessed_archive_within_the_cutoff_is_finished(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    # A prune that died before any witness took its entry: the cut is one this prune would
    # make anyway, so it is finished (and signed now) rather than left to an operator.
    await append_days(store, clock, 4)  # seq 1..12
    kept = await archive_like_a_dead_prune(store, tmp_path, 6)

    async def not_held(summary: ArchiveSummary) -> bool:
        return False

    done = await store.audit.prune_audit(
        before=clock.now - timedelta(days=1), archive_dir=tmp_path, held_by_witness=not_held
    )
    assert done is not None and done.resumed and (done.through_seq, done.path) == (6, kept)
    assert (await store.audit.verify_audit()).ok


async def test_an_unfinished_archive_the_chain_no_longer_matches_stops_the_prune(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 4)
    kept = await archive_like_a_dead_prune(store, tmp_path, 5, name_through=6)  # valid, but not 1..6
    with pytest.raises(StoreError, match="is not what the chain now holds from seq 1: nothing deleted"):
        await store.audit.prune_audit(before=clock.now, archive_dir=tmp_path)
    assert (await store.audit.audit_state()).anchor_seq == 0  # type: ignore[union-attr]
    assert listing(tmp_path) == [kept.name]


async def test_two_unfinished_prunes_from_one_start_are_left_to_an_operator(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await append_days(store, clock, 4)
    await archive_like_a_dead_prune(store, tmp_path, 6)
    await archive_like_a_dead_prune(store, tmp_path, 9)
    with pytest.raises(StoreError, match="more than one unfinished prune from seq 1"):
        await store.audit.prune_audit(before=clock.now, archive_dir=tmp_path)
    assert (await store.audit.audit_state()).anchor_seq == 0  # type: ignore[union-attr]
