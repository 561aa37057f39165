"""The external witness against someone with write access to the store, on SQLite and
PostgreSQL: each attack passes the chain's own check (shown first) and is caught by the
witness with the first bad record named."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from broker.audit import events
from broker.audit.archive import ArchiveSummary, write_archive
from broker.audit.chain import GENESIS_HASH, TailLimits, canonical_json, seal
from broker.audit.signing import CheckpointVerifier
from broker.audit.witness import WITNESSED, WitnessEntry, WitnessError, prune_entry, read_witness
from broker.audit.witnessing import FileWitness, Outbox, WitnessSetup, deliver, prune_witnessed, witness_head
from broker.store import Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401

KEY = Ed25519PrivateKey.generate()
CHECKPOINTS = CheckpointVerifier([KEY.public_key()])


@pytest.fixture
def setup(tmp_path: Path) -> WitnessSetup:
    return WitnessSetup(KEY, [FileWitness(tmp_path / "witness" / "audit.jsonl")], tmp_path / "state")


def witness_path(setup: WitnessSetup) -> Path:
    witness = setup.witnesses[0]
    assert isinstance(witness, FileWitness)
    return witness.path


async def append(store: Store, n: int, start: int = 0) -> None:
    await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(start, start + n)))


async def build(store: Store, setup: WitnessSetup) -> None:
    """seq 1..5, checkpoint 6 (witnessed), seq 7..9, checkpoint 10 (witnessed), seq 11..12."""
    await append(store, 5)
    assert (await witness_head(store.audit, setup)) == {"seq": 6, "hash": (await store.audit.audit_head()).hash,  # type: ignore[union-attr]
                                                  "witnesses": {w.name: "written" for w in setup.witnesses}}
    await append(store, 3, 5)
    await witness_head(store.audit, setup)
    await append(store, 2, 8)


async def verify(store: Store, setup: WitnessSetup):  # type: ignore[no-untyped-def]
    witness = read_witness(witness_path(setup), [KEY.public_key()])
    return await store.audit.verify_audit(checkpoints=CHECKPOINTS, witness=witness)


async def sql(store: Store, stmt: str, **params: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(stmt), params)


async def record_id(store: Store, seq: int) -> str:
    record = await store.audit.audit_record(seq)
    assert record is not None
    return record.id


async def rehash(store: Store, *, edit_seq: int | None = None, drop_types: tuple[str, ...] = ()) -> None:
    """What a forger with write access and no key does: edit or drop records, renumber, then
    recompute every hash and rewrite `audit_state` to match."""
    records = [r async for r in store.audit.iter_audit()]
    kept = [r for r in records if r.type not in drop_types]
    prev = GENESIS_HASH
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events"))
        for seq, r in enumerate(kept, 1):
            data = {**r.data, "what": "forged"} if r.seq == edit_seq else r.data
            new = seal(seq=seq, id=r.id, ts=r.ts, type=r.type, actor=r.actor, session_id=r.session_id, data=data,
                       prev_hash=prev)
            await conn.execute(
                text("INSERT INTO audit_events (seq, id, ts, type, actor, session_id, data, prev_hash, hash) "
                     "VALUES (:s, :i, :t, :ty, :a, :sid, :d, :p, :h)"),
                {"s": seq, "i": r.id, "t": r.ts, "ty": r.type, "a": r.actor, "sid": r.session_id,
                 "d": json.dumps(new.data), "p": new.prev_hash, "h": new.hash},
            )
            prev = new.hash
        await conn.execute(text("UPDATE audit_state SET head_seq = :s, head_hash = :h"), {"s": len(kept), "h": prev})


def written(witness: str = "file") -> float:
    return WITNESSED.labels(witness, "written")._value.get()


async def test_witnessed_chain_verifies_anchored(store: Store, setup: WitnessSetup) -> None:
    before = written()
    await build(store, setup)
    assert written() == before + 2  # jitgate_audit_witness_total{witness="file",outcome="written"}
    lines = [json.loads(line) for line in witness_path(setup).read_text().splitlines()]
    assert [(e["kind"], e["seq"]) for e in lines] == [("checkpoint", 6), ("checkpoint", 10)]
    report = await verify(store, setup)
    assert report.ok and report.anchored and report.witnessed_through == 10 and report.signed_through == 9
    # An idle chain is not signed again: the head already is a witnessed checkpoint.
    await witness_head(store.audit, setup)
    await witness_head(store.audit, setup)
    assert len(witness_path(setup).read_text().splitlines()) == 3


async def test_tail_truncation_with_the_head_rewritten(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    await sql(store, "DELETE FROM audit_events WHERE seq > 7")
    last = await store.audit.audit_record(7)
    assert last is not None
    await sql(store, "UPDATE audit_state SET head_seq = 7, head_hash = :h", h=last.hash)
    assert (await store.audit.verify_audit(checkpoints=CHECKPOINTS)).ok  # the store alone cannot tell
    report = await verify(store, setup)
    assert not report.ok and report.broken is not None
    assert (report.broken.seq, report.broken.kind) == (8, "truncated")
    assert "witness signed seq 10" in report.broken.detail


async def test_prefix_deletion_with_the_anchor_moved(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    fourth = await store.audit.audit_record(4)
    assert fourth is not None
    first_left = await record_id(store, 5)
    await sql(store, "DELETE FROM audit_events WHERE seq <= 4")
    await sql(store, "UPDATE audit_state SET anchor_seq = 4, anchor_hash = :h", h=fourth.hash)
    assert (await store.audit.verify_audit(checkpoints=CHECKPOINTS)).ok  # passes as a prune
    b = (await verify(store, setup)).broken
    assert b is not None and (b.seq, b.id, b.kind) == (5, first_left, "unwitnessed_prune")


async def test_checkpoint_deletion_with_a_rehash(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    await rehash(store, drop_types=("audit.checkpoint",))
    assert (await store.audit.verify_audit()).ok
    # The in-store checkpoints are gone with the signature checks they carried ...
    assert (await store.audit.verify_audit(checkpoints=CHECKPOINTS)).signed_through is None
    # ... but seq 6 was witnessed as the first checkpoint, and now holds another record.
    b = (await verify(store, setup)).broken
    assert b is not None and (b.seq, b.id, b.kind) == (6, await record_id(store, 6), "witness_mismatch")
    assert "after seq 0 up to this one were rewritten" in b.detail


async def test_full_rehash_without_the_key(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    await rehash(store, edit_seq=8)
    assert (await store.audit.verify_audit()).ok
    tenth = await record_id(store, 10)
    # Seq 6 still matches; the first witnessed record after the edit is where it shows: the
    # in-store checkpoint there no longer verifies, and the witness holds another hash.
    b = (await verify(store, setup)).broken
    assert b is not None and (b.seq, b.id, b.kind) == (10, tenth, "bad_checkpoint")
    witness = read_witness(witness_path(setup), [KEY.public_key()])
    b = (await store.audit.verify_audit(witness=witness)).broken
    assert b is not None and (b.seq, b.id, b.kind) == (10, tenth, "witness_mismatch")
    assert "records after seq 6 up to this one were rewritten" in b.detail


async def test_witnessed_prune_verifies_and_an_unwitnessed_one_does_not(
    store: Store, clock: FakeClock, setup: WitnessSetup, tmp_path: Path
) -> None:
    await build(store, setup)
    clock.advance(timedelta(days=2))
    await append(store, 3, 20)
    summary = await prune_witnessed(store.audit, setup, before=clock.now - timedelta(days=1),
        archive_dir=tmp_path / "a")
    assert summary is not None and summary.through_seq == 12
    entries = [json.loads(line) for line in witness_path(setup).read_text().splitlines()]
    prune = [e for e in entries if e["kind"] == "prune"]
    assert len(prune) == 1 and prune[0]["archive"]["sha256"] == summary.sha256
    assert prune[0]["archive"]["through_hash"] == summary.through_hash
    # The prune record is signed in the store and witnessed after it.
    assert entries[-1]["kind"] == "checkpoint" and entries[-1]["seq"] == (await store.audit.audit_head()).seq  # type: ignore[union-attr]
    report = await verify(store, setup)
    assert report.ok and report.anchored, report

    # A prune the witness never saw: the anchor matches no witnessed prune.
    clock.advance(timedelta(days=2))
    await append(store, 2, 30)
    bare = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path / "a")
    assert bare is not None
    b = (await verify(store, setup)).broken
    assert b is not None and b.kind == "unwitnessed_prune" and b.seq == bare.through_seq + 1


async def test_witness_refuses_to_sign_a_rewritten_chain(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    await rehash(store, edit_seq=8)
    before = witness_path(setup).read_text()
    with pytest.raises(WitnessError, match="no longer holds witnessed seq 10"):
        await witness_head(store.audit, setup)
    assert witness_path(setup).read_text() == before


async def test_unanchored_verification_says_what_was_not_checked(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    bare = await store.audit.verify_audit()
    assert bare.ok and not bare.anchored
    assert any("no public key" in why for why in bare.unanchored)
    assert any("no witness" in why for why in bare.unanchored)
    assert (await verify(store, setup)).unanchored == ()


# -- issue 16, red-team findings ------------------------------------------------------------


async def verify_range(store: Store, setup: WitnessSetup, **kw: Any):  # type: ignore[no-untyped-def]
    witness = read_witness(witness_path(setup), [KEY.public_key()])
    return await store.audit.verify_audit(checkpoints=CHECKPOINTS, witness=witness, **kw)


async def test_a_range_must_reach_its_end_and_every_witnessed_seq_in_it(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    # The clean case: a range verifies, and says its start was taken on trust.
    clean = await verify_range(store, setup, from_seq=3, to_seq=11)
    assert clean.ok and clean.checked == 9 and clean.trusted_start == 3, clean
    assert (await verify_range(store, setup, to_seq=11)).trusted_start is None  # from the chain's start
    # Seq 8..11 deleted and the head moved back to 7: the whole chain was already caught ...
    seventh = await store.audit.audit_record(7)
    assert seventh is not None
    await sql(store, "DELETE FROM audit_events WHERE seq BETWEEN 8 AND 12")
    await sql(store, "UPDATE audit_state SET head_seq = 7, head_hash = :h", h=seventh.hash)
    assert (await verify(store, setup)).broken.kind == "truncated"  # type: ignore[union-attr]
    # ... and now ranges are too: witnessed seq 10 lies inside them.
    for kw in ({"to_seq": 11}, {"from_seq": 1, "to_seq": 100}, {"from_seq": 5, "to_seq": 11}):
        b = (await verify_range(store, setup, **kw)).broken
        assert b is not None and (b.seq, b.kind) == (8, "truncated"), (kw, b)
        assert "witness signed seq 10" in b.detail
    # A range below the cut still holds.
    assert (await verify_range(store, setup, to_seq=7)).ok


async def test_a_range_must_reach_the_head_without_a_witness(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    await sql(store, "DELETE FROM audit_events WHERE seq BETWEEN 8 AND 11")  # the head (12) untouched
    b = (await store.audit.verify_audit(to_seq=11)).broken
    assert b is not None and (b.seq, b.kind) == (8, "truncated")
    assert (await store.audit.verify_audit(to_seq=7)).ok


async def test_the_unwitnessed_tail_is_reported_and_can_fail_verify(
    store: Store, setup: WitnessSetup, clock: FakeClock
) -> None:
    await build(store, setup)  # seq 11..12 come after the last witnessed checkpoint (10)
    report = await verify(store, setup)
    assert report.ok and (report.unwitnessed_from, report.unwitnessed_to) == (11, 12)
    assert report.last_witness_ts is not None and not report.partially_anchored
    out = report.to_json()
    assert out["unwitnessed"]["records"] == 2 and out["last_witness_ts"].endswith("Z")
    eleventh = await record_id(store, 11)
    b = (await verify_range(store, setup, limits=TailLimits(max_records=1))).broken
    assert b is not None and (b.seq, b.id, b.kind) == (11, eleventh, "unwitnessed_tail")
    assert (await verify_range(store, setup, limits=TailLimits(max_records=2))).ok
    # Five minutes without a witness entry: past two intervals, and past a 4-minute limit.
    clock.advance(timedelta(minutes=5))
    late = await verify(store, setup)
    assert late.ok and late.anchored and late.partially_anchored
    b = (await verify_range(store, setup, limits=TailLimits(max_age=timedelta(minutes=4)))).broken
    assert b is not None and (b.seq, b.kind) == (11, "unwitnessed_tail") and "longer than" in b.detail
    slower = await verify_range(store, setup, limits=TailLimits(interval=timedelta(minutes=3)))
    assert slower.partially_anchored is False
    # Witnessed again: no tail, and the limits pass.
    await witness_head(store.audit, setup)
    fresh = await verify_range(store, setup, limits=TailLimits(max_records=0, max_age=timedelta(seconds=1)))
    assert fresh.ok and fresh.unwitnessed_from is None and fresh.to_json()["unwitnessed"] is None


class ListWitness:
    """A witness that only keeps what it is given, as a webhook's receiver would."""

    def __init__(self, name: str = "webhook") -> None:
        self.name = name
        self.lines: list[str] = []

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        self.lines += [e.line() for e in entries]

    async def aclose(self) -> None:
        return None


def refused(witness: str) -> float:
    return WITNESSED.labels(witness, "refused")._value.get()


async def test_a_webhook_only_worker_refuses_to_sign_a_rewritten_chain(store: Store, tmp_path: Path) -> None:
    hook = ListWitness()
    setup = WitnessSetup(KEY, [hook], tmp_path / "state")
    await build(store, setup)
    assert len(hook.lines) == 2
    state = json.loads((tmp_path / "state" / "witness-webhook.last").read_text())
    assert (state["seq"], state["hash"]) == (10, (await store.audit.audit_record(10)).hash)  # type: ignore[union-attr]
    await rehash(store, edit_seq=8)
    before = refused("webhook")
    with pytest.raises(WitnessError, match="no longer holds witnessed seq 10"):
        await witness_head(store.audit, setup)
    assert refused("webhook") == before + 1 and len(hook.lines) == 2  # nothing signed


async def test_a_worker_refuses_when_the_anchor_left_the_last_witnessed_prune(
    store: Store, setup: WitnessSetup, clock: FakeClock, tmp_path: Path
) -> None:
    await build(store, setup)
    clock.advance(timedelta(days=2))
    await append(store, 3, 20)  # seq 13..15

    async def witnessed(summary: ArchiveSummary) -> None:
        await deliver(setup.witnesses, prune_entry(KEY, summary), state_dir=setup.state_dir)

    # A prune whose witness entry is the file's last line (no checkpoint after it).
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path / "a",
                                      on_archived=witnessed)
    assert summary is not None and summary.through_seq == 12
    assert json.loads(witness_path(setup).read_text().splitlines()[-1])["kind"] == "prune"
    # The insider cuts further and moves the anchor to match.
    fourteenth = await store.audit.audit_record(14)
    assert fourteenth is not None
    await sql(store, "DELETE FROM audit_events WHERE seq <= 14")
    await sql(store, "UPDATE audit_state SET anchor_seq = 14, anchor_hash = :h", h=fourteenth.hash)
    before = witness_path(setup).read_text()
    with pytest.raises(WitnessError, match="the prune through seq 12"):
        await witness_head(store.audit, setup)
    assert witness_path(setup).read_text() == before
    with pytest.raises(WitnessError):
        await prune_witnessed(store.audit, setup, before=clock.now, archive_dir=tmp_path / "a")


async def test_the_clean_prune_is_still_signed(
    store: Store, setup: WitnessSetup, clock: FakeClock, tmp_path: Path
) -> None:
    hook = ListWitness()
    setup.witnesses.append(hook)
    await build(store, setup)
    clock.advance(timedelta(days=2))
    await append(store, 3, 20)
    assert await prune_witnessed(store.audit, setup, before=clock.now - timedelta(days=1), archive_dir=tmp_path / "a")
    await append(store, 1, 40)
    done = await witness_head(store.audit, setup)
    assert done is not None and done["witnesses"] == {"file": "written", "webhook": "written"}
    assert (await verify(store, setup)).ok


async def test_a_duplicate_key_in_stored_data_is_caught(store: Store, setup: WitnessSetup) -> None:
    await build(store, setup)
    record = await store.audit.audit_record(2)
    assert record is not None and record.data["what"] == "k1"
    forged = canonical_json(record.data).replace('"what":"k1"', '"what":"k1-FORGED","what":"k1"')
    await sql(store, "UPDATE audit_events SET data = :d WHERE seq = 2", d=forged)
    b = (await verify(store, setup)).broken
    assert b is not None and (b.seq, b.id, b.kind) == (2, record.id, "altered")
    assert "duplicate key 'what'" in b.detail
    # The same text without the duplicate is what was hashed: fine again.
    await sql(store, "UPDATE audit_events SET data = :d WHERE seq = 2", d=canonical_json(record.data))
    assert (await verify(store, setup)).ok


async def test_prunes_in_the_witness_must_follow_each_other(
    store: Store, setup: WitnessSetup, clock: FakeClock, tmp_path: Path
) -> None:
    await build(store, setup)
    clock.advance(timedelta(days=2))
    await append(store, 3, 20)  # seq 13..15
    # What a lost race left before prunes were serialised: a second signed prune from the same
    # start (through seq 14), its archive deleted.
    loser = await write_archive(tmp_path / "loser.jsonl.gz", store.audit.iter_audit(to_seq=14), prev_seq=0,
                                prev_hash=GENESIS_HASH)
    await FileWitness(witness_path(setup)).write([prune_entry(KEY, loser)])
    summary = await prune_witnessed(store.audit, setup, before=clock.now - timedelta(days=1),
        archive_dir=tmp_path / "a")
    assert summary is not None and summary.through_seq == 12
    # The insider deletes up to the loser's cut and sets the anchor there.
    await sql(store, "DELETE FROM audit_events WHERE seq <= 14")
    await sql(store, "UPDATE audit_state SET anchor_seq = 14, anchor_hash = :h", h=loser.through_hash)
    b = (await verify(store, setup)).broken
    assert b is not None and (b.seq, b.kind) == (15, "unwitnessed_prune")
    assert "prunes must follow each other" in b.detail


class DownWitness(ListWitness):
    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        raise OSError("down")


async def test_a_prune_no_witness_took_is_not_queued_for_later(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    setup = WitnessSetup(KEY, [DownWitness()], tmp_path / "state")
    await append(store, 3)
    clock.advance(timedelta(days=2))
    with pytest.raises(WitnessError, match="no witness took the prune entry"):
        await prune_witnessed(store.audit, setup, before=clock.now - timedelta(days=1), archive_dir=tmp_path / "a")
    # Nothing was pruned, so the witness must never get that entry on a later run.
    assert Outbox(tmp_path / "state", "webhook").pending() == []
    assert (await store.audit.audit_state()).anchor_seq == 0  # type: ignore[union-attr]
