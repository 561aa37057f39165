"""Writing to the witnesses: the worker's side of `broker.audit.witness`.

The witnesses (an append-only file, a webhook, the SIEM sink), the outbox that keeps a failed
delivery for the next run, the lock runs that overlap take turns on, and the two scheduled
steps: `witness_head` (sign the chain head, after checking every witness's last entry is still
held) and `prune_witnessed` (sign an archive before anything is deleted).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.archive import ArchiveSummary
from broker.audit.chain import AuditRecord
from broker.audit.forward import JsonPoster, transport_for
from broker.audit.witness import WITNESSED, Kind, WitnessEntry, WitnessError, checkpoint_entry, prune_entry

log = structlog.get_logger("jitgate.audit.witness")


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

    def prunes(self) -> Iterator[WitnessEntry]:
        """The file's prune entries, unverified, read line by line (the file only grows)."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                if b'"prune"' not in raw:
                    continue  # a checkpoint: most lines, not parsed
                try:
                    yield WitnessEntry.from_json(json.loads(raw))
                except ValueError:
                    continue

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


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a witness last took: the checkpoint seq it holds (to skip a repeat), and the last
    entry's kind, seq and hash (the chain must still hold it before anything is signed)."""

    checkpoint_seq: int = 0
    kind: Kind | None = None
    seq: int | None = None
    hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint_seq": self.checkpoint_seq, "kind": self.kind, "seq": self.seq, "hash": self.hash}


class Outbox:
    """Entries a witness has not taken yet (`<state_dir>/witness-<name>.outbox.jsonl`), and what
    it took last (`witness-<name>.last`, JSON; a bare seq from older versions is read too)."""

    def __init__(self, state_dir: Path, name: str) -> None:
        self._pending = state_dir / f"witness-{name}.outbox.jsonl"
        self._done = state_dir / f"witness-{name}.last"

    def pending(self) -> list[WitnessEntry]:
        try:
            text = self._pending.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [WitnessEntry.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]

    def delivered(self) -> Delivered:
        try:
            obj = json.loads(self._done.read_text() or "0")
        except (FileNotFoundError, ValueError):
            return Delivered()
        if isinstance(obj, int) and not isinstance(obj, bool):
            return Delivered(obj)  # older state: the seq only
        if not isinstance(obj, dict):
            return Delivered()
        kind, seq, hash_ = obj.get("kind"), obj.get("seq"), obj.get("hash")
        return Delivered(
            int(obj.get("checkpoint_seq") or 0),
            kind if kind in ("checkpoint", "prune") else None,
            seq if isinstance(seq, int) else None,
            hash_ if isinstance(hash_, str) else None,
        )

    def last_seq(self) -> int:
        return self.delivered().checkpoint_seq

    def save(self, pending: Sequence[WitnessEntry], delivered: Delivered) -> None:
        """Replace both files (hold `state_lock` around the read that this save follows)."""
        self._pending.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _replace(self._pending, "".join(e.line() for e in pending))
        _replace(self._done, json.dumps(delivered.to_json()))


def _replace(path: Path, text: str) -> None:
    """Write `text` to a fresh temporary file beside `path`, then rename it over `path`: a
    reader sees the old file or the new one, and two writers never share a temporary file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.asynccontextmanager
async def state_lock(state_dir: Path) -> AsyncIterator[None]:
    """`<state_dir>/witness.lock` (flock), held across every read-modify-write of the outboxes
    and `.last` files: two prefork children, or `jitgate audit checkpoint` next to the worker,
    take turns instead of losing each other's queued entries. Polled, so that waiting for it
    blocks neither the event loop nor a cancellation."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)  # a few syscalls: not worth a thread
    fd = os.open(state_dir / "witness.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


async def deliver(
    witnesses: Sequence[Witness], entry: WitnessEntry | None, *, state_dir: Path, down: Collection[str] = ()
) -> dict[str, str]:
    """Give each witness what its outbox holds, then `entry`: what each did ("written",
    "already", "failed"). With `entry` None, only the outboxes are flushed (and only the
    witnesses that had something queued are in the answer).

    A checkpoint a witness already holds (same or later seq) is not sent again; a prune entry
    always is. A failed delivery stays in the witness's outbox for the next run (the file
    witness is retried the same way: its outbox is in `state_dir`, not beside the file). The
    witnesses named in `down` failed earlier in this run: `entry` is queued for them untried.
    """
    outcome: dict[str, str] = {}
    async with state_lock(state_dir):
        for witness in witnesses:
            done = await _deliver_one(witness, entry, Outbox(state_dir, witness.name), down=witness.name in down)
            if done is not None:
                outcome[witness.name] = done
    return outcome


async def _deliver_one(witness: Witness, entry: WitnessEntry | None, outbox: Outbox, *, down: bool) -> str | None:
    pending = outbox.pending()
    before = outbox.delivered()
    done = before.checkpoint_seq
    if isinstance(witness, FileWitness):
        last = witness.last()
        done = max(done, last.seq if last is not None and last.kind == "checkpoint" else 0)
    queued = max((e.seq for e in pending if e.kind == "checkpoint"), default=0)
    fresh = entry is not None and (entry.kind == "prune" or entry.seq > max(done, queued))
    batch = [*pending, entry] if fresh and entry is not None else pending
    if not batch:
        return "already" if entry is not None else None
    if not down:
        try:
            await witness.write(batch)
        except Exception as exc:  # any witness fault: keep the entries and retry next run
            down = True
            WITNESSED.labels(witness.name, "failed").inc(len(batch))
            # The error's type and the status only: a webhook's headers never reach the log.
            log.warning("audit_witness_failed", witness=witness.name, entries=len(batch),
                        error=type(exc).__name__, detail=str(exc)[:200])
    if down:
        outbox.save(batch, dataclasses.replace(before, checkpoint_seq=done))
        return "failed"
    last_sent = batch[-1]
    outbox.save([], Delivered(
        max([done, *(e.seq for e in batch if e.kind == "checkpoint")]),
        last_sent.kind, last_sent.seq, last_sent.hash,
    ))
    WITNESSED.labels(witness.name, "written").inc(len(batch))
    return "written"


async def _drop_queued(witnesses: Sequence[Witness], entry: WitnessEntry, *, state_dir: Path) -> None:
    async with state_lock(state_dir):
        for witness in witnesses:
            outbox = Outbox(state_dir, witness.name)
            outbox.save([e for e in outbox.pending() if e != entry], outbox.delivered())


# -- the worker's runs --------------------------------------------------------------------


class AnchorState(Protocol):
    @property
    def anchor_seq(self) -> int: ...
    @property
    def anchor_hash(self) -> str: ...


class WitnessedStore(Protocol):
    async def audit_head(self) -> AuditRecord | None: ...
    async def audit_record(self, seq: int) -> AuditRecord | None: ...
    async def audit_state(self) -> AnchorState | None: ...
    async def checkpoint_audit(self, key: Ed25519PrivateKey) -> AuditRecord | None: ...
    async def prune_audit(
        self, *, before: datetime, archive_dir: Path,
        on_archived: Callable[[ArchiveSummary], Awaitable[None]] | None = None,
        held_by_witness: Callable[[ArchiveSummary], Awaitable[bool]] | None = None,
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
        # The forwarder's transport; the entry goes out as one `audit.witness` item.
        witnesses.append(SinkWitness(transport_for(audit.sink)))
    return WitnessSetup(key, witnesses, Path(settings.data_dir) / "witness")


async def holds_prune(setup: WitnessSetup, summary: ArchiveSummary) -> bool:
    """Whether a witness holds the prune entry of `summary`'s archive, signed with our key: a
    line of the file witness, or an entry still queued for a witness in its outbox (neither can
    be made without the key). What the webhook or the sink took cannot be read back; the
    store's other test (a cut the prune would make anyway) covers a prune they alone took."""
    archive = {**summary.trailer()["archive"], "name": summary.path.name}
    public = setup.key.public_key()

    def signed(entry: WitnessEntry) -> bool:
        if entry.kind != "prune" or entry.archive != archive:
            return False
        try:
            public.verify(base64.b64decode(entry.signature, validate=True), entry.message())
        except (InvalidSignature, ValueError):
            return False
        return True

    def look() -> bool:
        for witness in setup.witnesses:
            if any(signed(e) for e in Outbox(setup.state_dir, witness.name).pending()):
                return True
            if isinstance(witness, FileWitness) and any(signed(e) for e in witness.prunes()):
                return True
        return False

    return await asyncio.to_thread(look)


async def check_still_held(store: WitnessedStore, setup: WitnessSetup) -> None:
    """Raise WitnessError unless the chain still holds what every witness took last.

    For each witness: the last entry this worker gave it (or queued for it, from its outbox
    state) and, for the file witness, the file's last line. A checkpoint's (seq, hash) must be
    a record still in the chain with that hash; a prune's through (seq, hash) must be the
    store's anchor or, before the prune is applied, a record still held. Either may also be
    the anchor itself (pruned exactly there), or lie in what the prunes queued for that witness
    removed, when they are signed with our key and the last ends at the anchor (a prune the
    witness missed: its entry reaches it with the next delivery). A chain found otherwise is
    not signed: each witness refused counts `jitgate_audit_witness_total{outcome="refused"}`.
    """
    head = await store.audit_head()
    state = await store.audit_state()
    anchor = (state.anchor_seq, state.anchor_hash) if state is not None else (0, "")
    problems: list[str] = []
    for witness in setup.witnesses:
        outbox = Outbox(setup.state_dir, witness.name)
        queued = outbox.pending()
        refs: list[tuple[str, Kind | None, int | None, str | None]] = []
        if queued:
            refs.append(("queued", queued[-1].kind, queued[-1].seq, queued[-1].hash))
        else:
            d = outbox.delivered()
            refs.append(("delivered", d.kind, d.seq, d.hash))
        if isinstance(witness, FileWitness):
            last = witness.last()
            if last is not None:
                refs.append(("in the file", last.kind, last.seq, last.hash))
        pruned = _pruned_by(queued, anchor, setup.key.public_key())
        for where, kind, seq, hash_ in refs:
            if kind is None or seq is None:
                continue
            why = await _not_held(store, head, anchor, kind, seq, hash_, pruned)
            if why is not None:
                WITNESSED.labels(witness.name, "refused").inc()
                problems.append(f"{witness.name} ({where}): {why}")
                break
    if problems:
        # The caller logs it (the worker as `audit_witness_refused`, the CLI on stderr).
        raise WitnessError(
            f"{'; '.join(problems)}: not signing a rewritten or cut chain; run `jitgate audit verify --witness`"
        )


def _pruned_by(
    queued: Sequence[WitnessEntry], anchor: tuple[int, str], public: Ed25519PublicKey
) -> tuple[int, str] | None:
    """Where the queued prunes that end at `anchor` start: (seq, hash) of the record before the
    first of them; records after it up to the anchor were archived by prunes the witness will
    get. None when no queued prune, signed with `public`, ends at the anchor."""
    start: tuple[int, str] | None = None
    for entry in reversed(queued):
        a = entry.archive
        if entry.kind != "prune" or a is None or (a.get("through_seq"), a.get("through_hash")) != (start or anchor):
            continue
        try:
            public.verify(base64.b64decode(entry.signature, validate=True), entry.message())
        except (InvalidSignature, ValueError):
            continue
        start = (int(a["from_seq"]) - 1, str(a["prev_hash"]))
    return start


async def _not_held(
    store: WitnessedStore, head: AuditRecord | None, anchor: tuple[int, str], kind: Kind, seq: int,
    hash_: str | None, pruned: tuple[int, str] | None,
) -> str | None:
    head_seq = head.seq if head is not None else 0
    if seq > head_seq:
        return f"the chain ends at seq {head_seq} but seq {seq} was witnessed"
    if hash_ is None:
        return None  # the seq alone (state from an older version): nothing more to compare
    if anchor == (seq, hash_):
        return None
    if pruned is not None and (pruned[0] < seq <= anchor[0] or pruned == (seq, hash_)):
        return None  # archived by a prune queued for this witness
    held = await store.audit_record(seq)
    if held is not None and held.hash == hash_:
        return None
    what = "the prune through" if kind == "prune" else "witnessed"
    return (
        f"the chain no longer holds {what} seq {seq} (hash {hash_}), and its anchor is seq {anchor[0]}"
    )


async def _flush_and_check(store: WitnessedStore, setup: WitnessSetup) -> dict[str, str]:
    """Deliver what earlier runs queued (entries signed then, true whatever the chain holds
    now), then `check_still_held`. Returns what the flush did per witness that had a queue."""
    flushed = await deliver(setup.witnesses, None, state_dir=setup.state_dir)
    await check_still_held(store, setup)
    return flushed


def _still_down(flushed: dict[str, str]) -> set[str]:
    # Failed once in this run: not tried again (a webhook down costs its timeout each try).
    return {name for name, done in flushed.items() if done == "failed"}


async def witness_head(store: WitnessedStore, setup: WitnessSetup) -> dict[str, Any] | None:
    """Sign the chain head and give it to every witness; None when the chain is empty.

    Unless the head already is a checkpoint, an `audit.checkpoint` record is appended first,
    so the head signed is a checkpoint and an idle chain is not signed again. Before signing,
    the outboxes are flushed and what every witness took last must still be in the chain
    (`check_still_held`): a chain found rewritten is not signed (WitnessError), it is reported.
    """
    flushed = await _flush_and_check(store, setup)  # an emptied chain that was witnessed included
    head = await store.audit_head()
    if head is None:
        return None
    if head.type != "audit.checkpoint":
        signed = await store.checkpoint_audit(setup.key)
        head = signed or head
    entry = checkpoint_entry(setup.key, head)
    outcome = await deliver(setup.witnesses, entry, state_dir=setup.state_dir, down=_still_down(flushed))
    for name, done in outcome.items():
        if done == "already" and flushed.get(name) == "written":
            outcome[name] = "written"  # the head went out with the queued entries
    return {"seq": entry.seq, "hash": entry.hash, "witnesses": outcome}


async def prune_witnessed(
    store: WitnessedStore, setup: WitnessSetup, *, before: datetime, archive_dir: Path
) -> ArchiveSummary | None:
    """Prune with the archive signed and witnessed before anything is deleted, then sign the
    new head (the `audit.prune` record). If no witness takes the prune entry, nothing is pruned
    (WitnessError). A witness that missed it gets it from its outbox on a later run; a refusal
    to sign the new head after the prune is logged, not raised: the prune happened.

    A prune an earlier run signed but did not apply (it died, or the deletion failed) is
    finished first, at its cut, and signed again (the same archive: the witness's two entries
    are one prune to a verifier); only then is a new cut considered. Returns the last prune
    made, None when there was none."""
    outcome: dict[str, str] = {}

    async def witnessed(summary: ArchiveSummary) -> None:
        entry = prune_entry(setup.key, summary)
        outcome.clear()
        outcome.update(await deliver(setup.witnesses, entry, state_dir=setup.state_dir, down=down))
        if "written" not in outcome.values():
            # Not pruned, so the entry must not reach a witness later from an outbox: it would
            # stand in the witness for a prune that never happened.
            await _drop_queued(setup.witnesses, entry, state_dir=setup.state_dir)
            raise WitnessError(f"no witness took the prune entry ({outcome}); not pruning")

    async def prune() -> ArchiveSummary | None:
        summary = await store.prune_audit(
            before=before, archive_dir=archive_dir, on_archived=witnessed,
            held_by_witness=functools.partial(holds_prune, setup),
        )
        if summary is not None:
            log.info("audit_pruned", from_seq=summary.from_seq, through_seq=summary.through_seq,
                     records=summary.records, archive=summary.path.name, resumed=summary.resumed, witnesses=outcome)
        return summary

    down = _still_down(await _flush_and_check(store, setup))
    summary = await prune()
    if summary is None:
        return None
    try:
        if summary.resumed:
            summary = await prune() or summary
    finally:
        try:
            await witness_head(store, setup)
        except WitnessError as exc:
            log.error("audit_witness_refused", after_prune_through=summary.through_seq, error=str(exc))
    return summary
