"""The external witness: signed (seq, hash) pairs of the chain, kept where the store's writer
cannot rewrite them.

Whoever can write the audit tables can delete the tail, move the prune anchor or recompute
every hash, and rewrite `audit_state` to match; the in-store checkpoints go with the tail.
What they cannot do is sign. Every `audit.witness.interval` the worker signs the chain head
(after appending an in-store `audit.checkpoint`, so the head is a checkpoint record) and writes
one entry to each configured witness; a prune signs its archive before it deletes anything.

One entry is one JSON line (canonical JSON, keys sorted)::

    {"kind": "checkpoint", "seq": 42, "id": "<record id>", "hash": "<record hash>",
     "ts": "2030-01-01T12:00:00.000000Z", "key_id": "<16 hex>", "signature": "<base64>"}
    {"kind": "prune", "seq": <through_seq>, "id": null, "hash": <through_hash>, ...,
     "archive": {"name", "from_seq", "through_seq", "prev_hash", "through_hash", "records", "sha256"}}

The signature is Ed25519 over `b"jitgate-audit-witness/v1:" + canonical_json(entry without
"signature")`, so no field of a line can be changed, and no line made, without the key.

Witnesses: an append-only file (opened O_APPEND, one write and an fsync per line, never
rewritten by jitgate: put it on another volume, a WORM bucket mount or a `chattr +a` file),
an HTTP endpoint (the entry JSON POSTed; its receiver keeps the same JSON Lines), and the SIEM
sink (`audit.sink`, the entry as an `audit.witness` item). A delivery that fails is kept in an
outbox in the worker's data dir and delivered first by the next run, before it checks or signs
anything; failures are logged and counted (`jitgate_audit_witness_total{witness,outcome}`).
Runs that overlap take turns on `witness.lock` there. Writing and scheduling are in
`broker.audit.witnessing`; this module holds the entries and the verifier's side.

`WitnessLog.check()` is the verifier's side (`chain.WitnessCheck`): every line's signature,
then each witnessed record still in the chain with the same hash, the chain's start (genesis
or the anchor of a witnessed prune), and its end at or past the last witnessed seq.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import Counter

from broker import metrics
from broker.audit.archive import ArchiveSummary
from broker.audit.chain import GENESIS_HASH, AuditRecord, BreakKind, canonical_json, format_ts
from broker.audit.signing import key_id, load_public_key, public_key_files

log = structlog.get_logger("jitgate.audit.witness")

DOMAIN = b"jitgate-audit-witness/v1:"
Kind = Literal["checkpoint", "prune"]

WITNESSED = Counter(
    "jitgate_audit_witness_total",
    "Witness entries, by witness (file, webhook, sink) and outcome (written, failed; refused: the chain "
    "no longer holds what the witness took last, nothing signed)",
    ["witness", "outcome"],
    registry=metrics.REGISTRY,
)


class WitnessError(Exception):
    """A witness that cannot be read or trusted: a line that does not parse or verify."""


@dataclass(frozen=True, slots=True)
class WitnessEntry:
    kind: Kind
    seq: int
    id: str | None
    hash: str
    ts: str
    key_id: str
    signature: str = ""
    archive: dict[str, Any] | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind, "seq": self.seq, "id": self.id, "hash": self.hash, "ts": self.ts,
            "key_id": self.key_id,
        }
        if self.archive is not None:
            out["archive"] = self.archive
        return out

    def message(self) -> bytes:
        return DOMAIN + canonical_json(self.body()).encode()

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    def line(self) -> str:
        return canonical_json(self.to_json()) + "\n"

    @classmethod
    def from_json(cls, obj: Any) -> WitnessEntry:
        if not isinstance(obj, dict) or obj.get("kind") not in ("checkpoint", "prune"):
            raise ValueError("not a witness entry")
        seq, archive = obj.get("seq"), obj.get("archive")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError("seq is not a number")
        if obj["kind"] == "prune" and not isinstance(archive, dict):
            raise ValueError("a prune entry without its archive")
        return cls(
            obj["kind"], seq, obj.get("id"), str(obj.get("hash")), str(obj.get("ts")), str(obj.get("key_id")),
            str(obj.get("signature")), archive,
        )


def sign_entry(
    key: Ed25519PrivateKey, *, kind: Kind, seq: int, id: str | None, hash_: str, ts: datetime | None = None,
    archive: dict[str, Any] | None = None,
) -> WitnessEntry:
    unsigned = WitnessEntry(
        kind, seq, id, hash_, format_ts(ts or datetime.now(UTC)), key_id(key.public_key()), "", archive
    )
    signature = base64.b64encode(key.sign(unsigned.message())).decode()
    return WitnessEntry(kind, seq, id, hash_, unsigned.ts, unsigned.key_id, signature, archive)


def checkpoint_entry(key: Ed25519PrivateKey, record: AuditRecord) -> WitnessEntry:
    return sign_entry(key, kind="checkpoint", seq=record.seq, id=record.id, hash_=record.hash)


def prune_entry(key: Ed25519PrivateKey, summary: ArchiveSummary) -> WitnessEntry:
    """Signed before the prune deletes anything: the archive's place in the chain and digest."""
    archive = {**summary.trailer()["archive"], "name": summary.path.name}
    return sign_entry(
        key, kind="prune", seq=summary.through_seq, id=None, hash_=summary.through_hash, archive=archive
    )


# -- reading and checking ----------------------------------------------------------------


@dataclass
class WitnessLog:
    """The verified entries of a witness, and the checks `ChainVerifier` runs against them."""

    entries: list[WitnessEntry]
    by_seq: dict[int, WitnessEntry] = field(default_factory=dict)
    prunes: dict[int, WitnessEntry] = field(default_factory=dict)
    witnessed_through: int | None = None
    _matched_through: int = 0

    def __post_init__(self) -> None:
        for entry in self.entries:
            if entry.kind == "prune":
                assert entry.archive is not None
                self.prunes[int(entry.archive["through_seq"])] = entry
            known = self.by_seq.get(entry.seq)
            if known is not None and known.hash != entry.hash:
                # Two signed hashes for one seq: the chain was rewritten between the two
                # signatures; the earlier is what was there first.
                continue
            self.by_seq.setdefault(entry.seq, entry)

    @property
    def last_seq(self) -> int:
        return max(self.by_seq, default=0)

    @property
    def last_entry_ts(self) -> datetime | None:
        if not self.entries:
            return None
        try:
            return datetime.fromisoformat(self.entries[-1].ts)
        except ValueError:
            return None

    def prune_history(self) -> tuple[list[WitnessEntry], str | None]:
        """The prunes in the order they were witnessed, each starting where the one before
        ended (its `from_seq` the previous anchor + 1, its `prev_hash` that anchor's hash);
        and a description of the first that does not, if one does not.

        Two prunes from the same start (a race lost, or a prune signed, never applied and
        redone) do not chain: which one was applied cannot be told from the witness, and
        accepting either would let whoever writes the store pick the later cut. Prunes are
        serialised, and one signed but not applied is finished at its own cut by the next
        (`AuditRepository.prune_audit`), so that jitgate does not write such pairs."""
        applied: list[WitnessEntry] = []
        for entry in self.entries:
            if entry.kind != "prune" or entry.archive is None:
                continue
            a = entry.archive
            if applied and applied[-1].archive == a:
                continue  # the same prune delivered twice (a retried delivery)
            if applied:
                prev = applied[-1].archive
                assert prev is not None
                if a["from_seq"] != prev["through_seq"] + 1 or a["prev_hash"] != prev["through_hash"]:
                    return applied, (
                        f"the witness holds a prune of seq {a['from_seq']}..{a['through_seq']} signed at "
                        f"{entry.ts}, but the prune before it ended at seq {prev['through_seq']}: prunes "
                        f"must follow each other"
                    )
            applied.append(entry)
        return applied, None

    def check_start(self, *, anchor_seq: int, anchor_hash: str) -> tuple[BreakKind, str] | None:
        """The chain's start must be the genesis or the anchor of the witness's last prune
        (or of the one before, when the last was signed but not yet applied: its records are
        then still in the chain, and `check_record` compares its last one)."""
        applied, broken = self.prune_history()
        if broken is not None:
            return "unwitnessed_prune", broken
        archives = [e.archive for e in applied if e.archive is not None]
        ends = [(0, GENESIS_HASH)] if not archives or archives[0]["from_seq"] == 1 else []
        ends += [(int(a["through_seq"]), str(a["through_hash"])) for a in archives]
        if (anchor_seq, anchor_hash) in ends[-2:]:
            if anchor_seq:
                self.witnessed_through = anchor_seq
            return None
        if not applied:
            return (
                "unwitnessed_prune",
                f"the chain starts after seq {anchor_seq}, but no witnessed prune ends there: records up to "
                f"seq {anchor_seq} were removed without a witnessed prune and archive",
            )
        last = applied[-1].archive
        assert last is not None
        return (
            "unwitnessed_prune",
            f"the chain starts after seq {anchor_seq} (anchor {anchor_hash}), but the witness's last prune "
            f"(signed at {applied[-1].ts}) ends at seq {last['through_seq']} ({last['through_hash']}): the "
            f"anchor was moved, or records removed, without a witnessed prune",
        )

    def check_record(self, record: AuditRecord) -> tuple[BreakKind, str] | None:
        entry = self.by_seq.get(record.seq)
        if entry is None:
            return None
        if entry.hash != record.hash or (entry.id is not None and entry.id != record.id):
            return (
                "witness_mismatch",
                f"the witness signed seq {record.seq} as record {entry.id} with hash {entry.hash} at "
                f"{entry.ts}; the store holds something else: records after seq {self._matched_through} "
                f"up to this one were rewritten",
            )
        self._matched_through = record.seq
        self.witnessed_through = record.seq
        return None

    def check_end(self, *, last_seq: int, upto: int | None = None) -> tuple[BreakKind, str] | None:
        last = max((seq for seq in self.by_seq if upto is None or seq <= upto), default=0)
        if last <= last_seq:
            return None
        entry = self.by_seq[last]
        return (
            "truncated",
            f"the chain ends at seq {last_seq}, but the witness signed seq {last} (record {entry.id}, "
            f"hash {entry.hash}) at {entry.ts}: records from seq {last_seq + 1} were deleted",
        )


def read_entries(lines: Iterable[str], keys: Sequence[Ed25519PublicKey], *, first_line: int = 1) -> WitnessLog:
    """Parse and verify every line; WitnessError names the first line that does not hold
    (numbered from `first_line`)."""
    by_id = {key_id(k): k for k in keys}
    entries: list[WitnessEntry] = []
    for n, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        try:
            entry = WitnessEntry.from_json(json.loads(line))
        except (ValueError, KeyError) as exc:
            raise WitnessError(f"witness line {n} is not a witness entry: {exc}") from None
        key = by_id.get(entry.key_id)
        if key is None:
            raise WitnessError(f"witness line {n} (seq {entry.seq}) is signed by unknown key {entry.key_id}")
        try:
            key.verify(base64.b64decode(entry.signature, validate=True), entry.message())
        except (InvalidSignature, ValueError):
            raise WitnessError(f"witness line {n} (seq {entry.seq}): the signature is not valid") from None
        entries.append(entry)
    return WitnessLog(entries)


def read_witness(path: Path, keys: Sequence[Ed25519PublicKey]) -> WitnessLog:
    try:
        with path.open(encoding="utf-8") as f:
            return read_entries(f, keys)
    except OSError as exc:
        raise WitnessError(f"cannot read the witness {path}: {exc.strerror or exc}") from None


class WitnessKeyError(ValueError):
    """A witness is configured but cannot be checked: no public key, or a key file that does not load."""


def load_witness(
    settings: Any, *, path: Path | None = None, key_files: Sequence[Path] | None = None,
    read: Callable[[Path, Sequence[Ed25519PublicKey]], WitnessLog] = read_witness,
) -> WitnessLog | None:
    """The witness file (`path`, else `audit.witness.file`) read and verified (`read`) with the
    public keys in `key_files`, else `audit.verify_key_files` or the signing key's public half;
    None when no witness file is configured. WitnessKeyError: no key, or one that does not load;
    WitnessError: the witness cannot be read or a line does not verify."""
    where = path or settings.audit.witness.file
    if where is None:
        return None
    audit = settings.audit
    files = list(key_files or public_key_files(audit.signing_key_file, audit.verify_key_files))
    if not files:
        raise WitnessKeyError(
            f"cannot check the witness {where}: no public key (audit.verify_key_files or audit.signing_key_file)"
        )
    try:
        keys = [load_public_key(p) for p in files]
    except (OSError, ValueError) as exc:
        raise WitnessKeyError(f"cannot load audit keys: {exc}") from None
    return read(where, keys)


@dataclass(frozen=True, slots=True)
class _Verified:
    stat: tuple[int, int, int]  # inode, size, mtime_ns of the file when read
    keys: frozenset[str]
    length: int  # bytes of complete lines verified
    digest: bytes  # their SHA-256: they must still be there, unchanged, next time
    lines: int
    entries: tuple[WitnessEntry, ...]
    tail: tuple[WitnessEntry, ...]  # past the last newline: verified each time, not kept


class WitnessCache:
    """Verified witness entries kept between reads (`GET /v1/audit/verify` reads the witness
    per request): `read` is `read_witness` that checks only what was appended since.

    A file whose (inode, size, mtime_ns) did not change is not read again. A longer one is
    hashed up to what was verified last time (SHA-256, far cheaper than a signature per line)
    and, if those bytes are unchanged, only its new lines are parsed and verified. A file that
    shrank, or whose verified part changed, is read and verified whole again, and that is a
    finding (`findings(path)`, kept until the process restarts): the witness is append-only,
    so entries were removed or rewritten. `verified` counts the lines whose signature was checked.
    """

    def __init__(self) -> None:
        self._seen: dict[Path, _Verified] = {}
        self._findings: dict[Path, list[str]] = {}
        self._lock = threading.Lock()  # requests read in worker threads
        self.verified = 0

    def findings(self, path: Path) -> list[str]:
        with self._lock:
            return list(self._findings.get(path, ()))

    def read(self, path: Path, keys: Sequence[Ed25519PublicKey]) -> WitnessLog:
        with self._lock:
            try:
                seen = self._read(path, keys)
            except OSError as exc:
                raise WitnessError(f"cannot read the witness {path}: {exc.strerror or exc}") from None
            self._seen[path] = seen
            return WitnessLog([*seen.entries, *seen.tail])  # fresh: the verifier marks it

    def _read(self, path: Path, keys: Sequence[Ed25519PublicKey]) -> _Verified:
        ids = frozenset(key_id(k) for k in keys)
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            stat = (st.st_ino, st.st_size, st.st_mtime_ns)
            seen = self._seen.get(path)
            if seen is not None and seen.keys != ids:
                seen = None  # other keys: what verified before proves nothing now
            if seen is not None and seen.stat == stat:
                return seen
            start = _Verified(stat, ids, 0, hashlib.sha256().digest(), 0, (), ())
            digest = hashlib.sha256()
            if seen is not None and st.st_size < seen.length:
                self._finding(path, f"the witness {path.name} shrank from {seen.length} to {st.st_size} bytes "
                                    f"since it was last read: entries were removed from an append-only witness")
            elif seen is not None:
                prefix, left = hashlib.sha256(), seen.length
                while chunk := f.read(min(left, 1 << 20)):
                    prefix.update(chunk)
                    left -= len(chunk)
                if prefix.digest() == seen.digest:
                    start, digest = seen, prefix
                else:
                    self._finding(path, f"the first {seen.length} bytes of the witness {path.name} changed since "
                                        f"it was last read: entries of an append-only witness were rewritten")
            f.seek(start.length)
            data = f.read(st.st_size - start.length)
        end = data.rfind(b"\n") + 1
        complete, lines = data[:end], start.lines + data[:end].count(b"\n")
        # Split on newlines only, as iterating the file does (`read_witness`).
        new = read_entries(complete.decode("utf-8", "replace").split("\n"), keys, first_line=start.lines + 1)
        tail = read_entries([data[end:].decode("utf-8", "replace")], keys, first_line=lines + 1)
        self.verified += len(new.entries) + len(tail.entries)
        digest.update(complete)
        return _Verified(
            stat, ids, start.length + end, digest.digest(), lines, (*start.entries, *new.entries), tuple(tail.entries)
        )

    def _finding(self, path: Path, what: str) -> None:
        found = self._findings.setdefault(path, [])
        if what not in found:
            log.warning("audit_witness_rewritten", witness=str(path), detail=what)
            found.append(what)


# -- writing ------------------------------------------------------------------------------
