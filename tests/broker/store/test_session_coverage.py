"""Everything shown of a session is covered by the audit chain (issue 16, red-team findings).

The `sessions` row (who, resource, role, client, intent, start and end, counters) is compared
with the session's chained `session.start` and `session.end` records; a session whose row was
deleted is shown from the chain, `sessions list` shows it too, and `audit verify` sweeps
every session of the range it reads. After a prune, a session counts as pruned (unchecked)
only when the chained `audit.prune` record lists it: an invented or re-keyed session is
`no_audit_record`. Each on both store backends.
"""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from broker.api import create_app
from broker.audit.archive import sessions_digest, verify_archive
from broker.config import Settings, hash_api_token
from broker.store import Grant, SessionStart, SessionStats, StatementRecord, Store
from tests.broker.store.cli_helpers import cli_config, run_cli  # noqa: F401
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401

API_TOKEN = "jga_session-coverage-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _grant(resource: str = "demo") -> Grant:
    return Grant(None, "agent:demo", ("ai-agents", "ops"), resource, "readwrite",
                 datetime(2031, 1, 1, tzinfo=UTC), True)


async def _seed(store: Store, clock: FakeClock, *, end: bool = True) -> str:
    sid = await store.sessions.start_session(
        SessionStart(_grant(), client_addr="10.0.0.7:5000", application_name="psql", intent="triage")
    )
    await store.sessions.record_statements([
        StatementRecord(session_id=sid, seq=1, sql="select email from customers", decision="allow",
                        started_at=clock.now + timedelta(seconds=1), rows=2, duration_ms=1.0),
        StatementRecord(session_id=sid, seq=2, sql="delete from orders", decision="allow",
                        started_at=clock.now + timedelta(seconds=2), rows=500, duration_ms=3.0),
    ])
    if end:
        clock.advance(timedelta(seconds=30))
        await store.sessions.end_session(sid, reason="client_closed", stats=SessionStats(2, 100, 2000))
    return sid


async def _sql(store: Store, statement: str, **params: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


def _ts(store: Store, value: datetime) -> Any:
    """A timestamp as a raw UPDATE writes it on this backend."""
    if store.dialect == "sqlite":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


async def _delete_session(store: Store, sid: str) -> None:
    await _sql(store, "DELETE FROM statements WHERE session_id = :s", s=sid)
    await _sql(store, "DELETE FROM sessions WHERE id = :s", s=sid)


# -- session fields ------------------------------------------------------------------------


async def test_an_untouched_session_is_verified(store: Store, clock: FakeClock) -> None:
    ended = await _seed(store, clock)
    live = await _seed(store, clock, end=False)
    for sid in (ended, live):
        detail = await store.sessions.get_session(sid)
        assert detail is not None
        assert detail.session.tampered == () and detail.session.audit_seq is not None
        assert detail.verified
    listed = {s.id: s for s in await store.sessions.list_sessions()}
    assert listed.keys() == {ended, live} and all(s.tampered == () for s in listed.values())


async def test_start_and_end_times_match_their_records_when_the_clock_moves(store: Store) -> None:
    """The row's started_at/ended_at and the records' ts are one reading of the clock."""
    ticks = iter(range(1000))
    store.clock = lambda: T0 + timedelta(milliseconds=next(ticks))  # type: ignore[method-assign]
    sid = await store.sessions.start_session(SessionStart(_grant()))
    await store.sessions.end_session(sid, reason="done")
    detail = await store.sessions.get_session(sid)
    assert detail is not None and detail.session.tampered == () and detail.verified
    records = {r.type: r for r in [r async for r in store.audit.iter_audit()] if r.session_id == sid}
    assert records["session.start"].ts == detail.session.started_at
    assert records["session.end"].ts == detail.session.ended_at


# (column, value, the field named)
FIELD_EDITS = [
    ("principal", "agent:innocent", "principal"),
    ("intent", "routine read-only check", "intent"),
    ("resource", "staging", "resource"),
    ("role", "readonly", "role"),
    ("client_addr", "127.0.0.1", "client_addr"),
    ("application_name", "dbeaver", "application_name"),
    ("started_at", T0 - timedelta(seconds=1), "started_at"),
    ("ended_at", None, "ended_at"),
    ("ended_at", T0 + timedelta(hours=5), "ended_at"),
    ("end_reason", "idle timeout", "end_reason"),
    ("statements", 1, "statements"),
    ("bytes_out", 7, "bytes_out"),
]


@pytest.mark.parametrize(("column", "value", "field"), FIELD_EDITS,
                         ids=[f"{c}={v}" for c, v, _ in FIELD_EDITS])
async def test_each_session_field_edited_in_the_table_is_tampering(
    store: Store, clock: FakeClock, column: str, value: Any, field: str
) -> None:
    sid = await _seed(store, clock)
    other = await _seed(store, clock)
    if isinstance(value, datetime):
        value = _ts(store, value)
    await _sql(store, f"UPDATE sessions SET {column} = :v WHERE id = :s", v=value, s=sid)
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    assert field in detail.session.tampered and not detail.verified
    assert detail.statements and all(st.verified for st in detail.statements)
    listed = {s.id: s for s in await store.sessions.list_sessions()}
    assert field in listed[sid].tampered and listed[other].tampered == ()


async def test_token_id_edited_is_tampering(store: Store, clock: FakeClock) -> None:
    sid = await _seed(store, clock)
    other = await store.tokens.issue_token("agent:other", ["ai-agents"], "demo", "readwrite", timedelta(hours=1), True)
    await _sql(store, "UPDATE sessions SET token_id = :t WHERE id = :s", t=other.token_id, s=sid)
    detail = await store.sessions.get_session(sid)
    assert detail is not None and detail.session.tampered == ("token_id",)


async def test_groups_edited_is_tampering(store: Store, clock: FakeClock) -> None:
    sid = await _seed(store, clock)
    cast = ":g" if store.dialect == "sqlite" else "CAST(:g AS json)"
    await _sql(store, f"UPDATE sessions SET groups = {cast} WHERE id = :s", g=json.dumps(["readers"]), s=sid)
    detail = await store.sessions.get_session(sid)
    assert detail is not None and detail.session.tampered == ("groups",)


async def test_the_red_team_forgery_names_every_field(store: Store, clock: FakeClock) -> None:
    sid = await _seed(store, clock)
    await _sql(
        store,
        "UPDATE sessions SET principal='agent:innocent', intent='routine read-only check', resource='staging',"
        " role='readonly', client_addr='127.0.0.1', application_name='dbeaver', started_at=:t, ended_at=NULL"
        " WHERE id = :s",
        t=_ts(store, T0 - timedelta(seconds=1)), s=sid,
    )
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    assert set(detail.session.tampered) == {
        "principal", "intent", "resource", "role", "client_addr", "application_name", "started_at", "ended_at"
    }


async def test_an_edited_session_start_record_is_not_trusted(store: Store, clock: FakeClock) -> None:
    """Editing the row and its record alike (without rehashing) is still caught."""
    sid = await _seed(store, clock)
    await _sql(store, "UPDATE sessions SET principal = 'agent:innocent' WHERE id = :s", s=sid)
    await _sql(store, "UPDATE audit_events SET actor = 'agent:innocent' WHERE session_id = :s"
               " AND type = 'session.start'", s=sid)
    detail = await store.sessions.get_session(sid)
    assert detail is not None and "audit_record_altered" in detail.session.tampered


# -- a deleted session -------------------------------------------------------------------------


async def test_a_deleted_session_is_shown_from_the_chain(store: Store, clock: FakeClock) -> None:
    sid = await _seed(store, clock)
    kept = await _seed(store, clock)
    await _delete_session(store, sid)
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    s = detail.session
    assert s.tampered == ("row_deleted",) and not detail.verified
    assert (s.principal, s.resource, s.role, s.intent, s.client_addr) == (
        "agent:demo", "demo", "readwrite", "triage", "10.0.0.7:5000")
    assert s.groups == ("ai-agents", "ops") and s.end_reason == "client_closed" and s.statements == 2
    assert [(st.seq, st.sql, st.tampered) for st in detail.statements] == [
        (1, "select email from customers", ("row_deleted",)), (2, "delete from orders", ("row_deleted",))]
    listed = {x.id: x for x in await store.sessions.list_sessions()}
    assert listed[sid].tampered == ("row_deleted",) and listed[kept].tampered == ()
    assert await store.sessions.get_session(str(uuid.uuid4())) is None


async def test_a_deleted_live_session_is_listed_as_active(store: Store, clock: FakeClock) -> None:
    sid = await _seed(store, clock, end=False)
    await _delete_session(store, sid)
    active = await store.sessions.list_sessions(active_only=True)
    assert [(s.id, s.tampered, s.active) for s in active] == [(sid, ("row_deleted",), True)]


async def test_the_sweep_reports_sessions_missing_either_way(store: Store, clock: FakeClock) -> None:
    sids = [await _seed(store, clock) for _ in range(3)]
    clean = await store.sessions.sweep_sessions()
    assert clean.ok and clean.checked == 3 and clean.problems == []
    await _delete_session(store, sids[0])
    await _sql(store, "UPDATE sessions SET intent = 'nothing to see' WHERE id = :s", s=sids[1])
    invented = str(uuid.uuid4())
    await _sql(store, "INSERT INTO sessions (id, principal, groups, resource, role, started_at, statements,"
               " bytes_in, bytes_out) VALUES (:s, 'agent:x', '[]', 'demo', 'ro', :t, 0, 0, 0)",
               s=invented, t=_ts(store, T0))
    report = await store.sessions.sweep_sessions(chunk=2)
    assert not report.ok
    text_ = "\n".join(report.problems)
    assert f"session {sids[0]}: row_deleted" in text_
    assert f"session {sids[1]}: intent" in text_
    assert f"session {invented}: no_audit_record" in text_
    assert sids[2] not in text_
    assert report.count == 3


# -- after a prune -----------------------------------------------------------------------------


async def _prune(store: Store, clock: FakeClock, tmp_path: Path) -> str:
    """An old session archived by a prune; the clock then moves on. Its id."""
    old = await _seed(store, clock)
    clock.advance(timedelta(days=2))
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert summary is not None and old in summary.sessions
    clock.advance(timedelta(hours=1))
    return old


async def test_a_truly_pruned_session_is_unchecked_not_tampered(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    old = await _prune(store, clock, tmp_path)
    recent = await _seed(store, clock)
    detail = await store.sessions.get_session(old)
    assert detail is not None
    assert detail.session.tampered == () and detail.session.audit_seq is None and detail.verified
    assert all(st.tampered == () and st.audit_seq is None for st in detail.statements)
    fresh = await store.sessions.get_session(recent)
    assert fresh is not None and fresh.verified and fresh.session.audit_seq is not None
    assert (await store.sessions.sweep_sessions()).ok
    # The archive lists it; its trailer (which the witness signs) carries the list's digest.
    archived, trailer = verify_archive(next(tmp_path.glob("audit-*.jsonl.gz")))  # noqa: ASYNC240 - a temp dir
    assert archived.ok and trailer is not None
    assert trailer["sessions_sha256"] == sessions_digest([old])
    prune = [r async for r in store.audit.iter_audit() if r.type == "audit.prune"]
    assert prune[-1].data["sessions"] == [old] and prune[-1].data["sessions_sha256"] == sessions_digest([old])


async def test_pruned_sessions_stay_listed_across_a_second_prune(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    old = await _prune(store, clock, tmp_path)
    middle = await _seed(store, clock)
    clock.advance(timedelta(days=2))
    second = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert second is not None and {old, middle} <= set(second.sessions)
    for sid in (old, middle):
        detail = await store.sessions.get_session(sid)
        assert detail is not None and detail.verified and detail.session.audit_seq is None
    assert (await store.sessions.sweep_sessions()).ok


async def test_after_a_prune_an_invented_session_is_no_audit_record(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    await _prune(store, clock, tmp_path)
    invented = str(uuid.uuid4())
    await _sql(store, "INSERT INTO sessions (id, principal, groups, resource, role, started_at, statements,"
               " bytes_in, bytes_out) VALUES (:s, 'agent:x', '[]', 'demo', 'ro', :t, 0, 0, 0)",
               s=invented, t=_ts(store, T0))
    detail = await store.sessions.get_session(invented)
    assert detail is not None and detail.session.tampered == ("no_audit_record",) and not detail.verified
    report = await store.sessions.sweep_sessions()
    assert [p for p in report.problems if invented in p] == [f"session {invented}: no_audit_record"]


async def test_after_a_prune_a_rekeyed_session_is_caught(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    await _prune(store, clock, tmp_path)
    recent = await _seed(store, clock)
    rekeyed = str(uuid.uuid4())
    await _sql(store, "DELETE FROM statements WHERE session_id = :s", s=recent)
    await _sql(store, "UPDATE sessions SET id = :n WHERE id = :s", n=rekeyed, s=recent)
    detail = await store.sessions.get_session(rekeyed)
    assert detail is not None and detail.session.tampered == ("no_audit_record",)
    gone = await store.sessions.get_session(recent)
    assert gone is not None and gone.session.tampered == ("row_deleted",)


async def test_a_session_started_after_the_prune_cannot_pass_as_pruned(
    store: Store, clock: FakeClock, tmp_path: Path
) -> None:
    """Re-keying a recent session to the id of an archived one (whose row was removed)."""
    old = await _prune(store, clock, tmp_path)
    recent = await _seed(store, clock)
    await _delete_session(store, old)
    await _sql(store, "DELETE FROM statements WHERE session_id = :s", s=recent)
    await _sql(store, "UPDATE sessions SET id = :o WHERE id = :s", o=old, s=recent)
    detail = await store.sessions.get_session(old)
    assert detail is not None and detail.session.tampered == ("no_audit_record",)


# -- what the API, the CLI and verify show -----------------------------------------------------


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(api={"tokens": [hash_api_token(API_TOKEN)]}, resources={})
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test") as c:
        yield c


async def test_api_flags_session_tampering_and_deleted_sessions(
    store: Store, clock: FakeClock, api: httpx.AsyncClient
) -> None:
    sid = await _seed(store, clock)
    gone = await _seed(store, clock)
    clean = (await api.get(f"/v1/sessions/{sid}", headers=AUTH)).json()
    assert clean["verified"] is True and clean["session_tampered"] == []
    assert (await api.get("/v1/audit/verify", headers=AUTH)).json()["sessions"]["ok"] is True

    await _sql(store, "UPDATE sessions SET principal = 'agent:innocent', resource = 'staging' WHERE id = :s", s=sid)
    await _delete_session(store, gone)
    body = (await api.get(f"/v1/sessions/{sid}", headers=AUTH)).json()
    assert body["verified"] is False and body["session_tampered"] == ["principal", "resource"]
    assert body["tampered"] == []  # its statements are intact
    deleted = (await api.get(f"/v1/sessions/{gone}", headers=AUTH))
    assert deleted.status_code == 200
    assert deleted.json()["session_tampered"] == ["row_deleted"] and deleted.json()["verified"] is False
    assert deleted.json()["principal"] == "agent:demo"
    listed = {s["id"]: s for s in (await api.get("/v1/sessions", headers=AUTH)).json()}
    assert listed[gone]["session_tampered"] == ["row_deleted"]
    assert listed[sid]["session_tampered"] == ["principal", "resource"]
    verify = (await api.get("/v1/audit/verify", headers=AUTH)).json()
    assert verify["sessions"]["ok"] is False
    assert any(gone in p and "row_deleted" in p for p in verify["sessions"]["problems"])
    spec = (await api.get("/openapi.json")).json()
    assert "session_tampered" in spec["components"]["schemas"]["SessionOut"]["properties"]


async def _run(*args: Any) -> Any:
    # The CLI runs its own event loop (asyncio.run): not from inside this test's loop.
    return await asyncio.to_thread(run_cli, *args)


async def test_cli_show_replay_list_and_verify_report_session_tampering(
    store: Store, clock: FakeClock, cli_config: Path
) -> None:
    sid = await _seed(store, clock)
    gone = await _seed(store, clock)
    for command in ("show", "replay"):
        ok = await _run(cli_config, "sessions", command, sid)
        assert ok.exit_code == 0 and "TAMPERED" not in ok.output, ok.output
    ok = await _run(cli_config, "audit", "verify", "--allow-unanchored")
    assert ok.exit_code == 0, ok.output

    await _sql(store, "UPDATE sessions SET intent = 'routine read-only check', started_at = :t WHERE id = :s",
               t=_ts(store, T0 - timedelta(seconds=1)), s=sid)
    await _delete_session(store, gone)
    for command in ("show", "replay"):
        bad = await _run(cli_config, "sessions", command, sid)
        assert bad.exit_code == 3, bad.output
        assert "TAMPERED" in bad.output and "intent" in bad.output and "started_at" in bad.output
        deleted = await _run(cli_config, "sessions", command, gone)
        assert deleted.exit_code == 3, deleted.output
        assert f"TAMPERED session {gone}" in deleted.output and "row_deleted" in deleted.output
        assert "agent:demo" in deleted.output  # shown from the chained session.start
    replayed = (await _run(cli_config, "sessions", "replay", gone)).output
    assert "delete from orders" in replayed  # the statements too, from their records
    as_json = json.loads((await _run(cli_config, "sessions", "show", sid, "--json")).stdout)
    assert as_json["verified"] is False and as_json["session_tampered"] == ["intent", "started_at"]
    listed = await _run(cli_config, "sessions", "list", "--json")
    rows = {o["id"]: o for o in map(json.loads, listed.stdout.splitlines())}
    assert listed.exit_code == 3
    assert rows[gone]["session_tampered"] == ["row_deleted"]
    assert rows[sid]["session_tampered"] == ["intent", "started_at"]
    table = await _run(cli_config, "sessions", "list")
    assert table.exit_code == 3 and f"TAMPERED session {gone}" in table.output
    verify = await _run(cli_config, "audit", "verify", "--allow-unanchored")
    assert verify.exit_code == 1, verify.output
    assert f"session {gone}: row_deleted" in verify.output and f"session {sid}: intent, started_at" in verify.output


async def test_rows_and_records_are_read_from_one_snapshot(store: Store) -> None:
    """A statement or an end committed between reading rows and records must not read as
    tampering: on PostgreSQL the views' transactions run REPEATABLE READ."""
    from broker.store.sessions import _snapshot

    async with store.transaction("probe") as session:
        await _snapshot(session, store.dialect)
        if store.dialect == "postgresql":
            level = (await session.execute(text("SHOW transaction_isolation"))).scalar()
            assert level == "repeatable read"
        else:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1  # SQLite: one snapshot already
