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

`ChainVerifier` is fed one record at a time, so verification runs in constant memory over
any number of records read in chunks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

GENESIS_HASH = "0" * 64

BreakKind = Literal[
    "altered", "missing", "broken_link", "truncated", "head_mismatch", "unexpected_tail", "bad_checkpoint",
    "witness_mismatch", "unwitnessed_prune",
]


class CheckpointCheck(Protocol):
    def check(self, *, seq: int, prev_hash: str, data: dict[str, Any]) -> str | None: ...


class WitnessCheck(Protocol):
    """What an external witness says the chain must contain. Each check returns None, or the
    kind and detail of the break it finds."""

    witnessed_through: int | None  # last witnessed seq the chain was found to contain

    def check_start(self, *, anchor_seq: int, anchor_hash: str) -> tuple[BreakKind, str] | None: ...
    def check_record(self, record: AuditRecord) -> tuple[BreakKind, str] | None: ...
    def check_end(self, *, last_seq: int) -> tuple[BreakKind, str] | None: ...


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
    # The same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ"), at a third of the cost.
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


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


def content_canonical(
    *, seq: int, id: str, ts_text: str, type: str, actor: str | None, session_id: str | None, data_json: str
) -> bytes:
    """`canonical(record.content())`, byte for byte, from parts already in JSON-ready form.

    The appender uses it so that `data` is serialised once (`data_json`, which is then also
    what the store keeps) and the timestamp formatted once per batch; `canonical` over the
    whole content dict stays the definition, and the verifier uses it. The keys below are
    `content()`'s, in sorted order.
    """
    return (
        '{"actor":' + _json_value(actor)
        + ',"data":' + data_json
        + ',"id":' + _json_value(id)
        + ',"seq":' + _json_value(seq)
        + ',"session_id":' + _json_value(session_id)
        + ',"ts":' + _json_value(ts_text)
        + ',"type":' + _json_value(type)
        + "}"
    ).encode()


def _json_value(value: object) -> str:
    # The common cases directly; anything else exactly as the canonical encoder writes it.
    cls = value.__class__
    if cls is str:
        return _json_str(value)  # type: ignore[arg-type]
    if value is None:
        return "null"
    if cls is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    return canonical_json(value)


def hash_canonical(prev_hash: str, canonical_bytes: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_bytes).hexdigest()


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

    With a `witness`, every record is also compared with what the witness signed; with
    `witness_bounds` (a whole-chain check) the starting point must be a witnessed prune and
    the chain must reach the last witnessed record.
    """

    def __init__(
        self,
        *,
        prev_hash: str | None = GENESIS_HASH,
        prev_seq: int | None = 0,
        head: tuple[int, str] | None = None,
        checkpoints: CheckpointCheck | None = None,
        witness: WitnessCheck | None = None,
        witness_bounds: bool = False,
    ) -> None:
        # With `checkpoints`, every `audit.checkpoint` record's signature is checked too.
        self._checkpoints = checkpoints
        self._witness = witness
        self._start_pending = witness is not None and witness_bounds and prev_hash is not None
        self._witness_bounds = witness_bounds
        self.signed_through: int | None = None
        self._prev_hash = prev_hash
        self._prev_seq = prev_seq
        # The head as stored before reading began: the record at its seq must carry its hash.
        self._head = head
        self.checked = 0
        self.first_seq: int | None = None
        self.broken: Break | None = None

    @property
    def last_seq(self) -> int:
        """Seq of the last record accepted (or of the starting point)."""
        return self._prev_seq or 0

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

    def finish(self, *, head_now: int | None = None) -> VerifyReport:
        """The report. With a head given at construction, also check the chain reaches it
        (a cut tail) and, with `head_now` (the head re-read after reading), that no record
        lies beyond the head (records added without going through the store)."""
        last = self._prev_seq or 0
        if self.broken is None and self._start_pending:
            self.broken = self._check_start(last + 1, None)
        if self.broken is None and self._head is not None and last < self._head[0]:
            self.broken = Break(
                last + 1, None, "truncated", f"chain ends at seq {last}, its head is at {self._head[0]}"
            )
        if self.broken is None and head_now is not None and last > head_now:
            self.broken = Break(
                head_now + 1, None, "unexpected_tail", f"records beyond the chain head (seq {head_now})"
            )
        if self.broken is None and self._witness is not None and self._witness_bounds:
            cut = self._witness.check_end(last_seq=last)
            if cut is not None:
                self.broken = Break(last + 1, None, *cut)
        return VerifyReport(
            ok=self.broken is None,
            checked=self.checked,
            first_seq=self.first_seq,
            last_seq=self._prev_seq if self.checked else None,
            last_hash=self._prev_hash if self.checked else None,
            broken=self.broken,
            signed_through=self.signed_through,
            witnessed_through=self._witness.witnessed_through if self._witness is not None else None,
        )
