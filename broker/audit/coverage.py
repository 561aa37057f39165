"""What is shown of a statement, checked against its record in the audit chain.

Replay, `jitgate sessions show`, `/v1/sessions/{id}` and the console read the `statements`
table, which is quick to query but which the chain does not protect: anyone who can write
the store can edit a row. So every statement's chained record (`events.statement`) carries
what those views show (SQL, decision, rule, reason, timing, rows, masked count, SQLSTATE,
approval id) and, for recorded results, `results_digest` (SHA-256 of the results' canonical
JSON, so the chain stays small); every view compares each row with its record here and
shows a mismatch as tampering:

- a field that differs is named (`sql`, `rule`, `results`, ...);
- a record with no row: the statement is shown from the record, as `row_deleted` (without
  its results: the chain holds their digest only);
- a row with no record: `no_audit_record`;
- a record whose content no longer matches its own hash: `audit_record_altered` (editing
  the row and the record alike does not pass; rehashing the chain from there is what
  `jitgate audit verify` with a witness catches).

A record older than retention is pruned (archived) while its row stays: such a statement is
neither verified nor tampered (`audit_seq` None); the views say it could not be checked.
Records written before a field was chained (`approval_id`, `results_digest`) are compared on
the fields they have.

Sessions the same way (`check_session`): the `sessions` row against its `session.start`
record (actor = principal, groups, resource, role, token_id, client_addr, application_name,
intent, the record's ts = started_at) and its `session.end` record (reason, statements,
bytes, ts = ended_at). A row that says "active" while a `session.end` is chained, or "ended"
with none, is `ended_at`. No row while the chain has the `session.start`: the session is
shown from its records, `row_deleted`.

"Pruned" is decided from the chain, not from the rows (`PruneEvidence`): every `audit.prune`
record lists the sessions whose `session.start` went to an archive (its own and, carried
over, those listed by earlier prune records it archived), and the archive trailer, which the
witness signs before anything is deleted, carries that list's digest (`sessions_sha256`). A
row with no `session.start` counts as pruned only when an intact prune record lists it and
its started_at is not after that prune; otherwise `no_audit_record`. A prune record made
before prune records listed sessions lists none: its sessions are `no_audit_record` until the
next prune lists them from its archive (`archive.legacy_sessions`), which vouches for them only
if it ends at the hash the chain pins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from broker.audit.archive import sessions_digest
from broker.audit.chain import AuditRecord, canonical_json, chain_hash, format_ts
from broker.store.records import SessionInfo, StatementInfo

# StatementInfo attribute -> the key of the chained record's data holding it.
SHOWN_FIELDS = (
    "sql", "fingerprint", "decision", "rule", "reason", "shadow_decision", "started_at", "duration_ms", "rows",
    "masked_values", "error_sqlstate", "approval_id",
)
ROW_DELETED = "row_deleted"
NO_AUDIT_RECORD = "no_audit_record"
AUDIT_RECORD_ALTERED = "audit_record_altered"


def results_digest(results: list[dict[str, Any]] | None) -> str | None:
    """SHA-256 of recorded results as canonical JSON; None when none were recorded."""
    if results is None:
        return None
    return hashlib.sha256(canonical_json(results).encode()).hexdigest()


def _shown(st: StatementInfo, name: str) -> Any:
    value = getattr(st, name)
    return format_ts(value) if name == "started_at" else value


def differences(st: StatementInfo, data: dict[str, Any]) -> list[str]:
    """The shown fields of `st` that differ from its chained record's `data`."""
    out = [name for name in SHOWN_FIELDS if name in data and _shown(st, name) != data[name]]
    if "results_digest" in data and results_digest(st.results) != data["results_digest"]:
        out.append("results")
    return out


def from_record(record: AuditRecord) -> StatementInfo:
    """A statement as its chained record has it (for a row that is gone)."""
    data = record.data
    started = data.get("started_at")
    return StatementInfo(
        seq=int(data.get("seq") or 0),
        sql=str(data.get("sql") or ""),
        fingerprint=data.get("fingerprint"),
        decision=str(data.get("decision") or ""),
        rule=data.get("rule"),
        reason=data.get("reason"),
        shadow_decision=data.get("shadow_decision"),
        started_at=datetime.fromisoformat(started) if isinstance(started, str) else record.ts,
        duration_ms=data.get("duration_ms"),
        rows=data.get("rows"),
        masked_values=int(data.get("masked_values") or 0),
        error_sqlstate=data.get("error_sqlstate"),
        approval_id=data.get("approval_id"),
        audit_seq=record.seq,
    )


def check(
    rows: Sequence[StatementInfo], records: Iterable[AuditRecord], *, records_pruned: bool
) -> tuple[StatementInfo, ...]:
    """The session's statements as shown, each marked `verified` or `tampered`, in seq order.

    `records`: the session's chained `statement` records. `records_pruned`: the session's
    records were archived by retention (its `session.start` is gone from a pruned chain), so
    a row without a record is unchecked rather than tampered with.
    """
    by_seq: dict[int, AuditRecord] = {}
    for record in records:
        seq = record.data.get("seq")
        if isinstance(seq, int):
            by_seq[seq] = record
    out: list[StatementInfo] = []
    for st in rows:
        chained = by_seq.pop(st.seq, None)
        if chained is None:
            out.append(st if records_pruned else replace(st, verified=False, tampered=(NO_AUDIT_RECORD,)))
            continue
        found = differences(st, chained.data)
        if not _intact(chained):
            found.insert(0, AUDIT_RECORD_ALTERED)
        out.append(replace(st, verified=not found, tampered=tuple(found), audit_seq=chained.seq))
    for orphan in by_seq.values():
        found = [ROW_DELETED] if _intact(orphan) else [ROW_DELETED, AUDIT_RECORD_ALTERED]
        out.append(replace(from_record(orphan), tampered=tuple(found)))
    out.sort(key=lambda s: s.seq)
    return tuple(out)


# -- sessions ------------------------------------------------------------------------------

# SessionInfo attribute -> the key of the `session.start` record's data holding it.
START_FIELDS = ("groups", "resource", "role", "token_id", "client_addr", "application_name", "intent")
# SessionInfo attribute -> the key of the `session.end` record's data (compared when not null).
END_FIELDS = (("end_reason", "reason"), ("statements", "statements"), ("bytes_in", "bytes_in"),
              ("bytes_out", "bytes_out"))
ENDED_AT = "ended_at"


def session_differences(s: SessionInfo, start: AuditRecord | None, end: AuditRecord | None) -> list[str]:
    """What of `s` differs from its chained `session.start` (None: pruned, not compared) and
    `session.end` (None: the chain says the session is still active)."""
    out: list[str] = []
    if start is not None:
        data = start.data
        if start.actor != s.principal:
            out.append("principal")
        for name in START_FIELDS:
            if name not in data:
                continue
            shown: Any = list(s.groups) if name == "groups" else getattr(s, name)
            if shown != data[name]:
                out.append(name)
        if format_ts(start.ts) != format_ts(s.started_at):
            out.append("started_at")
    if end is None:
        if start is not None and s.ended_at is not None:
            out.append(ENDED_AT)  # ended in the table, still active in the chain
        return out
    if s.ended_at is None or format_ts(end.ts) != format_ts(s.ended_at):
        out.append(ENDED_AT)
    for name, key in END_FIELDS:
        recorded = end.data.get(key)
        if recorded is not None and getattr(s, name) != recorded:
            out.append(name)
    return out


def check_session(
    s: SessionInfo, start: AuditRecord | None, end: AuditRecord | None, *, pruned: bool
) -> SessionInfo:
    """`s` marked against its records: `pruned` (its `session.start` is listed by an intact
    prune record) makes a row without a `session.start` unchecked rather than tampered."""
    if start is None and not pruned:
        return replace(s, tampered=(NO_AUDIT_RECORD,), audit_seq=None)
    found = session_differences(s, start, end)
    if any(r is not None and not _intact(r) for r in (start, end)):
        found.insert(0, AUDIT_RECORD_ALTERED)
    return replace(s, tampered=tuple(found), audit_seq=None if start is None else start.seq)


def session_from_records(
    start: AuditRecord, end: AuditRecord | None, *, statements: int
) -> SessionInfo:
    """A session as its chained records have it (for a row that is gone), `row_deleted`."""
    data = start.data
    end_data = end.data if end is not None else {}
    intact = _intact(start) and (end is None or _intact(end))
    return SessionInfo(
        id=str(start.session_id),
        token_id=data.get("token_id"),
        principal=str(start.actor or ""),
        groups=tuple(data.get("groups") or ()),
        resource=str(data.get("resource") or ""),
        role=str(data.get("role") or ""),
        client_addr=data.get("client_addr"),
        application_name=data.get("application_name"),
        intent=data.get("intent"),
        started_at=start.ts,
        ended_at=None if end is None else end.ts,
        end_reason=end_data.get("reason"),
        statements=int(end_data["statements"]) if end_data.get("statements") is not None else statements,
        bytes_in=int(end_data.get("bytes_in") or 0),
        bytes_out=int(end_data.get("bytes_out") or 0),
        tampered=(ROW_DELETED,) if intact else (ROW_DELETED, AUDIT_RECORD_ALTERED),
        audit_seq=start.seq,
    )


class PruneEvidence:
    """Which sessions the chain's intact `audit.prune` records list as archived, each with the
    time of the prune that listed it (no session started after that can have been archived
    by it). A record whose list does not match its own `sessions_sha256`, or whose hash does
    not hold, vouches for nothing."""

    def __init__(self, prune_records: Iterable[AuditRecord]) -> None:
        self._until: dict[str, datetime] = {}
        for record in prune_records:
            listed = record.data.get("sessions")
            if not isinstance(listed, list) or not _intact(record):
                continue
            if sessions_digest(str(x) for x in listed) != record.data.get("sessions_sha256"):
                continue
            for sid in listed:
                known = self._until.get(str(sid))
                self._until[str(sid)] = record.ts if known is None else max(known, record.ts)

    def __len__(self) -> int:
        return len(self._until)

    def covers(self, session_id: str, started_at: datetime) -> bool:
        until = self._until.get(session_id)
        return until is not None and started_at <= until


def _intact(record: AuditRecord) -> bool:
    try:
        return chain_hash(record.prev_hash, record.content()) == record.hash
    except (TypeError, ValueError):
        return False
