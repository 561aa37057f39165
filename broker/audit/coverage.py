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
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from broker.audit.chain import AuditRecord, canonical_json, chain_hash, format_ts
from broker.store.records import StatementInfo

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


def _intact(record: AuditRecord) -> bool:
    try:
        return chain_hash(record.prev_hash, record.content()) == record.hash
    except (TypeError, ValueError):
        return False
