"""A SQLite store call cancelled in the middle of a statement must not leave the database locked.

A client that leaves while its statement is parked cancels the proxy's task mid store call
(reading the approval request in `ApprovalService.wait`). SQLAlchemy then invalidates the
connection and closes it without closing the cursor whose SELECT had started. On Python 3.11+
sqlite3 closing a connection with such a cursor leaves it open (a "zombie"), with its
transaction and the write lock `BEGIN IMMEDIATE` took, until that cursor is garbage-collected,
and it sits in a reference cycle: every other writer (the session end, the approval's
cancellation, the recorder's writer process) failed with "database is locked" after the busy
timeout. The garbage collector is held off here so that the test does not depend on when it runs.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from broker.approvals.model import Approval, Status
from broker.store import Store
from broker.store.db import SQLiteConnection


@pytest.fixture
def no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def write_lock_free(path: Path) -> bool:
    """Whether another connection can take the write lock now (no waiting)."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("COMMIT")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_closing_a_connection_with_an_unfinished_cursor_releases_the_lock(tmp_path: Path, no_gc: None) -> None:
    path = tmp_path / "j.db"
    conn = sqlite3.connect(path, isolation_level=None, factory=SQLiteConnection)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    conn.execute("BEGIN IMMEDIATE")
    unfinished = conn.execute("SELECT x FROM t")  # one row read, the statement still running
    assert not write_lock_free(path)
    conn.close()
    assert write_lock_free(path)
    del unfinished


def approval(approval_id: str) -> Approval:
    now = datetime.now(UTC)
    return Approval(
        id=approval_id, kind="statement", status=Status.PENDING, requester="agent:a", requester_groups=("g",),
        resource="demo", created_at=now, expires_at=now + timedelta(minutes=5), approver_groups=("dba",),
        session_id="s1", sql="delete from t",
    )


async def test_a_store_call_cancelled_mid_statement_leaves_the_database_unlocked(tmp_path: Path, no_gc: None) -> None:
    path = tmp_path / "j.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store.approvals.create_approval(approval("a1"))

        cancel_at_select: list[bool] = [True]

        @event.listens_for(store.engine.sync_engine, "before_cursor_execute")
        def cancel(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            # The SELECT is queued on the connection's thread and runs; its caller is
            # cancelled while waiting for it, as when the client goes away.
            if cancel_at_select and statement.lstrip().upper().startswith("SELECT"):
                cancel_at_select.clear()
                task = asyncio.current_task()
                assert task is not None
                task.cancel()

        # A read that still takes BEGIN IMMEDIATE (the session's rows and audit records are
        # read as one snapshot); the approval reads below no longer take the write lock.
        reading = asyncio.ensure_future(store.sessions.get_session("s1"))
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert not cancel_at_select  # it was cancelled at the SELECT, inside its BEGIN IMMEDIATE
        assert write_lock_free(path)  # another writer (the recorder's process, say) gets in
        read = await store.approvals.get_approval("a1")  # and the store goes on
        assert read is not None and read.status is Status.PENDING
    finally:
        await store.close()


async def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    """Reads begin with a plain BEGIN: beside a writer holding the write lock (the recorder's
    process, mid-batch) they read the last commit instead of queueing behind it, as a
    `BEGIN IMMEDIATE` would, for up to the 10 s busy timeout and then failing."""
    path = tmp_path / "j.db"
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store.approvals.create_approval(approval("a1"))
        writer = sqlite3.connect(path, isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE approvals SET reason = 'uncommitted' WHERE id = 'a1'")
        try:
            assert not write_lock_free(path)
            reads = [
                store.approvals.get_approval("a1"),
                store.approvals.list_approvals(),
                store.approvals.due_approvals(),
                store.approvals.pending_older_than(timedelta(0), escalated=False),
                store.approvals.voter_for_email("a@example.com", via="slack", max_age=timedelta(days=1)),
                store.access.get_access_request("r1"),
                store.access.token_owner("t1"),
                store.audit.audit_state(),
                store.audit.count_audit(),
                store.audit.audit_record(1),
            ]
            got = await asyncio.wait_for(asyncio.gather(*reads), timeout=5)
            assert got[0] is not None and got[0].reason != "uncommitted"  # the last commit
            assert [a.id for a in got[1]] == ["a1"]
            records = [r async for r in store.audit.iter_audit()]  # the approval's creation, at least
            assert got[8] == len(records) >= 1 and got[9] is not None and got[9].seq == 1
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    finally:
        await store.close()
