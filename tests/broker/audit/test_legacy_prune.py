"""Sessions archived by a prune made before prune records listed their sessions: shown as
`no_audit_record` until the next prune, which reads that prune's archive (it must verify and
end at the hash the chain pins) and lists them, so they are then unchecked, not tampered. An
invented session, or one whose archive is gone or altered, stays `no_audit_record`. Both store
backends."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import gzip
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from broker.audit.archive import verify_archive, write_archive
from broker.audit.chain import GENESIS_HASH
from broker.audit.events import AuditEvent, audit_pruned
from broker.store import Grant, SessionStart, SessionStats, StatementRecord, Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


async def sql(store: Store, statement: str, **params: Any) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(statement), params)


def ts(store: Store, value: datetime) -> Any:
    if store.dialect == "sqlite":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    return value


async def session(store: Store, clock: FakeClock) -> str:
    grant = Grant(None, "agent:demo", ("ai-agents",), "demo", "readwrite", clock.now + timedelta(days=30), True)
    sid = await store.sessions.start_session(SessionStart(grant, client_addr="10.0.0.7:5000", intent="triage"))
    await store.sessions.record_statements([StatementRecord(
        session_id=sid, seq=1, sql="select 1", decision="allow", started_at=clock.now, rows=1, duration_ms=1.0)])
    clock.advance(timedelta(seconds=30))
    await store.sessions.end_session(sid, reason="client_closed", stats=SessionStats(1, 10, 20))
    return sid


async def legacy_prune(store: Store, archive_dir: Path) -> Path:
    """What a prune made before prune records listed sessions did: the archive, the deletion,
    the anchor moved and an `audit.prune` record without `sessions`."""
    state = await store.audit.audit_state()
    assert state is not None
    through = state.head_seq
    path = archive_dir / f"audit-{state.anchor_seq + 1:012d}-{through:012d}.jsonl.gz"
    summary = await write_archive(path, store.audit.iter_audit(from_seq=state.anchor_seq + 1, to_seq=through),
                                  prev_seq=state.anchor_seq, prev_hash=state.anchor_hash)
    await sql(store, "DELETE FROM audit_events WHERE seq <= :t", t=through)
    await sql(store, "UPDATE audit_state SET anchor_seq = :s, anchor_hash = :h", s=through, h=summary.through_hash)
    await store.audit.append_audit(audit_pruned(archive=path.name, through_seq=through,
                                                through_hash=summary.through_hash, records=summary.records))
    return path


async def status(store: Store, sid: str) -> tuple[str, ...]:
    detail = await store.sessions.get_session(sid)
    assert detail is not None
    return detail.session.tampered


@pytest.fixture
async def before_listing(store: Store, clock: FakeClock, tmp_path: Path) -> tuple[str, str, Path]:
    """An old session pruned the old way, a newer one, and an invented row dated long ago."""
    old = await session(store, clock)
    clock.advance(timedelta(days=2))
    archive = await legacy_prune(store, tmp_path)
    prune = [r async for r in store.audit.iter_audit() if r.type == "audit.prune"]
    assert "sessions" not in prune[-1].data
    invented = str(uuid.uuid4())
    await sql(store, "INSERT INTO sessions (id, principal, groups, resource, role, started_at, statements,"
              " bytes_in, bytes_out) VALUES (:s, 'agent:x', '[]', 'demo', 'ro', :t, 0, 0, 0)",
              s=invented, t=ts(store, clock.now - timedelta(days=3)))
    # Until the next prune, the old one cannot be told from the invented one.
    assert await status(store, old) == ("no_audit_record",)
    assert await status(store, invented) == ("no_audit_record",)
    await session(store, clock)
    clock.advance(timedelta(days=2))
    return old, invented, archive


async def test_the_next_prune_lists_what_an_unlisted_prune_archived(
    store: Store, clock: FakeClock, tmp_path: Path, before_listing: tuple[str, str, Path]
) -> None:
    old, invented, _ = before_listing
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert summary is not None and old in summary.sessions and invented not in summary.sessions
    assert await status(store, old) == ()
    assert await status(store, invented) == ("no_audit_record",)
    sweep = await store.sessions.sweep_sessions()
    assert sweep.problems == [f"session {invented}: no_audit_record"]
    # And the list is carried on by the prunes after it.
    await session(store, clock)
    clock.advance(timedelta(days=2))
    later = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert later is not None and old in later.sessions
    assert await status(store, old) == ()


async def test_a_missing_or_altered_archive_lists_nothing(
    store: Store, clock: FakeClock, tmp_path: Path, before_listing: tuple[str, str, Path]
) -> None:
    old, _, archive = before_listing
    lines = gzip.decompress(archive.read_bytes()).decode().splitlines(keepends=True)
    forged = "".join(lines[:-1]).replace('"intent":"triage"', '"intent":"other"') + lines[-1]
    archive.write_bytes(gzip.compress(forged.encode()))
    assert not verify_archive(archive)[0].ok
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert summary is not None and old not in summary.sessions
    assert await status(store, old) == ("no_audit_record",)


async def test_an_archive_of_another_chain_lists_nothing(
    store: Store, clock: FakeClock, tmp_path: Path, before_listing: tuple[str, str, Path]
) -> None:
    """A well-formed archive under the legacy prune's name, listing the invented session, but
    not ending at the hash the chain pins."""
    old, invented, archive = before_listing
    other = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/other.db")
    try:
        await other.audit.append_audit(AuditEvent("session.start", "agent:x", session_id=invented))
        await write_archive(archive, other.audit.iter_audit(), prev_seq=0, prev_hash=GENESIS_HASH)
    finally:
        await other.close()
    assert verify_archive(archive)[0].ok
    summary = await store.audit.prune_audit(before=clock.now - timedelta(days=1), archive_dir=tmp_path)
    assert summary is not None and not {old, invented} & set(summary.sessions)
    assert await status(store, invented) == ("no_audit_record",)
