"""`record_statements` writes SQLite in one call on the connection's thread, with rows and
audit records built directly: the result must be what the general (SQLAlchemy) path writes."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import enum
import json
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from broker.audit.chain import canonical_json, format_ts
from broker.store import Grant, SessionStart, StatementRecord, Store, statement_batch
from broker.store import sessions as sessions_mod
from broker.store.audit import _sqlite_datetime, sqlite_insert_rows, timestamp_forms
from broker.store.models import Session as SessionRow
from broker.store.records import record_fields, statement_record
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401

GRANT = Grant(
    token_id=None, principal="agent:fast", groups=("ai-agents",), resource="demo", role="readwrite",
    expires_at=datetime(2031, 1, 1, tzinfo=UTC), reusable=True,
)


def records(sid: str, seqs: range) -> list[StatementRecord]:
    out = []
    for seq in seqs:
        out.append(StatementRecord(
            session_id=sid, seq=seq, sql=f"select 'é', {seq}", decision="block" if seq % 3 == 0 else "allow",
            started_at=datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))) + timedelta(microseconds=seq),
            fingerprint=None if seq % 2 else f"fp{seq}", rule="r" if seq % 3 == 0 else None,
            reason="blocked" if seq % 3 == 0 else None, shadow_decision="review" if seq % 5 == 0 else None,
            duration_ms=None if seq % 3 == 0 else seq / 7, rows=None if seq % 3 == 0 else seq,
            masked_values=seq % 4, error_sqlstate="42501" if seq % 3 == 0 else None,
            results=[{"columns": ["a"], "rows": [[str(seq)]]}] if seq % 4 == 0 else None,
        ))
    return out


def test_statement_data_is_the_generic_event_data() -> None:
    for r in records("s1", range(1, 13)):
        generic = sessions_mod._statement_event(r, "agent:x", "10.0.0.1:5", "fix ticket 7")
        assert sessions_mod.statement_data(r, "10.0.0.1:5", "fix ticket 7") == generic.data
        assert (generic.type, generic.actor, generic.session_id) == ("statement", "agent:x", "s1")


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# Shared across examples, as across a batch: hits as well as misses.
_SHARED: statement_batch.Templates = {}


class _Decision(str, enum.Enum):  # noqa: UP042  (the str-mixin enum the policy passes)
    ALLOW = "allow"
    REVIEW = "review"


@settings(max_examples=300, deadline=None)
@given(
    sql=_TEXT, addr=st.none() | _TEXT, intent=st.none() | _TEXT, resource=st.none() | _TEXT,
    rule=st.none() | _TEXT, reason=st.none() | _TEXT, fingerprint=st.none() | _TEXT, seq=st.integers(1, 2**62),
    duration=st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 10**9),
    rows=st.none() | st.integers(0, 2**62), masked=st.integers(0, 10**6),
    decision=st.sampled_from(["allow", "block", _Decision.ALLOW]),
    shadow=st.none() | st.sampled_from(["review", _Decision.REVIEW]),
    sqlstate=st.none() | st.sampled_from(["42501", "57P03"]), approval=st.none() | _TEXT,
    results=st.none() | st.lists(st.dictionaries(_TEXT, st.none() | _TEXT | st.integers()), max_size=2),
    when=st.datetimes(min_value=datetime(1, 1, 2), timezones=st.just(UTC)),
)
def test_the_direct_canonical_form_is_the_encoders(
    sql: str, addr: str | None, intent: str | None, resource: str | None, rule: str | None, reason: str | None,
    fingerprint: str | None, seq: int, duration: float | None, rows: int | None, masked: int, decision: str,
    shadow: str | None, sqlstate: str | None, approval: str | None, results: list[Any] | None, when: datetime,
) -> None:
    # The chain hashes this text: one byte off and every verifier disagrees with the writer.
    r = StatementRecord(
        session_id="s", seq=seq, sql=sql, decision=decision, started_at=when, fingerprint=fingerprint, rule=rule,
        reason=reason, shadow_decision=shadow, duration_ms=duration, rows=rows, masked_values=masked,
        error_sqlstate=sqlstate, results=results, approval_id=approval,
    )
    data = sessions_mod.statement_data(r, addr, intent, resource)
    assert statement_batch.data_json(_SHARED, *data.values()) == canonical_json(data)
    assert statement_batch.data_json({}, *data.values()) == canonical_json(data)
    owners = {"s": ("p", addr, intent, resource)}
    (entry,) = sessions_mod._statement_entries([r], owners)
    assert entry[3] == data and entry[4] == canonical_json(data)
    assert timestamp_forms(when) == (format_ts(when), _sqlite_datetime(when))
    # The writer's pass over a batch (statement_batch.build), on the record and on the row the
    # proxy hands over (the start as epoch seconds), makes the same entry and the row the
    # general path stores.
    as_row = (*record_fields(r)[:4], when.timestamp(), *record_fields(r)[5:])
    for item in (record_fields(r), as_row):
        stamped = statement_record(item).started_at
        expected = {**data, "started_at": format_ts(stamped)}
        kept = statement_batch.build([item], owners, True)
        assert kept.entries == [("statement", "p", "s", expected, canonical_json(expected))]
        assert kept.times == [stamped] and kept.stamps == [timestamp_forms(stamped)]
        assert statement_batch.build([item], owners, False).entries[0][4] == canonical_json(expected)
        values = sessions_mod._statement_values(statement_record(item))
        stored = dict(zip(statement_batch.STATEMENT_COLUMNS, kept.rows[0], strict=True))
        assert stored == {
            **values, "started_at": _sqlite_datetime(stamped),
            "results": None if results is None else json.dumps(results),
        }
        # Stored as plain strings, not the policy's str-mixin Enum (equal, but not what a
        # reader of the row or the record gets back).
        kept_data = kept.entries[0][3]
        for labels in (kept.rows[0][4:8:3], (kept_data["decision"], kept_data["shadow_decision"])):
            assert all(label is None or type(label) is str for label in labels)


def test_equal_keys_of_other_types_are_not_confused() -> None:
    # 1, 1.0 and True are equal keys with different JSON texts: only str and None are cached.
    templates: statement_batch.Templates = {}
    for rule in ("1", 1, 1.0, True, None, _Decision.ALLOW, 0.0, -0.0):
        data = {key: None for key in sorted(_DATA_KEYS)} | {"rule": rule, "sql": "s", "seq": 1}
        assert statement_batch.data_json(templates, *data.values()) == canonical_json(data)
    assert len(templates) == 2


_DATA_KEYS = (
    "approval_id", "client_addr", "decision", "duration_ms", "error_sqlstate", "fingerprint", "intent",
    "masked_values", "reason", "resource", "results_digest", "rows", "rule", "seq", "shadow_decision", "sql",
    "started_at",
)


def test_stamps_are_the_timestamp_forms_across_seconds_and_days() -> None:
    # The writer caches the text of a second; each start still gets its own microseconds.
    start = datetime(2030, 12, 31, 23, 59, 58, 999_998, tzinfo=UTC)
    for i in range(2_000):
        when = start + timedelta(microseconds=i * 997)
        for started in (when, when.timestamp()):
            at, text, db = statement_batch.stamp(started)
            row = ("s", 1, "q", "allow", started, None, None, None, None, None, None, 0, None, None, None)
            assert at == statement_record(row).started_at
            assert (text, db) == timestamp_forms(at)
    # A long-running writer sees a new second every second: the cache stays bounded.
    for i in range(1_500):
        statement_batch.stamp(start.timestamp() + i)
    assert 0 < len(statement_batch._SECONDS) <= 1024


async def _written(store: Store, sid: str) -> tuple[Any, list[tuple[Any, ...]]]:
    detail = await store.sessions.get_session(sid)
    audit = [
        (r.type, r.actor, r.session_id, r.data)
        async for r in store.audit.iter_audit()
        if r.type == "statement"
    ]
    return detail, audit


async def test_fast_path_writes_what_the_general_path_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for name, fast in (("fast", True), ("general", False)):
        store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/{name}.db")
        try:
            if not fast:
                async def no_fast_path(self: Store, batch: object) -> None:
                    return None
                monkeypatch.setattr(sessions_mod.SessionRepository, "_record_statements_sqlite", no_fast_path)
            sid = await store.sessions.start_session(SessionStart(GRANT, client_addr="127.0.0.1:1"))
            batch = records(sid, range(1, 41))
            await store.sessions.record_statements(batch[:25])
            await store.sessions.record_statements(batch[20:])  # overlaps: 20..25 are skipped
            detail, audit = await _written(store, sid)
            assert [s.seq for s in detail.statements] == list(range(1, 41))
            assert len(audit) == 40
            assert (await store.audit.verify_audit()).ok
            results.append((detail.statements, [a[:2] + a[3:] for a in audit]))
        finally:
            monkeypatch.undo()
            await store.close()
    assert results[0] == results[1]


async def test_timestamps_are_stored_in_sqlalchemys_sqlite_form(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/ts.db")
    try:
        sid = await store.sessions.start_session(SessionStart(GRANT))
        r = records(sid, range(1, 2))[0]
        await store.sessions.record_statements([r])
        async with store.engine.connect() as conn:
            raw = (await conn.execute(text("SELECT started_at FROM statements"))).scalar_one()
            session_raw = (await conn.execute(text("SELECT started_at FROM sessions"))).scalar_one()
            session_value = (await conn.execute(select(SessionRow.started_at))).scalar_one()
        assert raw == _sqlite_datetime(r.started_at) == "2030-01-01 10:00:00.000001"
        # The same text form SQLAlchemy wrote for the session row.
        assert session_raw == _sqlite_datetime(session_value)
    finally:
        await store.close()


async def test_a_retried_batch_adds_no_audit_record(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(GRANT))
    batch = records(sid, range(1, 11))
    await store.sessions.record_statements(batch)
    await store.sessions.record_statements(batch)
    _, audit = await _written(store, sid)
    assert len(audit) == 10
    assert (await store.audit.verify_audit()).ok


async def test_listeners_get_the_statement_records(store: Store) -> None:
    got: list[Any] = []
    store.audit_listeners.append(got.extend)
    sid = await store.sessions.start_session(SessionStart(GRANT))
    await store.sessions.record_statements(records(sid, range(1, 6)))
    statements = [r for r in got if r.type == "statement"]
    assert [r.data["seq"] for r in statements] == [1, 2, 3, 4, 5]
    stored = [r async for r in store.audit.iter_audit() if r.type == "statement"]
    assert [(r.seq, r.hash) for r in stored] == [(r.seq, r.hash) for r in statements]


async def test_a_retried_batch_hands_its_stored_records_to_the_listeners_again(store: Store) -> None:
    # A batch is retried when its outcome is unknown: the writer process may have died after
    # its commit, before the records it appended reached the SIEM forwarder. The retry adds
    # nothing to the chain and gives the listeners the stored records again (at least once).
    got: list[Any] = []
    store.audit_listeners.append(got.extend)
    sid = await store.sessions.start_session(SessionStart(GRANT))
    other = await store.sessions.start_session(SessionStart(GRANT))
    batch = records(sid, range(1, 6))
    await store.sessions.record_statements(batch[:3] + records(other, range(1, 3)))
    first = {(r.session_id, r.data["seq"]): r for r in got if r.type == "statement"}
    got.clear()
    await store.sessions.record_statements(batch)  # 1-3 stored, 4-5 new
    again = [r for r in got if r.type == "statement"]
    assert [(r.session_id, r.data["seq"]) for r in again] == [(sid, seq) for seq in range(1, 6)]
    assert again[:3] == [first[sid, seq] for seq in (1, 2, 3)]
    got.clear()
    await store.sessions.record_statements(batch[1:3])  # nothing new: delivered again only
    assert [r.data["seq"] for r in got if r.type == "statement"] == [2, 3]
    stored = [r async for r in store.audit.iter_audit() if r.type == "statement"]
    assert len(stored) == 7 and (await store.audit.verify_audit()).ok
    store.audit_listeners.clear()


def test_multi_row_insert_respects_the_variable_limit() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    db.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 7)  # 3 rows of 2 per statement
    rows = [(i, f"v{i}") for i in range(1, 11)]
    sqlite_insert_rows(db, "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING", rows)
    sqlite_insert_rows(db, "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO NOTHING", rows[:4])
    assert db.execute("SELECT a, b FROM t ORDER BY a").fetchall() == rows


def test_audit_record_ids_are_version_4_uuids() -> None:
    import os
    import uuid

    from broker.store.audit import _uuid4_text

    for _ in range(2000):
        hex32 = os.urandom(16).hex()
        assert _uuid4_text(hex32) == str(uuid.UUID(hex=hex32, version=4))
