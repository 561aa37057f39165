"""The appender's fast canonical form must be `canonical(record.content())` byte for byte,
and `format_ts` must keep the text it always hashed."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    canonical,
    canonical_json,
    chain_hash,
    content_from_parts,
    content_parts,
    format_ts,
    seal,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
aware = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.datetimes(timezones=st.just(timezone(timedelta(hours=5, minutes=30))), min_value=datetime(2, 1, 1))


@settings(max_examples=300)
@given(
    seq=st.integers(min_value=1, max_value=2**62),
    id_=st.text(max_size=40),
    ts=aware,
    type_=st.text(max_size=20),
    actor=st.none() | st.text(max_size=20),
    session_id=st.none() | st.text(max_size=40),
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=8),
)
def test_content_from_parts_is_canonical_of_content(
    seq: int, id_: str, ts: datetime, type_: str, actor: str | None, session_id: str | None, data: dict[str, object]
) -> None:
    record = AuditRecord(seq, id_, ts, type_, actor, session_id, data, GENESIS_HASH, "")
    try:
        expected = canonical(record.content())
    except UnicodeEncodeError:  # lone surrogates: neither form can be hashed
        return
    parts = content_parts(type=type_, actor=actor, session_id=session_id)
    fast = content_from_parts(parts, canonical_json(data), id_, seq, format_ts(ts))
    assert fast == expected
    # The appender's chain step (broker.store.audit.chain_rows): on the previous digest's bytes.
    step = hashlib.sha256(bytes.fromhex(GENESIS_HASH) + fast).hexdigest()
    assert step == chain_hash(GENESIS_HASH, record.content())
    sealed = seal(seq=seq, id=id_, ts=ts, type=type_, actor=actor, session_id=session_id, data=data,
                  prev_hash=GENESIS_HASH)
    assert sealed.hash == step


@settings(max_examples=300)
@given(ts=aware)
def test_format_ts_is_the_strftime_form(ts: datetime) -> None:
    assert format_ts(ts) == ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_format_ts_keeps_microseconds_and_short_years() -> None:
    assert format_ts(datetime(2030, 1, 1, 12, 0, tzinfo=UTC)) == "2030-01-01T12:00:00.000000Z"
    early = datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC)
    assert format_ts(early) == early.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
