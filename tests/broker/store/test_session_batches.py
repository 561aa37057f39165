"""Session starts and ends written in batches (a connect burst), and token verification that
does not queue for SQLite's write lock."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta

import pytest

from broker.store import SessionStats, Store
from broker.store.records import SessionEnd, SessionStart
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401
from tests.broker.store.test_sessions import grant


async def test_a_batch_of_starts_is_one_chained_append_per_session(store: Store) -> None:
    starts = [SessionStart(grant(principal=f"agent:{i}"), client_addr=f"10.0.0.{i}", intent=f"i{i}") for i in range(5)]

    ids = await store.sessions.start_sessions(starts)

    assert len(set(ids)) == 5
    sessions = {s.id: s for s in await store.sessions.list_sessions(active_only=True)}
    assert [sessions[i].principal for i in ids] == [f"agent:{i}" for i in range(5)]
    events = [r async for r in store.audit.iter_audit()]
    assert [(e.type, e.session_id) for e in events] == [("session.start", i) for i in ids]
    assert [e.data["intent"] for e in events] == [f"i{i}" for i in range(5)]
    assert (await store.audit.verify_audit()).ok


async def test_a_batch_of_ends_reports_which_calls_ended_a_session(store: Store) -> None:
    a, b = await store.sessions.start_sessions([SessionStart(grant()), SessionStart(grant())])
    await store.sessions.end_session(b, reason="earlier")

    ended = await store.sessions.end_sessions([
        SessionEnd(a, "client closed", SessionStats(statements=3, bytes_in=10, bytes_out=20)),
        SessionEnd(b, "again"),
        SessionEnd("00000000-0000-0000-0000-000000000000", "unknown"),
    ])

    assert ended == [True, False, False]
    assert await store.sessions.list_sessions(active_only=True) == []
    ends = [r async for r in store.audit.iter_audit() if r.type == "session.end"]
    assert [(r.session_id, r.data["reason"]) for r in ends] == [(b, "earlier"), (a, "client closed")]
    assert ends[-1].data["statements"] == 3
    assert (await store.audit.verify_audit()).ok


async def test_empty_batches_write_nothing(store: Store) -> None:
    assert await store.sessions.start_sessions([]) == []
    assert await store.sessions.end_sessions([]) == []
    assert [r async for r in store.audit.iter_audit()] == []


@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
async def test_reusable_token_verifies_while_another_process_holds_the_write_lock(
    store: Store, backend_url: str
) -> None:
    """Verification reads: a connect does not wait behind the recorder's writer process."""
    issued = await store.tokens.issue_token("agent:x", ["ai-agents"], "demo", "readonly", timedelta(hours=1), True)
    other = sqlite3.connect(backend_url.split("///", 1)[1], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # what a writer holds while it writes a batch
        grant_ = await asyncio.wait_for(store.tokens.verify_token(issued.token, "demo"), 2)
        assert grant_.token_id == issued.token_id
        # A write does wait for it (the busy timeout), as before.
        writing = asyncio.ensure_future(store.sessions.start_session(SessionStart(grant_)))
        await asyncio.sleep(0.3)
        assert not writing.done()
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await asyncio.wait_for(writing, 5)
