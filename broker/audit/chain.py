"""The hash chain, as pure functions over records.

Each record's hash is `sha256(bytes.fromhex(prev_hash) || canonical(record))`, where
`canonical` is the record's content (everything but `prev_hash` and `hash`) as JSON with
sorted keys, no spaces, UTF-8. `seq` is part of the content, so a record cannot be moved;
`prev_hash` links it to its predecessor, so none can be removed, added or swapped without
breaking the link after it. Changing any field breaks the record's own hash.

What the chain alone cannot show is a cut tail: the last records deleted leave a valid,
shorter chain. The store therefore keeps the head (last seq and hash) beside the chain,
written in the same transaction as every append, and `ChainVerifier.finish` compares. Whoever
can write the chain can write the head too, so that only catches careless edits; what catches
a careful one is a witness outside the store (`broker.audit.witness`): signed (seq, hash)
pairs the chain must still contain, checked through the `WitnessCheck` port.

A witness signs the head every interval, so the records after the last witnessed one (the
unwitnessed tail) are only as safe as the store: the report names that tail, how long it has
waited, and `TailLimits` can make a verification fail when it is too long or too old.

A range check (`to_seq`, or a `from_seq` past the chain's start) trusts the link into its
first record; it must still reach `min(to_seq, head)`, and every witnessed seq inside it must
be found.

`ChainVerifier` is fed one record at a time, so verification runs in constant memory over
any number of records read in chunks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

GENESIS_HASH = "0" * 64

BreakKind = Literal[
    "altered", "missing", "broken_link", "truncated", "head_mismatch", "unexpected_tail", "bad_checkpoint",
    "witness_mismatch", "unwitnessed_prune", "unwitnessed_tail",
]


class CheckpointCheck(Protocol):
    def check(self, *, seq: int, prev_hash: str, data: dict[str, Any]) -> str | None: ...


class WitnessCheck(Protocol):
    """What an external witness says the chain must contain. Each check returns None, or the
    kind and detail of the break it finds."""

    witnessed_through: int | None  # last witnessed seq the chain was found to contain

    @property
    def last_entry_ts(self) -> datetime | None:
        """When the witness's last entry was signed."""
        ...

    def check_start(self, *, anchor_seq: int, anchor_hash: str) -> tuple[BreakKind, str] | None: ...
    def check_record(self, record: AuditRecord) -> tuple[BreakKind, str] | None: ...
    def check_end(self, *, last_seq: int, upto: int | None = None) -> tuple[BreakKind, str] | None:
        """Every witnessed seq up to `upto` (all, when None) must be at or before `last_seq`."""
        ...


@dataclass(frozen=True, slots=True)
class TailLimits:
    """How much of the chain may sit unwitnessed: `interval` is the witness's signing interval
    (past about two of them the report says "partially anchored"); `max_records` and
    `max_age` make the verification fail (`unwitnessed_tail`) past them."""

    interval: timedelta = timedelta(seconds=60)
    max_records: int | None = None
    max_age: timedelta | None = None


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One stored audit record. `data` holds JSON values only, never secrets."""

    seq: int
    id: str
    ts: datetime
    type: str
    actor: str | None
    session_id: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str

    def content(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "ts": format_ts(self.ts),
            "type": self.type,
            "actor": self.actor,
            "session_id": self.session_id,
            "data": self.data,
        }

    def to_json(self) -> dict[str, Any]:
        """The whole record as JSON values (for exports)."""
        return {**self.content(), "prev_hash": self.prev_hash, "hash": self.hash}


def format_ts(ts: datetime) -> str:
    """ISO 8601 UTC with microseconds: the one textual form a timestamp is hashed in."""
    if ts.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    utc = ts.astimezone(UTC)
    if utc.year < 1000:
        # strftime's %Y does not pad years below 1000; keep that form, it is what is hashed.
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # The same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") at 60 % of its cost (no replace(), no
    # timespec unless needed): an aware UTC time's isoformat ends in "+00:00", and leaves out
    # the fraction only when it is zero.
    text = utc.isoformat() if utc.microsecond else utc.isoformat(timespec="microseconds")
    return text[:-6] + "Z"


# allow_nan=False: NaN has no JSON form that every reader parses back the same.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_json_str = json.encoder.encode_basestring  # a str as JSON, as the encoder above writes it


def canonical_json(value: Any) -> str:
    """`value` as canonical JSON text (sorted keys, no spaces, non-ASCII kept as is)."""
    return _CANONICAL.encode(value)


def canonical(content: dict[str, Any]) -> bytes:
    return canonical_json(content).encode()


def chain_hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(content)).hexdigest()


# The text of `canonical(record.content())` around its data, id, seq and ts.
ContentParts = tuple[str, str, str]


def content_parts(*, type: str, actor: str | None, session_id: str | None) -> ContentParts:
    """What `canonical(record.content())` holds around the parts that change from record to
    record: the same for every statement of a session, so an appender makes it once per
    session. `canonical` over the whole content dict stays the definition (the verifier and
    `seal` use it); tests/broker/audit hold the two to the same bytes."""
    # The keys are `content()`'s, in sorted order: actor, data, id, seq, session_id, ts, type.
    return (
        '{"actor":' + canonical_value(actor) + ',"data":',
        ',"session_id":' + canonical_value(session_id) + ',"ts":',
        ',"type":' + canonical_value(type) + "}",
    )


def content_from_parts(parts: ContentParts, data_json: str, id: str, seq: int, ts_text: str) -> bytes:
    """`canonical(record.content())`, byte for byte, from `content_parts(...)` and the
    record's own parts already in JSON-ready form: `data` serialised once (`data_json`, also
    what the store keeps) and the timestamp formatted once (`ts_text`)."""
    head, middle, tail = parts
    return (
        head + data_json + ',"id":' + canonical_value(id) + ',"seq":' + canonical_value(seq) + middle
        + canonical_value(ts_text) + tail
    ).encode()


def canonical_value(value: object) -> str:
    """`canonical_json(value)`: the common cases directly, anything else through the encoder."""
    cls = value.__class__
    if cls is str:
        return _json_str(value)  # type: ignore[arg-type]
    if value is None:
        return "null"
    if cls is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    if cls is float and value - value == 0.0:  # type: ignore[operator]  # finite: json's own repr
        return float.__repr__(value)  # type: ignore[arg-type]
    return canonical_json(value)


def seal(
    *,
    seq: int,
    id: str,
    ts: datetime,
    type: str,
    actor: str | None,
    session_id: str | None,
    data: dict[str, Any],
    prev_hash: str,
) -> AuditRecord:
    """Build the record that follows `prev_hash`, with its hash computed."""
    unsealed = AuditRecord(seq, id, ts, type, actor, session_id, data, prev_hash, "")
    return AuditRecord(
        seq, id, ts, type, actor, session_id, data, prev_hash, chain_hash(prev_hash, unsealed.content())
    )


@dataclass(frozen=True, slots=True)
class Break:
    """The first place the chain does not hold."""

    seq: int
    id: str | None
    kind: BreakKind
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    ok: bool
    checked: int
    first_seq: int | None
    last_seq: int | None
    last_hash: str | None
    broken: Break | None = None
    signed_through: int | None = None  # last seq covered by a checked signed checkpoint
    witnessed_through: int | None = None  # last seq matched against the external witness
    # What could not be checked (no public key, no witness, ...): a report with any is not
    # anchored outside the store, and callers say so loudly (see `jitgate audit verify`).
    unanchored: tuple[str, ...] = ()
    # The records after the last witnessed one (seq from..to), and since when they have waited
    # (the later of the first one's time and the witness's last entry): only the store vouches
    # for them. None when there is no such tail.
    unwitnessed_from: int | None = None
    unwitnessed_to: int | None = None
    unwitnessed_since: datetime | None = None
    last_witness_ts: datetime | None = None
    # The tail has waited past about two witness intervals: the worker is not signing.
    partially_anchored: bool = False
    # A range: the first record's link to the one before it was taken as given, not checked.
    trusted_start: int | None = None

    @property
    def anchored(self) -> bool:
        return not self.unanchored

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.ok,
            "checked": self.checked,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "signed_through": self.signed_through,
            "witnessed_through": self.witnessed_through,
            "anchored": self.anchored,
            "unanchored": list(self.unanchored),
            "partially_anchored": self.partially_anchored,
            "unwitnessed": (
                None if self.unwitnessed_from is None else {
                    "from_seq": self.unwitnessed_from,
                    "to_seq": self.unwitnessed_to,
                    "records": (self.unwitnessed_to or 0) - self.unwitnessed_from + 1,
                    "since": format_ts(self.unwitnessed_since) if self.unwitnessed_since else None,
                }
            ),
            "last_witness_ts": format_ts(self.last_witness_ts) if self.last_witness_ts else None,
            "trusted_start": self.trusted_start,
        }
        if self.broken is not None:
            out["break"] = {
                "seq": self.broken.seq,
                "id": self.broken.id,
                "kind": self.broken.kind,
                "detail": self.broken.detail,
            }
        return out


class ChainVerifier:
    """Checks records fed in seq order; remembers only the first break.

    `prev_hash`/`prev_seq` describe what the first record must follow: the genesis (or the
    retention anchor) for a whole-chain check, or the record before a range. `prev_hash`
    None trusts the first record's link (a range whose predecessor is unknown).

    `head` is the stored head: the record at its seq must carry its hash, and the chain must
    reach it, or `to_seq` when that comes first (a range). With a `witness`, every record is
    also compared with what the witness signed, and every witnessed seq up to `to_seq` must be
    found; with `witness_start` the starting point must be the witness's last prune (or the
    genesis).
    """

    def __init__(
        self,
        *,
        prev_hash: str | None = GENESIS_HASH,
        prev_seq: int | None = 0,
        head: tuple[int, str] | None = None,
        to_seq: int | None = None,
        checkpoints: CheckpointCheck | None = None,
        witness: WitnessCheck | None = None,
        witness_start: bool = False,
        trusted_start: int | None = None,
    ) -> None:
        # With `checkpoints`, every `audit.checkpoint` record's signature is checked too.
        self._checkpoints = checkpoints
        self._witness = witness
        self._start_pending = witness is not None and witness_start and prev_hash is not None
        self._to_seq = to_seq
        self._trusted_start = trusted_start
        self.signed_through: int | None = None
        self._prev_hash = prev_hash
        self._prev_seq = prev_seq
        # The head as stored before reading began: the record at its seq must carry its hash.
        self._head = head
        self.checked = 0
        self.first_seq: int | None = None
        self.broken: Break | None = None
        # The first record after the last witnessed one: where the unwitnessed tail starts.
        self._tail: AuditRecord | None = None

    @property
    def last_seq(self) -> int:
        """Seq of the last record accepted (or of the starting point)."""
        return self._prev_seq or 0

    def reject(self, record: AuditRecord, kind: BreakKind, detail: str) -> Break:
        """Record a break found outside the chain's own checks (how the record was stored)."""
        if self.broken is None:
            self.broken = Break(record.seq, record.id, kind, detail)
        return self.broken

    def feed(self, record: AuditRecord) -> Break | None:
        if self.broken is not None:
            return self.broken
        found = self._check_start(record.seq, record.id) if self._start_pending else None
        found = found or self._check(record)
        if found is None and self._head is not None and record.seq == self._head[0]:
            if record.hash != self._head[1]:
                found = Break(
                    record.seq, record.id, "head_mismatch", "record differs from the stored chain head"
                )
        if found is None and self._checkpoints is not None and record.type == "audit.checkpoint":
            why = self._checkpoints.check(seq=record.seq, prev_hash=record.prev_hash, data=record.data)
            if why is not None:
                found = Break(record.seq, record.id, "bad_checkpoint", why)
            else:
                self.signed_through = record.seq - 1
        if found is None and self._witness is not None:
            witnessed = self._witness.check_record(record)
            if witnessed is not None:
                found = Break(record.seq, record.id, *witnessed)
        if found is not None:
            self.broken = found
            return found
        if self.first_seq is None:
            self.first_seq = record.seq
        self.checked += 1
        self._prev_hash = record.hash
        self._prev_seq = record.seq
        if self._witness is not None and self._witness.witnessed_through == record.seq:
            self._tail = None
        elif self._tail is None:
            self._tail = record
        return None

    def _check_start(self, seq: int, id: str | None) -> Break | None:
        """Where the chain starts (genesis or a prune's anchor) must be witnessed."""
        self._start_pending = False
        assert self._witness is not None and self._prev_hash is not None
        found = self._witness.check_start(anchor_seq=self._prev_seq or 0, anchor_hash=self._prev_hash)
        return None if found is None else Break(seq, id, *found)

    def _check(self, r: AuditRecord) -> Break | None:
        # Order matters: a record's own hash first (an edit), then its place in the chain.
        try:
            recomputed = chain_hash(r.prev_hash, r.content())
        except (ValueError, TypeError) as exc:
            return Break(r.seq, r.id, "altered", f"record cannot be hashed: {exc}")
        if recomputed != r.hash:
            return Break(r.seq, r.id, "altered", "record content does not match its hash")
        if self._prev_seq is not None and r.seq != self._prev_seq + 1:
            return Break(
                r.seq, r.id, "missing", f"expected seq {self._prev_seq + 1}, found {r.seq}"
            )
        if self._prev_hash is not None and r.prev_hash != self._prev_hash:
            return Break(
                r.seq,
                r.id,
                "broken_link",
                "prev_hash does not match the preceding record (inserted, removed or reordered)",
            )
        return None

    def finish(
        self, *, head_now: int | None = None, now: datetime | None = None, limits: TailLimits | None = None
    ) -> VerifyReport:
        """The report. The chain must reach the head given at construction (or `to_seq`, if
        lower): else a cut tail. With `head_now` (the head re-read after reading), no record may
        lie beyond the head (records added without going through the store). With `now`, the
        unwitnessed tail is measured against `limits`."""
        last = self._prev_seq or 0
        if self.broken is None and self._start_pending:
            self.broken = self._check_start(last + 1, None)
        must_reach = self._must_reach()
        if self.broken is None and must_reach is not None and last < must_reach:
            self.broken = Break(
                last + 1, None, "truncated",
                f"chain ends at seq {last}, its head is at {self._head[0]}" if self._head else
                f"chain ends at seq {last}, the range at {must_reach}",
            )
        if self.broken is None and head_now is not None and last > head_now:
            self.broken = Break(
                head_now + 1, None, "unexpected_tail", f"records beyond the chain head (seq {head_now})"
            )
        if self.broken is None and self._witness is not None:
            cut = self._witness.check_end(last_seq=last, upto=self._to_seq)
            if cut is not None:
                self.broken = Break(last + 1, None, *cut)
        tail = self._tail if self.checked else None
        last_entry = self._witness.last_entry_ts if self._witness is not None else None
        since = None if tail is None else max(tail.ts, last_entry) if last_entry else tail.ts
        partial = False
        if self.broken is None and tail is not None and since is not None and now is not None:
            limits = limits or TailLimits()
            waited = now - since
            partial = waited > 2 * limits.interval
            records = last - tail.seq + 1
            if limits.max_records is not None and records > limits.max_records:
                self.broken = Break(
                    tail.seq, tail.id, "unwitnessed_tail",
                    f"{records} records (seq {tail.seq}..{last}) are not witnessed, more than the "
                    f"{limits.max_records} allowed: nothing outside the store vouches for them",
                )
            elif limits.max_age is not None and waited > limits.max_age:
                self.broken = Break(
                    tail.seq, tail.id, "unwitnessed_tail",
                    f"records from seq {tail.seq} have waited unwitnessed since {format_ts(since)}, longer "
                    f"than the {limits.max_age} allowed: the witness is not being written",
                )
        return VerifyReport(
            ok=self.broken is None,
            checked=self.checked,
            first_seq=self.first_seq,
            last_seq=self._prev_seq if self.checked else None,
            last_hash=self._prev_hash if self.checked else None,
            broken=self.broken,
            signed_through=self.signed_through,
            witnessed_through=self._witness.witnessed_through if self._witness is not None else None,
            unwitnessed_from=tail.seq if tail is not None else None,
            unwitnessed_to=last if tail is not None else None,
            unwitnessed_since=since,
            last_witness_ts=last_entry,
            partially_anchored=partial,
            trusted_start=self._trusted_start,
        )

    def _must_reach(self) -> int | None:
        """The last seq the records read must reach: the head, or the range's end if lower."""
        if self._head is None:
            return None
        return self._head[0] if self._to_seq is None else min(self._to_seq, self._head[0])
