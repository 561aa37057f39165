"""Proxy sessions and the statements recorded in them."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Table, and_, case, exists, func, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from broker.audit import coverage, events
from broker.audit.chain import AuditRecord, canonical_json
from broker.exceptions import StoreError, StoreIntegrityError, StoreUnavailable
from broker.store import statement_batch
from broker.store.audit import (
    _EVENTS,
    DEFAULT_CHUNK,
    AuditEntry,
    AuditRepository,
    _record,
    sqlite_append_audit,
    sqlite_insert_rows,
    timestamp_forms,
)
from broker.store.base import StoreBase, enum_value, translate_errors
from broker.store.models import Session, Statement
from broker.store.records import (
    ROW_STARTED_AT,
    SessionDetail,
    SessionEnd,
    SessionInfo,
    SessionStart,
    SessionStats,
    SessionSweep,
    StatementInfo,
    StatementRecord,
    StatementRow,
    statement_record,
)
from broker.store.statement_batch import NO_OWNER, STATEMENT_COLUMNS, as_fields, data_json

_R = TypeVar("_R")
_S = TypeVar("_S", StatementRecord, tuple[Any, ...])


class SessionRepository:
    def __init__(self, core: StoreBase, audit: AuditRepository) -> None:
        self.core = core
        self._audit = audit

    async def start_session(self, start: SessionStart) -> str:
        """Record a session's start and return its id (a UUID string)."""
        return (await self.start_sessions([start]))[0]

    async def start_sessions(self, starts: Sequence[SessionStart]) -> list[str]:
        """Record several session starts in one transaction (a connect burst, grouped by
        `broker.store.group_commit`); their ids, in order. All or none are recorded."""
        if not starts:
            return []
        now = self.core.clock()
        rows = [
            Session(
                id=str(uuid.uuid4()),
                token_id=s.grant.token_id,
                principal=s.grant.principal,
                groups=list(s.grant.groups),
                resource=s.grant.resource,
                role=s.grant.role,
                client_addr=s.client_addr,
                application_name=s.application_name,
                intent=s.intent,
                started_at=now,
                statements=0,
                bytes_in=0,
                bytes_out=0,
            )
            for s in starts
        ]
        async with self.core.transaction("start session") as session:
            await self._audit.lock(session)
            session.add_all(rows)
            # The record's ts is the row's started_at (one reading of the clock): the views
            # compare the two (`coverage.check_session`).
            await self._append_events_at(
                session,
                [
                    events.session_started(
                        session_id=row.id,
                        principal=s.grant.principal,
                        groups=s.grant.groups,
                        resource=s.grant.resource,
                        role=s.grant.role,
                        token_id=s.grant.token_id,
                        client_addr=s.client_addr,
                        application_name=s.application_name,
                        intent=s.intent,
                        owner=s.grant.owner,
                    )
                    for row, s in zip(rows, starts, strict=True)
                ],
                now,
            )
        return [row.id for row in rows]

    async def _append_events_at(
        self, session: AsyncSession, audit: Sequence[events.AuditEvent], at: datetime
    ) -> None:
        """`AuditRepository.append` with every record's ts `at` (the time written in the rows)."""
        if audit:
            await self._audit.append_entries(
                session, [(e.type, e.actor, e.session_id, e.data, canonical_json(e.data)) for e in audit],
                [at] * len(audit),
            )

    async def record_statements(self, records: Sequence[StatementRecord | StatementRow]) -> None:
        """Insert a batch of statements in one transaction: records, or the proxy's rows (the
        recorder's writer process passes those on as they came; see `statement_batch`).

        Idempotent: a record whose `(session_id, seq)` is already stored is skipped, so a
        batch retried after an ambiguous failure is not duplicated. A record for an unknown
        session raises `StoreIntegrityError` and nothing of the batch is written.

        Each statement written gets its audit record in the same transaction; a skipped
        duplicate gets none, so a retried batch leaves one audit record per statement; with
        `audit_listeners`, the duplicates' stored records are handed to them again (a batch is
        retried when its outcome is unknown, as when the writer process died after committing). The
        record's `ts` is the statement's `started_at` (the event's time, not the batch's),
        and it carries what the views show of the row (`broker.audit.coverage`).
        """
        if not records:
            return
        if self.core.dialect == "sqlite":
            appended = await self._record_statements_sqlite(records)
            if appended is not None:
                if appended:
                    for listener in self.core.audit_listeners:
                        listener(appended)
                return
        given = [statement_record(r) for r in records]
        async with self.core.transaction("record statements") as session:
            # The audit lock also serialises racing retries of one batch on PostgreSQL, so
            # the "already stored" check below cannot go stale before the insert.
            await self._audit.lock(session)
            stored = await _stored_keys(session, given)
            again = _already_stored(given, stored)
            if again and self.core.audit_listeners:
                # Stored by an earlier attempt whose records may never have reached the
                # listeners (the writer process died between its commit and its answer): the
                # SIEM gets them again, at least once, with their own seq and hash.
                session.info.setdefault("audit_appended", []).extend(await _statement_records(session, again))
            fresh = _fresh(given, stored)
            if not fresh:
                return
            if self.core.dialect == "sqlite":
                conn = await session.connection()
                await conn.exec_driver_sql(_SQLITE_STATEMENT_INSERT, _sqlite_statement_rows(fresh))
            else:
                table = cast(Table, Statement.__table__)
                stmt = pg_insert(table).on_conflict_do_nothing(index_elements=["session_id", "seq"])
                await session.execute(stmt, [_statement_values(r) for r in fresh])
            # Who ran it and from where, so each audit record stands on its own in an export.
            owners = {
                sid: (principal, addr, intent, resource)
                for sid, principal, addr, intent, resource in await session.execute(
                    select(Session.id, Session.principal, Session.client_addr, Session.intent, Session.resource).where(
                        Session.id.in_({r.session_id for r in fresh})
                    )
                )
            }
            await self._audit.append_entries(session, _statement_entries(fresh, owners), [r.started_at for r in fresh])

    async def _record_statements_sqlite(
        self, records: Sequence[StatementRecord | StatementRow]
    ) -> list[AuditRecord] | None:
        """The whole batch in one call on the SQLite connection's own thread.

        With aiosqlite every statement of a transaction is a round trip between the event
        loop and the connection's thread, and under load each one waits for the GIL and for
        a turn of the busy relay loop: a batch of ~15 round trips took 300 ms at 8 pgbench
        clients, so recording fell behind. Here the transaction (BEGIN IMMEDIATE ... COMMIT),
        hashing included, is one function run by that thread (`_write_batch_sqlite`): one
        round trip per batch. Returns the audit records appended, or None when the driver
        connection is not the expected aiosqlite one (the caller then takes the general path).
        """
        keep = bool(self.core.audit_listeners)
        async with translate_errors("record statements"), self.core.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            run = getattr(driver, "_execute", None)
            db = getattr(driver, "_connection", None)
            if run is None or not isinstance(db, sqlite3.Connection):
                return None
            try:
                appended: list[AuditRecord] = await run(
                    write_statements_sqlite, db, list(records), self.core.clock(), keep
                )
            except ValueError as exc:  # from aiosqlite (the function gives the store's errors)
                if "closed" in str(exc) or "no active connection" in str(exc):  # its connection went away
                    raise StoreUnavailable(f"record statements: store unavailable ({type(exc).__name__})") from exc
                raise StoreError(f"record statements: {exc!r}") from exc
        return appended

    async def end_session(
        self, session_id: str, *, reason: str, stats: SessionStats | None = None
    ) -> bool:
        """Mark a session ended; True if this call ended it (later calls change nothing).

        Without `stats`, the statement count is taken from the recorded statements.
        """
        return (await self.end_sessions([SessionEnd(session_id, reason, stats)]))[0]

    async def end_sessions(self, ends: Sequence[SessionEnd]) -> list[bool]:
        """Mark several sessions ended in one transaction; for each, whether it ended it."""
        if not ends:
            return []
        now = self.core.clock()
        ended: list[bool] = []
        async with self.core.transaction("end session") as session:
            await self._audit.lock(session)
            resources: dict[str, str] = {
                sid: resource
                for sid, resource in await session.execute(
                    select(Session.id, Session.resource).where(Session.id.in_({e.session_id for e in ends}))
                )
            }
            audit = []
            for end in ends:
                values: dict[str, Any] = {"ended_at": now, "end_reason": end.reason}
                stats = end.stats
                counted: int | None = None
                if stats is not None:
                    values.update(statements=stats.statements, bytes_in=stats.bytes_in, bytes_out=stats.bytes_out)
                else:
                    # Counted here (under the audit lock: no statement lands meanwhile) so that
                    # the chained record carries the count the row gets.
                    counted = int(await session.scalar(
                        select(func.count()).select_from(Statement).where(Statement.session_id == end.session_id)
                    ) or 0)
                    values["statements"] = counted
                result = await session.execute(
                    update(Session)
                    .where(Session.id == end.session_id, Session.ended_at.is_(None))
                    .values(**values)
                )
                ended.append(bool(result.rowcount))  # type: ignore[attr-defined]
                if ended[-1]:
                    audit.append(
                        events.session_ended(
                            session_id=end.session_id,
                            reason=end.reason,
                            statements=counted if stats is None else stats.statements,
                            bytes_in=None if stats is None else stats.bytes_in,
                            bytes_out=None if stats is None else stats.bytes_out,
                            resource=resources.get(end.session_id),
                        )
                    )
            await self._append_events_at(session, audit, now)
        return ended

    async def list_sessions(
        self,
        *,
        active_only: bool = False,
        limit: int = 100,
        started_before: datetime | None = None,
    ) -> list[SessionInfo]:
        """Sessions, newest first. `started_before` pages backwards through older ones.

        Each is checked against its chained records (`coverage.check_session`), and a session
        whose row is gone while the chain has its `session.start` is listed from the chain,
        `row_deleted`. The chain is searched for those over the page's time span only (all
        of it while the page is not full).
        """
        query = _session_query().order_by(Session.started_at.desc(), Session.id.desc())
        if active_only:
            query = query.where(Session.ended_at.is_(None))
        if started_before is not None:
            query = query.where(Session.started_at < started_before)
        async with self.core.transaction("list sessions") as session:
            await _snapshot(session, self.core.dialect)
            result = await session.execute(query.limit(limit))
            infos = [_session_info(row, count) for row, count in result]
            gone = await _deleted_sessions(
                session, active_only=active_only, limit=limit, started_before=started_before,
                since=infos[-1].started_at if len(infos) >= limit else None,
            )
            ids = [i.id for i in infos] + [str(r.session_id) for r in gone]
            starts, ends = await _session_records(session, ids)
            counts = await _statement_record_counts(session, [str(r.session_id) for r in gone])
            prunes = (
                await _prune_evidence(session) if any(i.id not in starts for i in infos) else coverage.PruneEvidence(())
            )
        checked = [
            coverage.check_session(
                i, starts.get(i.id), ends.get(i.id), pruned=i.id not in starts and prunes.covers(i.id, i.started_at)
            )
            for i in infos
        ]
        checked += [
            coverage.session_from_records(r, ends.get(str(r.session_id)), statements=counts.get(str(r.session_id), 0))
            for r in gone
        ]
        checked.sort(key=lambda i: (i.started_at, i.id), reverse=True)
        return checked[:limit]

    async def get_session(self, session_id: str) -> SessionDetail | None:
        """A session with its statements in order, or None if there is no such session.

        The session and each statement are checked against their chained audit records
        (`broker.audit.coverage`): a row edited, deleted or added behind the chain's back
        comes back marked `tampered`. A session whose row is gone is shown from its records
        (`row_deleted`) as long as the chain holds its `session.start`.
        """
        async with self.core.transaction("get session") as session:
            await _snapshot(session, self.core.dialect)
            found = (
                await session.execute(_session_query().where(Session.id == session_id))
            ).first()
            statements = [
                _statement_info(s)
                for s in await session.scalars(
                    select(Statement).where(Statement.session_id == session_id).order_by(Statement.seq)
                )
            ] if found is not None else []
            records = [
                _record(row)
                for row in await session.execute(
                    select(_EVENTS)
                    .where(_EVENTS.c.session_id == session_id, _EVENTS.c.type.in_(_SESSION_RECORD_TYPES))
                    .order_by(_EVENTS.c.seq)
                )
            ]
            start = next((r for r in records if r.type == "session.start"), None)
            end = next((r for r in records if r.type == "session.end"), None)
            prunes = (
                await _prune_evidence(session) if found is not None and start is None else coverage.PruneEvidence(())
            )
        chained = [r for r in records if r.type == "statement"]
        if found is None:
            if start is None:
                return None
            info = coverage.session_from_records(start, end, statements=len(chained))
            pruned = False
        else:
            info = _session_info(found[0], found[1])
            # Its records were archived by retention (an intact prune record lists it): what
            # has no record is unchecked. Anything else without a session.start is tampering.
            pruned = start is None and prunes.covers(info.id, info.started_at)
            info = coverage.check_session(info, start, end, pruned=pruned)
        return SessionDetail(
            session=info,
            statements=coverage.check(statements, chained, records_pruned=pruned),
        )

    async def sweep_sessions(
        self, *, from_seq: int | None = None, to_seq: int | None = None, chunk: int = DEFAULT_CHUNK,
        keep: int = 100,
    ) -> SessionSweep:
        """Every `session.start` record of the range against its row (missing: `row_deleted`;
        different: the fields), and, when the whole live chain is read, every row against the
        chain (no `session.start` and no prune listing it: `no_audit_record`).

        Reads in chunks of `chunk`; what it holds is the ids of the `session.start` records
        seen (for the second pass: about 100 bytes a session, so some hundreds of MB at
        millions of live sessions) and the first `keep` findings.
        """
        state = await self._audit.audit_state()
        anchor = state.anchor_seq if state is not None else 0
        whole = to_seq is None and (from_seq or 0) <= anchor + 1
        seen: set[str] = set()
        problems: list[str] = []
        count = checked = rows_checked = 0

        def found(sid: str, what: Sequence[str]) -> None:
            nonlocal count
            count += 1
            if len(problems) < keep:
                problems.append(f"session {sid}: {', '.join(what)}")

        last = max(from_seq or 0, anchor + 1) - 1
        while True:
            query = (
                select(_EVENTS)
                .where(_EVENTS.c.type == "session.start", _EVENTS.c.seq > last)
                .order_by(_EVENTS.c.seq)
                .limit(chunk)
            )
            if to_seq is not None:
                query = query.where(_EVENTS.c.seq <= to_seq)
            async with self.core.transaction("sweep sessions") as session:
                await _snapshot(session, self.core.dialect)
                starts = [_record(r) for r in await session.execute(query)]
                ids = [str(r.session_id) for r in starts]
                rows = {
                    row.id: _session_info(row, n)
                    for row, n in await session.execute(_session_query().where(Session.id.in_(ids)))
                } if ids else {}
                _, ends = await _session_records(session, ids, types=("session.end",))
            for start in starts:
                sid = str(start.session_id)
                checked += 1
                if whole:
                    seen.add(sid)
                info = rows.get(sid)
                if info is None:
                    found(sid, [coverage.ROW_DELETED])
                    continue
                marked = coverage.check_session(info, start, ends.get(sid), pruned=False)
                if marked.tampered:
                    found(sid, marked.tampered)
            if len(starts) < chunk:
                break
            last = starts[-1].seq
        if whole:
            prunes: coverage.PruneEvidence | None = None
            after = ""
            while True:
                async with self.core.transaction("sweep sessions") as session:
                    query_rows = select(Session.id, Session.started_at).where(Session.id > after)
                    batch = list(await session.execute(query_rows.order_by(Session.id).limit(chunk)))
                    if prunes is None and any(sid not in seen for sid, _ in batch):
                        prunes = await _prune_evidence(session)
                for sid, started_at in batch:
                    rows_checked += 1
                    if sid not in seen and not (prunes is not None and prunes.covers(sid, started_at)):
                        found(sid, [coverage.NO_AUDIT_RECORD])
                if len(batch) < chunk:
                    break
                after = batch[-1][0]
        return SessionSweep(checked=checked, rows=rows_checked, count=count, problems=problems, whole=whole)


_SESSION_RECORD_TYPES = ("statement", "session.start", "session.end")


async def _snapshot(session: AsyncSession, dialect: str) -> None:
    """Rows and records read from one snapshot (first thing in the transaction): under
    PostgreSQL's default READ COMMITTED each statement sees its own, so a statement or an end
    committed between reading the rows and reading the records would show as tampering.
    SQLite's transactions already read one snapshot."""
    if dialect == "postgresql":
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
_ID_CHUNK = 500  # ids per IN (...): well under both backends' bound-parameter limits


async def _session_records(
    session: AsyncSession, ids: Sequence[str], *, types: Sequence[str] = ("session.start", "session.end")
) -> tuple[dict[str, AuditRecord], dict[str, AuditRecord]]:
    """The `session.start` and `session.end` records of `ids`, by session id (the first of each)."""
    starts: dict[str, AuditRecord] = {}
    ends: dict[str, AuditRecord] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        part = ids[i : i + _ID_CHUNK]
        for row in await session.execute(
            select(_EVENTS)
            .where(_EVENTS.c.session_id.in_(part), _EVENTS.c.type.in_(types))
            .order_by(_EVENTS.c.seq)
        ):
            record = _record(row)
            into = starts if record.type == "session.start" else ends
            into.setdefault(str(record.session_id), record)
    return starts, ends


async def _statement_record_counts(session: AsyncSession, ids: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in range(0, len(ids), _ID_CHUNK):
        part = ids[i : i + _ID_CHUNK]
        for sid, n in await session.execute(
            select(_EVENTS.c.session_id, func.count())
            .where(_EVENTS.c.session_id.in_(part), _EVENTS.c.type == "statement")
            .group_by(_EVENTS.c.session_id)
        ):
            counts[str(sid)] = int(n)
    return counts


async def _deleted_sessions(
    session: AsyncSession, *, active_only: bool, limit: int, started_before: datetime | None,
    since: datetime | None,
) -> list[AuditRecord]:
    """`session.start` records whose row is gone, newest first (at most `limit`)."""
    ends = _EVENTS.alias("ends")
    query = (
        select(_EVENTS)
        .where(_EVENTS.c.type == "session.start", ~exists().where(Session.id == _EVENTS.c.session_id))
        .order_by(_EVENTS.c.ts.desc(), _EVENTS.c.seq.desc())
        .limit(limit)
    )
    if active_only:
        query = query.where(
            ~exists().where(ends.c.session_id == _EVENTS.c.session_id, ends.c.type == "session.end")
        )
    if started_before is not None:
        query = query.where(_EVENTS.c.ts < started_before)
    if since is not None:
        query = query.where(_EVENTS.c.ts >= since)
    return [_record(row) for row in await session.execute(query)]


async def _prune_evidence(session: AsyncSession) -> coverage.PruneEvidence:
    """What the live chain's `audit.prune` records say was archived (a scan for them: run
    only when a row has no live `session.start`)."""
    rows = await session.execute(select(_EVENTS).where(_EVENTS.c.type == "audit.prune").order_by(_EVENTS.c.seq))
    return coverage.PruneEvidence(_record(r) for r in rows)


async def _stored_keys(session: AsyncSession, records: Sequence[StatementRecord]) -> set[tuple[str, int]]:
    """Which `(session_id, seq)` of the batch are already stored.

    One index range per session of the batch (its lowest to highest seq), so a fresh batch,
    the usual case, costs a few index probes whatever its size.
    """
    clauses = [
        and_(Statement.session_id == sid, Statement.seq.between(lo, hi)) for sid, (lo, hi) in _spans(records).items()
    ]
    rows = await session.execute(select(Statement.session_id, Statement.seq).where(or_(*clauses)))
    return {(sid, seq) for sid, seq in rows}


def _key(r: StatementRecord | tuple[Any, ...]) -> tuple[str, int]:
    return (r[0], r[1]) if isinstance(r, tuple) else (r.session_id, r.seq)


def _fresh(records: Sequence[_S], stored: set[tuple[str, int]]) -> list[_S]:
    """The records (or rows) of the batch not stored yet (nor repeated within it)."""
    fresh: list[_S] = []
    for r in records:
        key = _key(r)
        if key not in stored:
            stored.add(key)
            fresh.append(r)
    return fresh


def _already_stored(
    records: Sequence[StatementRecord | tuple[Any, ...]], stored: set[tuple[str, int]]
) -> set[tuple[str, int]]:
    """The `(session_id, seq)` of the batch that the store already holds."""
    return {key for r in records if (key := _key(r)) in stored}


async def _statement_records(session: AsyncSession, keys: set[tuple[str, int]]) -> list[AuditRecord]:
    """The stored `statement` audit records of `keys`, in chain order."""
    found: list[AuditRecord] = []
    for sid, (lo, hi) in _spans(list(keys)).items():
        rows = await session.execute(
            select(_EVENTS).where(
                _EVENTS.c.session_id == sid,
                _EVENTS.c.type == "statement",
                _EVENTS.c.data["seq"].as_integer().between(lo, hi),
            )
        )
        found += [r for r in map(_record, rows) if (r.session_id, r.data.get("seq")) in keys]
    return sorted(found, key=lambda r: r.seq)


def _statement_records_sqlite(db: sqlite3.Connection, keys: set[tuple[str, int]]) -> list[AuditRecord]:
    """`_statement_records` on a plain sqlite3 connection (as SQLite holds them: the time as
    naive UTC text, the data as JSON text)."""
    found: list[AuditRecord] = []
    for sid, (lo, hi) in _spans(list(keys)).items():
        for seq, id_, ts, type_, actor, session_id, data, prev_hash, hash_ in db.execute(
            "SELECT seq, id, ts, type, actor, session_id, data, prev_hash, hash FROM audit_events"
            " WHERE session_id = ? AND type = 'statement' AND json_extract(data, '$.seq') BETWEEN ? AND ?",
            (sid, lo, hi),
        ):
            record = AuditRecord(
                seq, id_, datetime.fromisoformat(ts).replace(tzinfo=UTC), type_, actor, session_id, json.loads(data),
                prev_hash, hash_,
            )
            if (session_id, record.data.get("seq")) in keys:
                found.append(record)
    return sorted(found, key=lambda r: r.seq)


def _spans(records: Sequence[StatementRecord | tuple[Any, ...]]) -> dict[str, tuple[int, int]]:
    spans: dict[str, tuple[int, int]] = {}
    for r in records:
        sid, seq = _key(r)
        lo_hi = spans.get(sid)
        spans[sid] = (seq, seq) if lo_hi is None else (min(lo_hi[0], seq), max(lo_hi[1], seq))
    return spans


def _statement_entries(
    fresh: Sequence[StatementRecord], owners: Mapping[str, tuple[str | None, str | None, str | None, str | None]]
) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    templates: statement_batch.Templates = {}
    for r in fresh:
        principal, addr, intent, resource = owners.get(r.session_id, NO_OWNER)
        data = statement_data(r, addr, intent, resource)
        entries.append(("statement", principal, r.session_id, data, data_json(templates, *data.values())))
    return entries


def write_statements_sqlite(
    db: sqlite3.Connection, records: Sequence[StatementRecord | tuple[Any, ...]], now: datetime, keep: bool
) -> list[AuditRecord]:
    """`record_statements` on a plain sqlite3 connection, on the calling thread, with the
    store's errors: aiosqlite's thread in this process, the main thread of the recorder's
    writer process (which needs no engine, event loop or thread hop for it). Returns the audit
    records appended when `keep`."""
    for r in records:
        started = r[ROW_STARTED_AT] if isinstance(r, tuple) else r.started_at
        if isinstance(started, datetime) and started.tzinfo is None:
            # As the general path refuses it (UTCDateTime), before anything is written.
            naive = ValueError("naive datetime given to the store; use an aware UTC datetime")
            raise StoreError(f"record statements: {naive!r}")
    try:
        return _write_batch_sqlite(db, records, now, keep)
    except sqlite3.IntegrityError as exc:
        raise StoreIntegrityError(f"record statements: constraint violated ({type(exc).__name__})") from exc
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"record statements: store unavailable ({type(exc).__name__})") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"record statements: {type(exc).__name__}") from exc
    except ValueError as exc:  # a value the chain cannot hold (NaN)
        raise StoreError(f"record statements: {exc!r}") from exc


def _write_batch_sqlite(
    db: sqlite3.Connection, records: Sequence[StatementRecord | tuple[Any, ...]], now: datetime, keep: bool
) -> list[AuditRecord]:
    """`record_statements` as one function on a plain sqlite3 connection (autocommit mode, as
    the store's engine sets it up: we issue BEGIN ourselves). Runs on the connection's thread;
    the rows and audit entries are made by `statement_batch.build`."""
    if db.in_transaction:
        # Only possible on a shared in-memory connection another transaction is using.
        raise sqlite3.OperationalError("the connection is inside another transaction")
    db.execute("BEGIN IMMEDIATE")
    try:
        stored: set[tuple[str, int]] = set()
        for sid, (lo, hi) in _spans(records).items():
            stored.update(
                db.execute(
                    "SELECT session_id, seq FROM statements WHERE session_id = ? AND seq BETWEEN ? AND ?", (sid, lo, hi)
                )
            )
        items = [as_fields(r) for r in records]
        again = _already_stored(items, stored)
        # As on the general path: what an earlier attempt stored goes to the listeners again.
        appended: list[AuditRecord] = _statement_records_sqlite(db, again) if keep and again else []
        fresh = _fresh(items, stored)
        if fresh:
            sids = list({r[0] for r in fresh})
            owners = {
                sid: (principal, addr, intent, resource)
                for sid, principal, addr, intent, resource in db.execute(
                    "SELECT id, principal, client_addr, intent, resource FROM sessions"
                    f" WHERE id IN ({', '.join('?' * len(sids))})",
                    sids,
                )
            }
            batch = statement_batch.build(fresh, owners, keep)
            sqlite_insert_rows(db, _SQLITE_STATEMENT_INSERT, batch.rows)
            appended += sqlite_append_audit(db, batch.entries, now, keep=keep, times=batch.times, stamps=batch.stamps)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return appended


def statement_data(
    r: StatementRecord, client_addr: str | None, intent: str | None = None, resource: str | None = None
) -> dict[str, Any]:
    """The `data` of a statement's audit record: `events.statement(...).data`, built directly.

    (That generic path converts every field on its own. tests/broker/store checks that both
    give the same dict.)
    """
    # In sorted key order: `statement_batch.data_json` takes the values in this order.
    return {
        "approval_id": r.approval_id,
        "client_addr": client_addr,
        "decision": enum_value(r.decision),
        "duration_ms": r.duration_ms,
        "error_sqlstate": r.error_sqlstate,
        "fingerprint": r.fingerprint,
        "intent": intent,
        "masked_values": r.masked_values,
        "reason": r.reason,
        "resource": resource,
        "results_digest": coverage.results_digest(r.results),
        "rows": r.rows,
        "rule": r.rule,
        "seq": r.seq,
        "shadow_decision": None if r.shadow_decision is None else enum_value(r.shadow_decision),
        "sql": r.sql,
        "started_at": timestamp_forms(r.started_at)[0],
    }


def _statement_event(
    r: StatementRecord, principal: str | None, client_addr: str | None, intent: str | None = None,
    resource: str | None = None,
) -> events.AuditEvent:
    """The generic form of a statement's audit event (what `statement_data` must match)."""
    return events.statement(
        principal=principal,
        client_addr=client_addr,
        session_id=r.session_id,
        seq=r.seq,
        sql=r.sql,
        decision=enum_value(r.decision),
        started_at=r.started_at,
        fingerprint=r.fingerprint,
        rule=r.rule,
        reason=r.reason,
        shadow_decision=None if r.shadow_decision is None else enum_value(r.shadow_decision),
        duration_ms=r.duration_ms,
        rows=r.rows,
        masked_values=r.masked_values,
        error_sqlstate=r.error_sqlstate,
        intent=intent,
        resource=resource,
        approval_id=r.approval_id,
        results_digest=coverage.results_digest(r.results),
    )


def _recorded_count() -> Any:
    return (
        select(func.count())
        .select_from(Statement)
        .where(Statement.session_id == Session.id)
        .correlate(Session)
        .scalar_subquery()
    )


def _session_query() -> Any:
    # A live session's counter is only written at its end; count what has been recorded.
    count = case((Session.ended_at.is_(None), _recorded_count()), else_=Session.statements)
    return select(Session, count)


_SQLITE_STATEMENT_INSERT = (
    f"INSERT INTO statements ({', '.join(STATEMENT_COLUMNS)}) VALUES ({', '.join('?' * len(STATEMENT_COLUMNS))})"
    " ON CONFLICT (session_id, seq) DO NOTHING"
)


def _sqlite_statement_rows(records: Sequence[StatementRecord]) -> list[tuple[Any, ...]]:
    """`_statement_values` of each as SQLite rows hold it (see `_sqlite_datetime`; JSON as text)."""
    return statement_batch.build([as_fields(r) for r in records], {}, False).rows


def _statement_values(r: StatementRecord) -> dict[str, Any]:
    values = {name: getattr(r, name) for name in STATEMENT_COLUMNS}
    values["decision"] = enum_value(r.decision)
    values["shadow_decision"] = None if r.shadow_decision is None else enum_value(r.shadow_decision)
    return values


def _shared_columns(record: type[Any], model: type[Any]) -> tuple[str, ...]:
    """The fields of the dataclass `record` that are columns of the ORM class `model`."""
    columns = set(sa_inspect(model).columns.keys())
    return tuple(f.name for f in dataclasses.fields(record) if f.name in columns)


_SESSION_INFO_COLUMNS = _shared_columns(SessionInfo, Session)
_STATEMENT_INFO_COLUMNS = _shared_columns(StatementInfo, Statement)


def _from_row(record: type[_R], row: object, columns: tuple[str, ...], **given: Any) -> _R:
    """A store record read from an ORM row by attribute name: its `columns`, then `given`
    (what is computed, or differs from the column); the record's other fields (the coverage
    findings) keep their defaults."""
    return record(**{name: getattr(row, name) for name in columns if name not in given}, **given)


def _session_info(row: Session, statements: int) -> SessionInfo:
    # A live session's `statements` column is only written at its end: the count is given.
    return _from_row(SessionInfo, row, _SESSION_INFO_COLUMNS, groups=tuple(row.groups), statements=int(statements))


def _statement_info(s: Statement) -> StatementInfo:
    return _from_row(StatementInfo, s, _STATEMENT_INFO_COLUMNS)
