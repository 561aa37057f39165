"""The audit log in the store: appends serialised across processes, reads in chunks.

Appends happen inside the caller's transaction (`AuditRepository.append`), so a session row, a batch
of statements or a token and their audit records commit or roll back together. Serialising:
SQLite transactions here start with `BEGIN IMMEDIATE` and so already hold the database's
single write lock; PostgreSQL takes a transaction-scoped advisory lock before reading the
head. Either way each append reads the head, chains onto it and moves it, and two
processes appending at once make one chain.

Reads (`iter_audit`) use keyset pagination by `seq`, one short transaction per chunk, so
verification and exports run in constant memory and never hold a long read transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import json
import os
import sqlite3
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Row, Table, Text, cast, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from broker.audit.archive import (
    ArchiveSummary,
    archive_name,
    archive_through,
    legacy_sessions,
    unfinished_archive,
    whole_archive,
    write_archive,
)
from broker.audit.chain import (
    GENESIS_HASH,
    AuditRecord,
    Break,
    ChainVerifier,
    CheckpointCheck,
    ContentParts,
    TailLimits,
    VerifyReport,
    WitnessCheck,
    canonical_json,
    content_from_parts,
    content_parts,
    format_ts,
)
from broker.audit.events import AuditEvent, audit_pruned
from broker.audit.signing import checkpoint_event
from broker.exceptions import StoreError
from broker.store.base import StoreBase, file_lock, translate_errors
from broker.store.models import AuditEventRow, AuditState

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

# "jitaudit" in ASCII; distinct from the migration lock.
_PG_AUDIT_LOCK_KEY = 0x6A69746175646974
# "jitprune": serialises prunes only, never appends.
_PG_PRUNE_LOCK_KEY = 0x6A69747072756E65
# The prune lock of an in-memory SQLite store (one process, so one lock per engine suffices).
_LOCAL_PRUNE_LOCKS: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()
_STATE_ID = 1
DEFAULT_CHUNK = 1000
# Core, not ORM, for the rows: several times cheaper for bulk inserts and chunked reads.
_EVENTS: Table = AuditEventRow.__table__  # type: ignore[assignment]
_AUDIT_COLUMNS = ("seq", "id", "ts", "type", "actor", "session_id", "data", "prev_hash", "hash")
_STATE = AuditState.__tablename__
# `data` as the text stored (json on PostgreSQL keeps it as written, duplicate keys included).
_STORED_COLUMNS = [cast(c, Text).label("data") if c.name == "data" else c for c in _EVENTS.columns]


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_keys)
SQLITE_AUDIT_INSERT = (
    f"INSERT INTO {_EVENTS.name} ({', '.join(_AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(_AUDIT_COLUMNS))})"
)


def _sqlite_datetime(ts: datetime) -> str:
    """A timestamp as SQLAlchemy stores `UTCDateTime` in SQLite: naive UTC, microseconds always."""
    if ts.tzinfo is None:
        raise ValueError("naive datetime given to the store; use an aware UTC datetime")
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


@functools.lru_cache(maxsize=4096)
def timestamp_forms(ts: datetime) -> tuple[str, str]:
    """(`format_ts(ts)`, `_sqlite_datetime(ts)`): a statement's start is written four times per
    record (its data, its row, the audit record's `ts` and hashed text), formatted once here."""
    text = format_ts(ts)
    if len(text) == 27 and text[4] == "-":  # a four-digit year: the same digits, other separators
        return text, text[:10] + " " + text[11:26]
    return text, _sqlite_datetime(ts)


# (type, actor, session_id, data, canonical_json(data)): an event ready to be chained.
AuditEntry = tuple[str, "str | None", "str | None", dict[str, Any], str]


_VARIANT = "89ab89ab89ab89ab"  # RFC 4122 variant: the top two bits of the 17th hex digit are 10


def _uuid4_text(hex32: str) -> str:
    """`str(uuid.UUID(hex=hex32, version=4))` at a third of the cost (per audit record)."""
    return (
        f"{hex32[:8]}-{hex32[8:12]}-4{hex32[13:16]}-{_VARIANT[int(hex32[16], 16)]}{hex32[17:20]}-{hex32[20:]}"
    )


def chain_rows(
    prev_seq: int, prev_hash: str, entries: Sequence[AuditEntry], now: datetime, *, sqlite: bool, keep: bool,
    times: Sequence[datetime] | None = None, stamps: Sequence[tuple[str, str]] | None = None,
) -> tuple[list[tuple[Any, ...]], list[AuditRecord]]:
    """Seal `entries` onto the head `(prev_seq, prev_hash)`: the rows to insert, in
    `_AUDIT_COLUMNS` order (SQLite form when `sqlite`), and, with `keep`, the records.

    A record's `ts` is its event's time: `times[i]` when given (a statement's start, however
    late its batch is written), else `now`. `seq` is the order of appending, so `ts` may
    go backwards across sessions; the chain's order is `seq`.

    Per record this costs one SHA-256 over `content_from_parts` (which is
    `canonical(record.content())` byte for byte, so `seal` and the verifier agree), with
    `data` serialised once by the caller and the text around it once per session
    (`content_parts`); the timestamp is formatted once per batch (or per record with `times`:
    `timestamp_forms`, or given with `times` as `stamps`: each one's (`format_ts`, SQLite)
    text) and the record ids come from one `os.urandom` call. The hash is
    `chain_hash`'s, chained on the previous digest's bytes instead of its hex.
    """
    ts_text = format_ts(now)
    randomness = os.urandom(16 * len(entries)).hex()
    ts_db: Any = _sqlite_datetime(now) if sqlite else now
    rows: list[tuple[Any, ...]] = []
    records: list[AuditRecord] = []
    prev_digest = bytes.fromhex(prev_hash)
    parts: dict[tuple[str, str | None, str | None], ContentParts] = {}
    for i, (type_, actor, session_id, data, data_json) in enumerate(entries):
        if times is not None:
            now = times[i]
            if stamps is not None:
                ts_text, ts_db = stamps[i] if sqlite else (stamps[i][0], now)
            elif sqlite:
                ts_text, ts_db = timestamp_forms(now)
            else:
                ts_text, ts_db = timestamp_forms(now)[0], now
        seq = prev_seq + 1
        id_ = _uuid4_text(randomness[32 * i : 32 * i + 32])
        around = parts.get((type_, actor, session_id))
        if around is None:
            around = parts[type_, actor, session_id] = content_parts(type=type_, actor=actor, session_id=session_id)
        sealed = hashlib.sha256(prev_digest + content_from_parts(around, data_json, id_, seq, ts_text)).digest()
        digest = sealed.hex()
        rows.append((seq, id_, ts_db, type_, actor, session_id, data_json if sqlite else data, prev_hash, digest))
        if keep:
            records.append(AuditRecord(seq, id_, now, type_, actor, session_id, data, prev_hash, digest))
        prev_seq, prev_hash, prev_digest = seq, digest, sealed
    return rows, records


def sqlite_insert_rows(db: sqlite3.Connection, insert_sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert `rows` with few multi-row statements, of sizes that recur.

    `insert_sql` is "INSERT ... VALUES (?, ..., ?)" with an optional tail after the VALUES
    group (an ON CONFLICT clause). One multi-row INSERT rather than an executemany: the
    sqlite3 module releases and retakes the GIL around every step, once per row in an
    executemany, and under a busy relay loop each retake can wait a whole switch interval.

    Statements of `per` rows (what the bound-variable limit allows, at most a recorder's full
    batch of 500), the rest in statements of power-of-two sizes: sqlite3 keeps what it
    compiled only for a statement text it has seen (128 of them), and compiling a 500-row
    INSERT costs about as much as running it, which every batch of a new size would pay.
    """
    if not rows:
        return
    head, sep, tail = insert_sql.partition(" VALUES ")
    group, close, tail = tail.partition(")")
    group += close
    width = len(rows[0])
    try:
        limit = db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except AttributeError:  # pragma: no cover - Python < 3.11
        limit = 999
    per = max(1, min(limit // width, 500))
    start = 0
    while start < len(rows):
        left = len(rows) - start
        size = per if left >= per else 1 << (left.bit_length() - 1)
        chunk = rows[start : start + size]
        db.execute(head + sep + ",".join([group] * size) + tail, list(itertools.chain.from_iterable(chunk)))
        start += size


def sqlite_append_audit(
    db: sqlite3.Connection, entries: Sequence[AuditEntry], now: datetime, *, keep: bool,
    times: Sequence[datetime] | None = None, stamps: Sequence[tuple[str, str]] | None = None,
) -> list[AuditRecord]:
    """`append_entries` on a plain sqlite3 connection, inside the caller's transaction
    (which holds SQLite's write lock: `BEGIN IMMEDIATE`). For work done in one call on the
    database's own thread (see `SessionRepository.record_statements`)."""
    head = db.execute(f"SELECT head_seq, head_hash FROM {_STATE} WHERE id = ?", (_STATE_ID,)).fetchone()
    if head is None:
        db.execute(
            f"INSERT INTO {_STATE} (id, head_seq, head_hash, anchor_seq, anchor_hash) VALUES (?, 0, ?, 0, ?)",
            (_STATE_ID, GENESIS_HASH, GENESIS_HASH),
        )
        head = (0, GENESIS_HASH)
    rows, records = chain_rows(head[0], head[1], entries, now, sqlite=True, keep=keep, times=times, stamps=stamps)
    sqlite_insert_rows(db, SQLITE_AUDIT_INSERT, rows)
    db.execute(
        f"UPDATE {_STATE} SET head_seq = ?, head_hash = ? WHERE id = ?", (rows[-1][0], rows[-1][-1], _STATE_ID)
    )
    return records


class AuditRepository:
    def __init__(self, core: StoreBase) -> None:
        self.core = core

    async def lock(self, session: AsyncSession) -> None:
        """Take the append lock first thing in a transaction that will append (lock order)."""
        if self.core.dialect == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_AUDIT_LOCK_KEY})

    async def append(self, session: AsyncSession, events: Sequence[AuditEvent]) -> list[AuditRecord]:
        """Chain `events` onto the head within `session`'s transaction (lock already held)."""
        if not events:
            return []
        return await self.append_entries(
            session, [(e.type, e.actor, e.session_id, e.data, canonical_json(e.data)) for e in events]
        )

    async def append_entries(
        self, session: AsyncSession, entries: Sequence[AuditEntry], times: Sequence[datetime] | None = None
    ) -> list[AuditRecord]:
        """The append itself, for `(type, actor, session_id, data, canonical_json(data))` entries
        (`times`: their event times, see `chain_rows`)."""
        if not entries:
            return []
        state = await session.get(AuditState, _STATE_ID)
        if state is None:
            state = AuditState(
                id=_STATE_ID, head_seq=0, head_hash=GENESIS_HASH, anchor_seq=0, anchor_hash=GENESIS_HASH
            )
            session.add(state)
        sqlite = self.core.dialect == "sqlite"
        rows, records = chain_rows(
            state.head_seq, state.head_hash, entries, self.core.clock(), sqlite=sqlite, keep=True, times=times
        )
        if sqlite:
            # Straight to the driver: the values are already what SQLAlchemy would bind (naive
            # UTC timestamp text, the JSON column as text), without its per-row processing.
            conn = await session.connection()
            await conn.exec_driver_sql(SQLITE_AUDIT_INSERT, rows)
        else:
            await session.execute(insert(_EVENTS), [dict(zip(_AUDIT_COLUMNS, row, strict=True)) for row in rows])
        state.head_seq, state.head_hash = rows[-1][0], rows[-1][-1]
        if self.core.audit_listeners:
            session.info.setdefault("audit_appended", []).extend(records)
        return records

    async def append_audit(self, *events: AuditEvent) -> list[AuditRecord]:
        """Append events on their own (for events with no row of their own to commit with)."""
        async with self.core.transaction("append audit") as session:
            await self.lock(session)
            return await self.append(session, events)

    async def audit_state(self) -> AuditState | None:
        async with self.core.transaction("read audit head", read_only=True) as session:
            state = await session.get(AuditState, _STATE_ID)
            if state is not None:
                session.expunge(state)
            return state

    async def iter_audit(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> AsyncIterator[AuditRecord]:
        """Records in seq order, filtered by seq range and `since <= ts < until`."""
        last = (from_seq - 1) if from_seq is not None else None
        while True:
            query = select(_EVENTS).order_by(_EVENTS.c.seq).limit(chunk)
            if last is not None:
                query = query.where(_EVENTS.c.seq > last)
            if to_seq is not None:
                query = query.where(_EVENTS.c.seq <= to_seq)
            if since is not None:
                query = query.where(_EVENTS.c.ts >= since)
            if until is not None:
                query = query.where(_EVENTS.c.ts < until)
            async with self.core.transaction("read audit", read_only=True) as session:
                batch = [_record(r) for r in await session.execute(query)]
            for record in batch:
                yield record
            if len(batch) < chunk:
                return
            last = batch[-1].seq

    async def count_audit(self, *, since: datetime | None = None, until: datetime | None = None) -> int:
        query = select(func.count()).select_from(_EVENTS)
        if since is not None:
            query = query.where(_EVENTS.c.ts >= since)
        if until is not None:
            query = query.where(_EVENTS.c.ts < until)
        async with self.core.transaction("count audit", read_only=True) as session:
            return int(await session.scalar(query) or 0)

    async def checkpoint_audit(self, key: Ed25519PrivateKey) -> AuditRecord | None:
        """Append a signed checkpoint over the current head; None if the chain is empty."""
        async with self.core.transaction("checkpoint audit") as session:
            await self.lock(session)
            state = await session.get(AuditState, _STATE_ID)
            if state is None or state.head_seq == 0:
                return None
            event = checkpoint_event(key, seq=state.head_seq, hash_=state.head_hash)
            (record,) = await self.append(session, [event])
            return record

    async def verify_audit(
        self,
        *,
        from_seq: int | None = None,
        to_seq: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        checkpoints: CheckpointCheck | None = None,
        witness: WitnessCheck | None = None,
        limits: TailLimits | None = None,
    ) -> VerifyReport:
        """Walk the chain (or a seq range of it) and report the first break.

        A whole-chain check starts from the retention anchor and ends at the stored head. A
        range starts from the record before it (trusted, not re-checked: the report's
        `trusted_start`) unless it starts at the anchor, and must reach `to_seq` or the head,
        whichever is lower. With a `witness`, witnessed records must be in the chain unchanged,
        every witnessed seq up to the range's end must be found and, from the anchor, the start
        must be the witness's last prune. `limits` bound the unwitnessed tail. The report lists
        in `unanchored` what could not be checked.
        """
        state = await self.audit_state()
        anchor_seq = state.anchor_seq if state is not None else 0
        anchor_hash = state.anchor_hash if state is not None else GENESIS_HASH
        whole = to_seq is None
        head = (state.head_seq, state.head_hash) if state is not None else None
        start = max(from_seq or 0, anchor_seq + 1)
        if start <= anchor_seq + 1:
            verifier = ChainVerifier(
                prev_hash=anchor_hash, prev_seq=anchor_seq, head=head, to_seq=to_seq, checkpoints=checkpoints,
                witness=witness, witness_start=True,
            )
        else:
            prev = await self._audit_record(start - 1)
            verifier = ChainVerifier(
                prev_hash=prev.hash if prev else None, prev_seq=start - 1, head=head, to_seq=to_seq,
                checkpoints=checkpoints, witness=witness, trusted_start=start,
            )
        async for record, stored_wrong in self._iter_audit_stored(from_seq=start, to_seq=to_seq, chunk=chunk):
            if stored_wrong is not None:
                verifier.reject(record, "altered", stored_wrong)
                break
            if verifier.feed(record) is not None:
                break
        if state is None and verifier.checked and verifier.broken is None:
            # Records without a head: the head row itself was removed.
            verifier.broken = Break(verifier.last_seq + 1, None, "truncated", "the chain head record is missing")
        head_now = None
        if whole and verifier.broken is None:
            after = await self.audit_state()
            head_now = after.head_seq if after is not None else 0
        report = verifier.finish(head_now=head_now, now=self.core.clock(), limits=limits)
        return dataclasses.replace(report, unanchored=_unanchored(report, checkpoints, witness))

    async def _iter_audit_stored(
        self, *, from_seq: int, to_seq: int | None, chunk: int
    ) -> AsyncIterator[tuple[AuditRecord, str | None]]:
        """Records in seq order with their `data` parsed from the stored text, each with why
        that text is not what was hashed (None if it is): a duplicate key is read as its last
        value here, and may be read as another by anything else that parses the row."""
        last = from_seq - 1
        while True:
            query = select(*_STORED_COLUMNS).where(_EVENTS.c.seq > last).order_by(_EVENTS.c.seq).limit(chunk)
            if to_seq is not None:
                query = query.where(_EVENTS.c.seq <= to_seq)
            async with self.core.transaction("read audit", read_only=True) as session:
                rows = list(await session.execute(query))
            for row in rows:
                try:
                    data = _STRICT_JSON.decode(row.data)
                    wrong = None if isinstance(data, dict) else "stored data is not a JSON object"
                except ValueError as exc:
                    data, wrong = {}, f"stored data is not one JSON object with unique keys: {exc}"
                yield AuditRecord(
                    row.seq, row.id, row.ts, row.type, row.actor, row.session_id,
                    data if isinstance(data, dict) else {}, row.prev_hash, row.hash,
                ), wrong
            if len(rows) < chunk:
                return
            last = rows[-1].seq

    async def prune_audit(
        self,
        *,
        before: datetime,
        archive_dir: Path,
        on_archived: Callable[[ArchiveSummary], Awaitable[None]] | None = None,
        held_by_witness: Callable[[ArchiveSummary], Awaitable[bool]] | None = None,
    ) -> ArchiveSummary | None:
        """Archive records older than `before` to a JSONL.gz file, then delete them.

        Only a prefix of the chain goes: up to the record before the first one at or after
        `before` (`ts` is the event's time and may go backwards, so one old record further on
        never takes younger ones with it). The archive is written and checked first, then
        `on_archived` runs (the witness signs the archive there; if it raises, the archive is
        removed and nothing is deleted), then one transaction deletes the records, moves the
        anchor to the last one archived and appends an `audit.prune` record. Prunes are
        serialised across processes (`_prune_lock`), so a witness never holds the entry of a
        prune that lost a race. Returns None when nothing is old enough.

        A prune archived, and perhaps signed, by an earlier run that died or failed before its
        deletion committed left its archive, which starts right after the anchor: that prune
        is finished first, at its own cut (`on_archived` run again, the summary `resumed`),
        and a new cut is left to the next call. Cutting elsewhere would put a second prune from
        the same start in the witness, which no verifier can accept. A file under that name
        proves nothing, so it is finished only if it verifies whole, it is what the live chain
        holds through its last seq, and either `held_by_witness` (given when witnessing) says a
        witness holds its signed prune entry, or every record it holds is older than `before`
        (the cut this call would make anyway, or a shorter one). Otherwise StoreError naming
        the file, and nothing is deleted.
        """
        async with self._prune_lock():
            return await self._prune_audit(
                before=before, archive_dir=archive_dir, on_archived=on_archived, held_by_witness=held_by_witness
            )

    async def _prune_audit(
        self,
        *,
        before: datetime,
        archive_dir: Path,
        on_archived: Callable[[ArchiveSummary], Awaitable[None]] | None,
        held_by_witness: Callable[[ArchiveSummary], Awaitable[bool]] | None,
    ) -> ArchiveSummary | None:
        state = await self.audit_state()
        if state is None or state.head_seq <= state.anchor_seq:
            return None
        # An admin operation, not the data path: the file I/O may block this loop briefly.
        try:
            unfinished = await asyncio.to_thread(unfinished_archive, archive_dir, state.anchor_seq)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        through = await self._cut(state, before)
        if unfinished is not None:
            summary = await self._resume(unfinished, state, cut=through, held_by_witness=held_by_witness)
        else:
            if through <= state.anchor_seq:
                return None
            await asyncio.to_thread(archive_dir.mkdir, parents=True, exist_ok=True)
            summary = await write_archive(
                archive_dir / archive_name(state.anchor_seq + 1, through),
                self.iter_audit(from_seq=state.anchor_seq + 1, to_seq=through),
                prev_seq=state.anchor_seq,
                prev_hash=state.anchor_hash,
                unlisted=functools.partial(legacy_sessions, archive_dir),
            )
        path = summary.path
        if on_archived is not None:
            try:
                await on_archived(summary)
            except BaseException:
                if not summary.resumed:  # an earlier run's archive may be witnessed: it stays
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                raise
        async with self.core.transaction("prune audit") as session:
            await self.lock(session)
            current = await session.get(AuditState, _STATE_ID)
            if current is None or current.anchor_seq != state.anchor_seq:
                # Moved by something that does not take the prune lock. The archive stays: its
                # prune may already be witnessed, and the witness's entry must keep its file.
                raise StoreError(
                    f"the audit anchor moved from seq {state.anchor_seq} during the prune; nothing deleted, "
                    f"{path.name} kept"
                )
            await session.execute(
                delete(_EVENTS).where(_EVENTS.c.seq > state.anchor_seq, _EVENTS.c.seq <= summary.through_seq)
            )
            current.anchor_seq, current.anchor_hash = summary.through_seq, summary.through_hash
            await self.append(
                session,
                [
                    audit_pruned(
                        archive=path.name,
                        through_seq=summary.through_seq,
                        through_hash=summary.through_hash,
                        records=summary.records,
                        sessions=summary.sessions,
                    )
                ],
            )
        return summary

    async def _cut(self, state: AuditState, before: datetime) -> int:
        """The last seq a prune at `before` takes: the record before the first one at or after
        `before` (the anchor itself when there is nothing to take)."""
        async with self.core.transaction("find audit cut", read_only=True) as session:
            young = await session.scalar(
                select(func.min(_EVENTS.c.seq)).where(_EVENTS.c.ts >= before, _EVENTS.c.seq > state.anchor_seq)
            )
        return state.head_seq if young is None else int(young) - 1

    async def _resume(
        self, path: Path, state: AuditState, *, cut: int,
        held_by_witness: Callable[[ArchiveSummary], Awaitable[bool]] | None,
    ) -> ArchiveSummary:
        """The summary of the unfinished prune whose archive is `path`, once it is shown to be
        one (see `prune_audit`); StoreError, nothing deleted and the file left as it is, if not.

        The chain is archived again beside it and the two compared, so that what is signed and
        deleted is what the chain holds. A file that is not a whole archive is refused rather
        than written again: `write_archive` renames only finished files into place, so no crash
        leaves one, and replacing it would let any file under that name move records out."""
        through = archive_through(path)
        start = state.anchor_seq + 1
        kept, why = await asyncio.to_thread(whole_archive, path)
        if kept is None:
            raise StoreError(
                f"{path} is named as the archive of an unfinished prune from seq {start} but is not a whole "
                f"archive ({why}): nothing deleted. A prune never leaves a partial archive under that name; "
                f"check it (`jitgate audit verify-archive`), move it out of {path.parent} and prune again"
            )
        check = path.with_name(f".{path.name}.check")
        try:
            fresh = await write_archive(
                check,
                self.iter_audit(from_seq=start, to_seq=through),
                prev_seq=state.anchor_seq,
                prev_hash=state.anchor_hash,
                unlisted=functools.partial(legacy_sessions, path.parent),
            )
        finally:
            await asyncio.to_thread(check.unlink, missing_ok=True)
        summary = dataclasses.replace(fresh, path=path, resumed=True)
        if fresh.through_seq != through or kept != fresh.trailer()["archive"]:
            raise StoreError(
                f"{path.name}, archived by a prune that did not finish, is not what the chain now holds "
                f"from seq {start}: nothing deleted; compare them "
                f"(`jitgate audit verify-archive`, `jitgate audit verify --witness`)"
            )
        # Anyone who can read the store can write an archive that matches it: what makes this
        # one a prune to finish is a witness's signed entry, or a cut this call would make anyway.
        if through <= cut or (held_by_witness is not None and await held_by_witness(summary)):
            return summary
        configured = "" if held_by_witness is not None else " (none is configured)"
        raise StoreError(
            f"{path} matches the chain from seq {start} through {through}, but no witness holds a signed "
            f"prune entry for it{configured} and seq {cut + 1} is not older than the cutoff: nothing deleted. "
            f"If it is a prune you started, prune with a cutoff after seq {through}'s time; otherwise move it "
            f"out of {path.parent} and prune again"
        )

    @asynccontextmanager
    async def _prune_lock(self) -> AsyncIterator[None]:
        """One prune at a time for this store, across processes: on PostgreSQL an advisory
        lock held by a connection of its own for the whole prune (appends are not blocked); on
        SQLite an exclusive lock on a sidecar file (`<db>.prune.lock`), since holding SQLite's
        write lock that long would stall every append."""
        if self.core.dialect == "postgresql":
            async with translate_errors("lock audit prune"), self.core.engine.connect() as conn:
                await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _PG_PRUNE_LOCK_KEY})
                await conn.commit()
                try:
                    yield
                finally:
                    await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_PRUNE_LOCK_KEY})
                    await conn.commit()
            return
        database = self.core.engine.url.database or ""
        if fcntl is None or database in ("", ":memory:") or self.core.engine.url.query.get("mode") == "memory":
            async with _LOCAL_PRUNE_LOCKS.setdefault(self.core.engine, asyncio.Lock()):
                yield
            return
        async with file_lock(_prune_lock_file(database)):
            yield

    async def audit_head(self) -> AuditRecord | None:
        """The record at the stored head, or None for an empty chain (or a missing head record)."""
        state = await self.audit_state()
        if state is None or state.head_seq == 0:
            return None
        return await self._audit_record(state.head_seq)

    async def audit_record(self, seq: int) -> AuditRecord | None:
        return await self._audit_record(seq)

    async def _audit_record(self, seq: int) -> AuditRecord | None:
        async with self.core.transaction("read audit", read_only=True) as session:
            row = (await session.execute(select(_EVENTS).where(_EVENTS.c.seq == seq))).first()
            return None if row is None else _record(row)


def _prune_lock_file(database: str) -> str:
    return f"{Path(database).expanduser()}.prune.lock"


def _unanchored(
    report: VerifyReport, checkpoints: CheckpointCheck | None, witness: WitnessCheck | None
) -> tuple[str, ...]:
    """What this verification could not check, in words an auditor reads."""
    out: list[str] = []
    if checkpoints is None:
        out.append(
            "no public key (audit.verify_key_files or audit.signing_key_file): signatures were not "
            "checked, so a chain rewritten with recomputed hashes would pass"
        )
    if witness is None:
        out.append(
            "no witness (--witness or audit.witness.file): a deleted tail, a deleted start or a "
            "rewrite since the last checkpoint cannot be told from a valid chain"
        )
    elif report.ok and report.checked and report.witnessed_through is None:
        out.append("the witness holds none of the checked records: nothing here was anchored")
    return tuple(out)


def _record(row: Row[Any]) -> AuditRecord:
    return AuditRecord(
        seq=row.seq,
        id=row.id,
        ts=row.ts,
        type=row.type,
        actor=row.actor,
        session_id=row.session_id,
        data=dict(row.data),
        prev_hash=row.prev_hash,
        hash=row.hash,
    )
