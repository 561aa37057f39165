# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta

import pytest

from broker.exceptions import StoreError, StoreIntegrityError
from broker.store import Grant, SessionStart, SessionStats, StatementRecord, Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


class Decision(str, enum.Enum):  # noqa: UP042 - shaped like broker.policy.Decision
    ALLOW = "allow"
    BLOCK = "block"


def grant(**overrides: object) -> Grant:
    values: dict[str, object] = {
        "token_id": None,
        "principal": "agent:demo",
        "groups": ("ai-agents",),
        "resource": "demo",
        "role": "readwrite",
        "expires_at": datetime(2031, 1, 1, tzinfo=UTC),
        "reusable": True,
    }
    values.update(overrides)
    return Grant(**values)  # type: ignore[arg-type]


def rec(session_id: str, seq: int, **kw: object) -> StatementRecord:
    values: dict[str, object] = {
        "sql": f"select {seq}",
        "decision": "allow",
        "started_at": datetime(2030, 1, 1, 12, 0, seq, tzinfo=UTC),
    }
    values.update(kw)
    return StatementRecord(session_id=session_id, seq=seq, **values)  # type: ignore[arg-type]


async def test_session_lifecycle_is_recorded(store: Store, clock: FakeClock) -> None:
    issued = await store.tokens.issue_token(
        "agent:demo", ["ai-agents"], "demo", "readwrite", timedelta(hours=1), True
    )
    g = await store.tokens.verify_token(issued.token, "demo")
    sid = await store.sessions.start_session(SessionStart(
        g, client_addr="10.0.0.7:51234", application_name="psql", intent="fix invoice 42")
    )
    started = clock.now
    await store.sessions.record_statements(
        [
            rec(sid, 1, fingerprint="fp1", rows=3, duration_ms=1.5),
            rec(
                sid,
                2,
                sql="drop table customers",
                decision=Decision.BLOCK,
                rule="agent-safe/drop",
                reason="DROP needs review",
                shadow_decision=Decision.ALLOW,
                masked_values=4,
                error_sqlstate="42501",
            ),
        ]
    )
    clock.advance(timedelta(minutes=5))
    assert await store.sessions.end_session(
        sid, reason="client terminated", stats=SessionStats(statements=2, bytes_in=10, bytes_out=20)
    )

    detail = await store.sessions.get_session(sid)
    assert detail is not None
    s = detail.session
    assert (s.id, s.token_id, s.principal, s.groups) == (
        sid,
        issued.token_id,
        "agent:demo",
        ("ai-agents",),
    )
    assert (s.client_addr, s.application_name, s.intent) == (
        "10.0.0.7:51234",
        "psql",
        "fix invoice 42",
    )
    assert s.started_at == started and s.ended_at == started + timedelta(minutes=5)
    assert (s.end_reason, s.statements, s.bytes_in, s.bytes_out) == ("client terminated", 2, 10, 20)
    assert not s.active

    first, second = detail.statements
    assert (first.seq, first.sql, first.fingerprint, first.rows, first.duration_ms) == (
        1,
        "select 1",
        "fp1",
        3,
        1.5,
    )
    # Enum members are stored as their values, not as "Decision.BLOCK".
    assert (second.decision, second.shadow_decision) == ("block", "allow")
    assert (second.rule, second.reason, second.masked_values, second.error_sqlstate) == (
        "agent-safe/drop",
        "DROP needs review",
        4,
        "42501",
    )
    assert second.started_at == datetime(2030, 1, 1, 12, 0, 2, tzinfo=UTC)


async def test_record_statements_is_idempotent_per_session_and_seq(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    await store.sessions.record_statements([rec(sid, 1), rec(sid, 2)])
    # A batch retried after an ambiguous failure: overlapping seqs are not duplicated.
    await store.sessions.record_statements([rec(sid, 2, sql="changed"), rec(sid, 3)])
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    assert [(s.seq, s.sql) for s in detail.statements] == [
        (1, "select 1"),
        (2, "select 2"),
        (3, "select 3"),
    ]


async def test_statement_for_unknown_session_is_an_integrity_error(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    with pytest.raises(StoreIntegrityError):
        await store.sessions.record_statements([rec(sid, 1), rec("no-such-session", 1)])
    detail = await store.sessions.get_session(sid)
    assert detail is not None and detail.statements == ()  # the whole batch rolled back


async def test_statement_text_is_stored_verbatim(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    nasty = "select '''; drop table sessions; --', $$ \\x00 é ✓ $$, E'\\n' -- %s %(x)s"
    await store.sessions.record_statements([rec(sid, 1, sql=nasty)])
    detail = await store.sessions.get_session(sid)
    assert detail is not None and detail.statements[0].sql == nasty


async def test_recorded_results_round_trip_and_default_to_none(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    results = [{"columns": ["id", "email"], "rows": [["1", "j***@example.com"], ["2", None]], "truncated": True}]
    await store.sessions.record_statements([rec(sid, 1, results=results), rec(sid, 2)])
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    assert [st.results for st in detail.statements] == [results, None]


async def test_end_session_only_once(store: Store, clock: FakeClock) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    await store.sessions.record_statements([rec(sid, 1), rec(sid, 2)])
    assert await store.sessions.end_session(sid, reason="first") is True
    clock.advance(timedelta(seconds=1))
    assert await store.sessions.end_session(sid, reason="second") is False
    assert await store.sessions.end_session("no-such-session", reason="x") is False
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    # Without stats the count comes from the recorded statements.
    assert (detail.session.end_reason, detail.session.statements) == ("first", 2)


async def test_list_sessions_newest_first_with_filters(store: Store, clock: FakeClock) -> None:
    ids = []
    for i in range(4):
        ids.append(await store.sessions.start_session(SessionStart(grant(principal=f"agent:{i}"))))
        clock.advance(timedelta(seconds=10))
    await store.sessions.end_session(ids[1], reason="done")
    await store.sessions.record_statements([rec(ids[3], 1), rec(ids[3], 2), rec(ids[3], 3)])

    everything = await store.sessions.list_sessions()
    assert [s.id for s in everything] == ids[::-1]
    # A live session's count is what has been recorded so far.
    assert everything[0].statements == 3

    active = await store.sessions.list_sessions(active_only=True)
    assert [s.id for s in active] == [ids[3], ids[2], ids[0]]
    assert all(s.active for s in active)

    assert [s.id for s in await store.sessions.list_sessions(limit=2)] == [ids[3], ids[2]]
    older = await store.sessions.list_sessions(started_before=everything[1].started_at)
    assert [s.id for s in older] == [ids[1], ids[0]]


async def test_get_unknown_session_is_none(store: Store) -> None:
    assert await store.sessions.get_session("nope") is None


async def test_naive_datetimes_are_refused(store: Store) -> None:
    sid = await store.sessions.start_session(SessionStart(grant()))
    with pytest.raises(StoreError, match="naive datetime"):
        await store.sessions.record_statements([rec(sid, 1, started_at=datetime(2030, 1, 1))])
