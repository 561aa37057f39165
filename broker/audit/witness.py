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
outbox in the worker's data dir and retried by the next run; failures are logged and counted
(`jitgate_audit_witness_total{witness,outcome}`).

`WitnessLog.check()` is the verifier's side (`chain.WitnessCheck`): every line's signature,
then each witnessed record still in the chain with the same hash, the chain's start (genesis
or the anchor of a witnessed prune), and its end at or past the last witnessed seq.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from prometheus_client import Counter

from broker import metrics
from broker.audit.archive import ArchiveSummary
from broker.audit.chain import AuditRecord, BreakKind, canonical_json, format_ts
from broker.audit.forward import JsonPoster, SyslogTransport, Transport, WebhookTransport
from broker.audit.signing import key_id

log = structlog.get_logger("jitgate.audit.witness")

DOMAIN = b"jitgate-audit-witness/v1:"
Kind = Literal["checkpoint", "prune"]

WITNESSED = Counter(
    "jitgate_audit_witness_total",
    "Witness entries delivered, by witness (file, webhook, sink) and outcome (written, failed)",
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

    def check_start(self, *, anchor_seq: int, anchor_hash: str) -> tuple[BreakKind, str] | None:
        if anchor_seq == 0:
            return None
        prune = self.prunes.get(anchor_seq)
        if prune is not None and prune.archive is not None and prune.archive["through_hash"] == anchor_hash:
            self.witnessed_through = anchor_seq
            return None
        return (
            "unwitnessed_prune",
            f"the chain starts after seq {anchor_seq}, but no witnessed prune ends there: records up to "
            f"seq {anchor_seq} were removed without a witnessed prune and archive",
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

    def check_end(self, *, last_seq: int) -> tuple[BreakKind, str] | None:
        last = self.last_seq
        if last <= last_seq:
            return None
        entry = self.by_seq[last]
        return (
            "truncated",
            f"the chain ends at seq {last_seq}, but the witness signed seq {last} (record {entry.id}, "
            f"hash {entry.hash}) at {entry.ts}: records from seq {last_seq + 1} were deleted",
        )


def read_entries(lines: Iterable[str], keys: Sequence[Ed25519PublicKey]) -> WitnessLog:
    """Parse and verify every line; WitnessError names the first line that does not hold."""
    by_id = {key_id(k): k for k in keys}
    entries: list[WitnessEntry] = []
    for n, line in enumerate(lines, 1):
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


# -- writing ------------------------------------------------------------------------------


class Witness(Protocol):
    name: str

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        """Deliver `entries` in order, or raise."""
        ...

    async def aclose(self) -> None: ...


class FileWitness:
    """An append-only JSON Lines file: O_APPEND, one write and an fsync per entry."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            for entry in entries:
                os.write(fd, entry.line().encode())
                os.fsync(fd)
        finally:
            os.close(fd)

    def last(self) -> WitnessEntry | None:
        """The last complete entry (unverified: used only to skip a repeat), or None."""
        try:
            with self.path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 65536))
                tail = f.read().decode("utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return None
        for line in reversed(tail):
            try:
                return WitnessEntry.from_json(json.loads(line))
            except ValueError:
                continue
        return None

    async def aclose(self) -> None:
        return None


class WebhookWitness(JsonPoster):
    """POSTs each entry's JSON; the receiver keeps one line per entry (the file's format)."""

    name = "webhook"

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        for entry in entries:
            resp = await self._post(entry.line().encode())
            if resp.status_code >= 300:
                raise WitnessError(f"witness webhook answered {resp.status_code}")


@dataclass(frozen=True, slots=True)
class _Forwarded:
    """A witness entry in the shape the SIEM transports send (`forward.Forwardable`)."""

    entry: WitnessEntry
    ts: datetime
    type: str = "audit.witness"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "witness": self.entry.to_json()}


class SinkWitness:
    """The SIEM sink (`audit.sink`) through its forwarder's transport."""

    name = "sink"

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    async def write(self, entries: Sequence[WitnessEntry]) -> None:
        now = datetime.now(UTC)
        await self._transport.send([_Forwarded(e, now) for e in entries])

    async def aclose(self) -> None:
        await self._transport.aclose()


class Outbox:
    """Entries a witness has not taken yet (`<state_dir>/witness-<name>.outbox.jsonl`), and the
    last checkpoint seq it took, so that an idle chain is not re-sent every run."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self._pending = state_dir / f"witness-{name}.outbox.jsonl"
        self._done = state_dir / f"witness-{name}.last"

    def pending(self) -> list[WitnessEntry]:
        try:
            text = self._pending.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [WitnessEntry.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]

    def last_seq(self) -> int:
        try:
            return int(self._done.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def save(self, pending: Sequence[WitnessEntry], last_seq: int) -> None:
        self._pending.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._pending.with_suffix(".tmp")
        tmp.write_text("".join(e.line() for e in pending), encoding="utf-8")
        tmp.replace(self._pending)
        self._done.write_text(str(last_seq))


async def deliver(witnesses: Sequence[Witness], entry: WitnessEntry, *, state_dir: Path) -> dict[str, str]:
    """Give `entry` to every witness: what each did ("written", "already", "failed").

    A checkpoint a witness already holds (same or later seq) is not sent again; a prune entry
    always is. A failed delivery stays in the witness's outbox for the next run (the file
    witness is retried the same way: its outbox is in `state_dir`, not beside the file).
    """
    outcome: dict[str, str] = {}
    for witness in witnesses:
        outbox = Outbox(state_dir, witness.name)
        pending = outbox.pending()
        done = outbox.last_seq()
        if isinstance(witness, FileWitness):
            last = witness.last()
            done = max(done, last.seq if last is not None and last.kind == "checkpoint" else 0)
        queued = max((e.seq for e in pending if e.kind == "checkpoint"), default=0)
        fresh = entry.kind == "prune" or entry.seq > max(done, queued)
        batch = [*pending, entry] if fresh else pending
        if not batch:
            outcome[witness.name] = "already"
            continue
        try:
            await witness.write(batch)
        except Exception as exc:  # any witness fault: keep the entries and retry next run
            outbox.save(batch, done)
            WITNESSED.labels(witness.name, "failed").inc(len(batch))
            # The error's type and the status only: a webhook's headers never reach the log.
            log.warning("audit_witness_failed", witness=witness.name, entries=len(batch),
                        error=type(exc).__name__, detail=str(exc)[:200])
            outcome[witness.name] = "failed"
            continue
        delivered = max([done, *(e.seq for e in batch if e.kind == "checkpoint")])
        outbox.save([], delivered)
        WITNESSED.labels(witness.name, "written").inc(len(batch))
        outcome[witness.name] = "written"
    return outcome


# -- the worker's runs --------------------------------------------------------------------


class WitnessedStore(Protocol):
    async def audit_head(self) -> AuditRecord | None: ...
    async def audit_record(self, seq: int) -> AuditRecord | None: ...
    async def checkpoint_audit(self, key: Ed25519PrivateKey) -> AuditRecord | None: ...
    async def prune_audit(
        self, *, before: datetime, archive_dir: Path,
        on_archived: Callable[[ArchiveSummary], Awaitable[None]] | None = None,
    ) -> ArchiveSummary | None: ...


@dataclass
class WitnessSetup:
    key: Ed25519PrivateKey
    witnesses: list[Witness]
    state_dir: Path

    async def aclose(self) -> None:
        for witness in self.witnesses:
            await witness.aclose()


def build_setup(settings: Any) -> WitnessSetup:
    """The signing key and witnesses of `settings.audit`; ValueError says which key is missing."""
    from broker.audit.signing import load_private_key

    audit = settings.audit
    if audit.signing_key_file is None:
        raise ValueError("audit.signing_key_file is not set: nothing can sign checkpoints")
    if not audit.witness.configured:
        raise ValueError("no witness configured: set audit.witness.file (or webhook_url, or to_sink)")
    try:
        key = load_private_key(audit.signing_key_file)
    except OSError as exc:
        raise ValueError(f"audit.signing_key_file: cannot read {audit.signing_key_file}: {exc.strerror}") from None
    witnesses: list[Witness] = []
    if audit.witness.file is not None:
        witnesses.append(FileWitness(audit.witness.file))
    if audit.witness.webhook_url is not None:
        headers = {k: v.get_secret_value() for k, v in audit.witness.webhook_headers.items()}
        witnesses.append(
            WebhookWitness(audit.witness.webhook_url, headers=headers, timeout=audit.witness.webhook_timeout)
        )
    if audit.witness.to_sink:
        if audit.sink is None:
            raise ValueError("audit.witness.to_sink is true but audit.sink is not set")
        # The forwarder's transports; the entry goes out as one `audit.witness` item.
        sink = audit.sink
        transport: Transport
        if sink.kind == "webhook":
            headers = {k: v.get_secret_value() for k, v in sink.headers.items()}
            transport = WebhookTransport(sink.url, headers=headers, timeout=sink.timeout)
        else:
            transport = SyslogTransport(sink.address, facility=sink.facility)
        witnesses.append(SinkWitness(transport))
    return WitnessSetup(key, witnesses, Path(settings.data_dir) / "witness")


async def witness_head(store: WitnessedStore, setup: WitnessSetup) -> dict[str, Any] | None:
    """Sign the chain head and give it to every witness; None when the chain is empty.

    Unless the head already is a checkpoint, an `audit.checkpoint` record is appended first,
    so the head signed is a checkpoint and an idle chain is not signed again. Before signing,
    the last entry of the file witness must still be in the chain: a chain found rewritten is
    not signed (WitnessError), it is reported.
    """
    head = await store.audit_head()
    if head is None:
        return None
    for witness in setup.witnesses:
        if isinstance(witness, FileWitness):
            last = witness.last()
            if last is not None and last.kind == "checkpoint" and last.seq <= head.seq:
                held = await store.audit_record(last.seq)
                if held is None or held.hash != last.hash:
                    raise WitnessError(
                        f"the chain no longer holds witnessed seq {last.seq} (hash {last.hash}): "
                        "not signing a rewritten chain; run `jitgate audit verify --witness`"
                    )
            elif last is not None and last.kind == "checkpoint" and last.seq > head.seq:
                raise WitnessError(
                    f"the chain ends at seq {head.seq} but seq {last.seq} was witnessed: not signing a "
                    "truncated chain; run `jitgate audit verify --witness`"
                )
    if head.type != "audit.checkpoint":
        signed = await store.checkpoint_audit(setup.key)
        head = signed or head
    entry = checkpoint_entry(setup.key, head)
    outcome = await deliver(setup.witnesses, entry, state_dir=setup.state_dir)
    return {"seq": entry.seq, "hash": entry.hash, "witnesses": outcome}


async def prune_witnessed(
    store: WitnessedStore, setup: WitnessSetup, *, before: datetime, archive_dir: Path
) -> ArchiveSummary | None:
    """Prune with the archive signed and witnessed before anything is deleted, then sign the
    new head (the `audit.prune` record). If no witness takes the prune entry, nothing is pruned."""

    async def witnessed(summary: ArchiveSummary) -> None:
        outcome = await deliver(setup.witnesses, prune_entry(setup.key, summary), state_dir=setup.state_dir)
        if "written" not in outcome.values():
            raise WitnessError(f"no witness took the prune entry ({outcome}); not pruning")

    summary = await store.prune_audit(before=before, archive_dir=archive_dir, on_archived=witnessed)
    if summary is not None:
        await witness_head(store, setup)
    return summary
