"""The pure chain: hashing, and each kind of break found at the right record."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from broker.audit.chain import GENESIS_HASH, AuditRecord, ChainVerifier, canonical, chain_hash, seal

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def make_chain(n: int) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    prev = GENESIS_HASH
    for i in range(1, n + 1):
        r = seal(
            seq=i, id=f"id-{i}", ts=T0 + timedelta(seconds=i), type="statement", actor=None,
            session_id="s1", data={"seq": i, "sql": f"select {i}", "rows": i, "ms": 0.1 * i}, prev_hash=prev,
        )
        out.append(r)
        prev = r.hash
    return out


def verify(records: list[AuditRecord], head: tuple[int, str] | None = None) -> ChainVerifier:
    v = ChainVerifier(head=head)
    for r in records:
        if v.feed(r):
            break
    return v


def test_canonical_form_is_stable_and_key_order_free() -> None:
    assert canonical({"b": 1, "a": [1, "é"]}) == canonical({"a": [1, "é"], "b": 1}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})


def test_hash_covers_predecessor_and_content() -> None:
    r = make_chain(1)[0]
    assert r.hash == chain_hash(GENESIS_HASH, r.content())
    assert chain_hash("11" * 32, r.content()) != r.hash


def test_intact_chain_verifies() -> None:
    chain = make_chain(20)
    report = verify(chain, head=(20, chain[-1].hash)).finish(head_now=20)
    assert report.ok and report.checked == 20 and report.last_seq == 20 and report.last_hash == chain[-1].hash


def test_edit_is_found_at_the_edited_record() -> None:
    chain = make_chain(10)
    chain[4] = dataclasses.replace(chain[4], data={**chain[4].data, "rows": 0})
    b = verify(chain).finish().broken
    assert b is not None and (b.seq, b.kind, b.id) == (5, "altered", "id-5")


def test_deleted_record_is_found_at_its_successor() -> None:
    chain = make_chain(10)
    del chain[4]
    b = verify(chain).finish().broken
    assert b is not None and (b.seq, b.kind) == (6, "missing")


def test_inserted_record_with_renumbering_is_found() -> None:
    chain = make_chain(10)
    forged = seal(seq=6, id="forged", ts=T0, type="statement", actor=None, session_id="s1", data={},
                  prev_hash=chain[4].hash)
    # The forger renumbers the rest to make room: each renumbered record no longer matches its hash.
    tail = [dataclasses.replace(r, seq=r.seq + 1) for r in chain[5:]]
    b = verify([*chain[:5], forged, *tail]).finish().broken
    assert b is not None and (b.seq, b.kind) == (7, "altered")


def test_swapped_records_are_found() -> None:
    chain = make_chain(10)
    chain[3], chain[4] = chain[4], chain[3]
    b = verify(chain).finish().broken
    assert b is not None and b.seq == 5 and b.kind == "missing"


def test_swapped_contents_keeping_seq_are_found() -> None:
    chain = make_chain(10)
    a, b_ = chain[3], chain[4]
    chain[3] = dataclasses.replace(b_, seq=a.seq)
    chain[4] = dataclasses.replace(a, seq=b_.seq)
    b = verify(chain).finish().broken
    assert b is not None and (b.seq, b.kind) == (4, "altered")


def test_rehashed_forgery_breaks_the_link() -> None:
    chain = make_chain(10)
    # A forger who recomputes the hash of the record they edit still breaks the next link.
    r = chain[4]
    chain[4] = seal(seq=r.seq, id=r.id, ts=r.ts, type=r.type, actor=r.actor, session_id=r.session_id,
                    data={"rows": 0}, prev_hash=r.prev_hash)
    b = verify(chain).finish().broken
    assert b is not None and (b.seq, b.kind) == (6, "broken_link")


def test_truncated_tail_is_found_against_the_head() -> None:
    chain = make_chain(10)
    head = (10, chain[-1].hash)
    b = verify(chain[:7], head=head).finish(head_now=10).broken
    assert b is not None and (b.seq, b.kind) == (8, "truncated")


def test_whole_chain_rewritten_is_found_against_the_head() -> None:
    chain = make_chain(10)
    head = (10, chain[-1].hash)
    forged = make_chain(10)
    forged[9] = seal(seq=10, id="x", ts=T0, type="t", actor=None, session_id=None, data={}, prev_hash=forged[8].hash)
    b = verify(forged, head=head).finish().broken
    assert b is not None and (b.seq, b.kind) == (10, "head_mismatch")


def test_records_beyond_the_head_are_found() -> None:
    chain = make_chain(10)
    b = verify(chain, head=(8, chain[7].hash)).finish(head_now=8).broken
    assert b is not None and (b.seq, b.kind) == (9, "unexpected_tail")


def test_range_check_can_trust_its_first_link() -> None:
    chain = make_chain(10)
    v = ChainVerifier(prev_hash=None, prev_seq=None)
    for r in chain[4:]:
        assert v.feed(r) is None
    assert v.finish().ok


def test_a_range_must_reach_its_end_or_the_head() -> None:
    chain = make_chain(10)
    head = (10, chain[-1].hash)
    # Records 1..6 read for a range ending at 8: the cut shows at 7.
    b = verify_range(chain[:6], head=head, to_seq=8).broken
    assert b is not None and (b.seq, b.kind) == (7, "truncated") and "the range" not in b.detail
    assert verify_range(chain[:8], head=head, to_seq=8).ok
    # A range past the head need only reach the head.
    assert verify_range(chain, head=head, to_seq=50).ok
    b = verify_range(chain[:9], head=head, to_seq=50).broken
    assert b is not None and (b.seq, b.kind) == (10, "truncated")


def verify_range(records: list[AuditRecord], *, head: tuple[int, str], to_seq: int):  # type: ignore[no-untyped-def]
    v = ChainVerifier(head=head, to_seq=to_seq)
    for r in records:
        assert v.feed(r) is None
    return v.finish()
