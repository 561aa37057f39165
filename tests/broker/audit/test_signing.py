"""Signed checkpoints: a chain rewritten with recomputed hashes passes the hash check but not
the signatures; a wrong key or a moved checkpoint is found."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from broker.audit import events
from broker.audit.chain import GENESIS_HASH, seal
from broker.audit.signing import CheckpointVerifier
from broker.store import Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401

KEY = Ed25519PrivateKey.generate()


async def build(store: Store) -> int:
    await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(5)))
    cp = await store.audit.checkpoint_audit(KEY)
    assert cp is not None and cp.seq == 6 and cp.data["signs_seq"] == 5
    await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(5, 8)))
    return cp.seq


async def rewrite_everything(store: Store, edit_seq: int) -> None:
    """What a forger with write access does: edit one record, then recompute every hash."""
    records = [r async for r in store.audit.iter_audit()]
    prev = GENESIS_HASH
    async with store.engine.begin() as conn:
        for r in records:
            data = {**r.data, "what": "forged"} if r.seq == edit_seq else r.data
            new = seal(seq=r.seq, id=r.id, ts=r.ts, type=r.type, actor=r.actor, session_id=r.session_id, data=data,
                       prev_hash=prev)
            await conn.execute(
                text("UPDATE audit_events SET data = :d, prev_hash = :p, hash = :h WHERE seq = :s"),
                {"d": json.dumps(new.data), "p": new.prev_hash, "h": new.hash, "s": r.seq},
            )
            prev = new.hash
        await conn.execute(text("UPDATE audit_state SET head_hash = :h"), {"h": prev})


async def test_checkpoints_verify_and_report_coverage(store: Store) -> None:
    await build(store)
    report = await store.audit.verify_audit(checkpoints=CheckpointVerifier([KEY.public_key()]))
    assert report.ok and report.checked == 9 and report.signed_through == 5


async def test_rewritten_chain_is_caught_only_by_the_signature(store: Store) -> None:
    cp_seq = await build(store)
    await rewrite_everything(store, edit_seq=2)
    assert (await store.audit.verify_audit()).ok  # the hashes alone cannot tell
    b = (await store.audit.verify_audit(checkpoints=CheckpointVerifier([KEY.public_key()]))).broken
    assert b is not None and (b.seq, b.kind) == (cp_seq, "bad_checkpoint")


async def test_unknown_key_is_a_break(store: Store) -> None:
    cp_seq = await build(store)
    other = CheckpointVerifier([Ed25519PrivateKey.generate().public_key()])
    b = (await store.audit.verify_audit(checkpoints=other)).broken
    assert b is not None and b.seq == cp_seq and "unknown key" in b.detail


async def test_empty_chain_has_nothing_to_sign(store: Store) -> None:
    assert await store.audit.checkpoint_audit(KEY) is None


def test_a_checkpoint_moved_onto_another_hash_fails_its_signature() -> None:
    from broker.audit.signing import checkpoint_event

    good = checkpoint_event(KEY, seq=5, hash_="ab" * 32).data
    verifier = CheckpointVerifier([KEY.public_key()])
    assert verifier.check(seq=6, prev_hash="ab" * 32, data=good) is None
    moved = {**good, "signs_hash": "cd" * 32}
    assert verifier.check(seq=6, prev_hash="cd" * 32, data=moved) == "checkpoint signature is not valid"
    assert verifier.check(seq=7, prev_hash="ab" * 32, data=good) == "checkpoint does not sign its predecessor"
