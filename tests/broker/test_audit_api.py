"""`/v1/audit/verify` and `/v1/audit/export` through the real app (ASGI transport)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from broker.api import create_app
from broker.audit.signing import new_private_key
from broker.audit.witnessing import FileWitness, WitnessSetup, witness_head
from broker.config import Settings
from broker.store import SessionStart, SessionStats, StatementRecord, Store
from tests.broker.test_api import AUTH, make_settings


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/audit-api.db")
    yield s
    await s.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(), store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test") as c:
        yield c


async def seed(store: Store) -> str:
    issued = await store.tokens.issue_token("agent:demo", ["ai-agents"], "demo", "readwrite", timedelta(hours=1), True)
    grant = await store.tokens.verify_token(issued.token, "demo")
    sid = await store.sessions.start_session(
        SessionStart(grant, client_addr="127.0.0.1:40000", application_name="psql")
    )
    now = datetime.now(UTC)
    await store.sessions.record_statements(
        [StatementRecord(session_id=sid, seq=i, sql=f"select {i}", decision="allow", started_at=now, rows=1)
         for i in (1, 2, 3)]
    )
    await store.sessions.end_session(sid, reason="client terminated", stats=SessionStats(3, 1, 1))
    return issued.token


def tamper(store: Store, stmt: str) -> None:
    db = sqlite3.connect(store.engine.url.database or "")
    try:
        db.execute(stmt)
        db.commit()
    finally:
        db.close()


def anchored(tmp_path: Path) -> tuple[Settings, WitnessSetup]:
    """Settings with a signing key and a witness file, and the worker's setup writing to it."""
    key_file = tmp_path / "audit.pem"
    key = new_private_key(key_file)
    witness = tmp_path / "witness.jsonl"
    settings = make_settings().model_copy(update={"audit": make_settings().audit.model_copy(update={
        "signing_key_file": key_file,
        "witness": make_settings().audit.witness.model_copy(update={"file": witness}),
    })})
    return settings, WitnessSetup(key, [FileWitness(witness)], tmp_path / "state")


async def test_audit_endpoints_need_a_bearer(client: httpx.AsyncClient) -> None:
    for path in ("/v1/audit/verify", "/v1/audit/export"):
        assert (await client.get(path)).status_code == 401


async def test_verify_reports_ok_then_the_first_break(client: httpx.AsyncClient, store: Store) -> None:
    await seed(store)
    body = (await client.get("/v1/audit/verify", headers=AUTH)).json()
    assert body["ok"] is True and body["checked"] == 6 and body["last_seq"] == 6
    # Nothing configured to anchor it: said, not hidden behind ok.
    assert body["anchored"] is False and [w.split(" ")[1] for w in body["unanchored"]] == ["public", "witness"]
    tamper(store, "UPDATE audit_events SET actor = 'someone-else' WHERE seq = 4")
    body = (await client.get("/v1/audit/verify", headers=AUTH)).json()
    assert body["ok"] is False
    assert body["break"]["seq"] == 4 and body["break"]["kind"] == "altered" and body["break"]["id"]
    ranged = (await client.get("/v1/audit/verify", params={"from_seq": 1, "to_seq": 3}, headers=AUTH)).json()
    assert ranged["ok"] is True and ranged["checked"] == 3


async def test_export_formats(client: httpx.AsyncClient, store: Store) -> None:
    token = await seed(store)
    r = await client.get("/v1/audit/export", params={"format": "jsonl"}, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, 7))
    assert token not in r.text

    r = await client.get("/v1/audit/export", params={"format": "csv"}, headers=AUTH)
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["type"] for row in rows] == ["token.issue", "session.start", "statement", "statement", "statement",
                                             "session.end"]

    r = await client.get("/v1/audit/export", params={"format": "ocsf"}, headers=AUTH)
    events = [json.loads(line) for line in r.text.splitlines()]
    assert [e["class_uid"] for e in events] == [6003, 6005, 6005, 6005, 6005, 6005]
    assert events[2]["src_endpoint"] == {"ip": "127.0.0.1", "port": 40000}

    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await client.get("/v1/audit/export", params={"format": "jsonl", "since": future}, headers=AUTH)
    assert r.status_code == 200 and r.text == ""
    assert (await client.get("/v1/audit/export", params={"format": "xml"}, headers=AUTH)).status_code == 422


async def test_verify_with_key_and_witness_is_anchored_and_names_a_rewrite(store: Store, tmp_path: Path) -> None:
    settings, setup = anchored(tmp_path)
    witness = tmp_path / "witness.jsonl"
    await seed(store)
    await witness_head(store.audit, setup)
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test") as c:
        body = (await c.get("/v1/audit/verify", headers=AUTH)).json()
        assert body["ok"] and body["anchored"] and body["unanchored"] == [] and body["witnessed_through"] == 7
        tamper(store, "DELETE FROM audit_events WHERE seq > 5")
        record5 = sqlite3.connect(store.engine.url.database or "").execute(
            "SELECT hash FROM audit_events WHERE seq = 5").fetchone()[0]
        tamper(store, f"UPDATE audit_state SET head_seq = 5, head_hash = '{record5}'")
        body = (await c.get("/v1/audit/verify", headers=AUTH)).json()
        assert body["ok"] is False and (body["break"]["seq"], body["break"]["kind"]) == (6, "truncated")
        witness.write_text(witness.read_text().replace('"seq":7', '"seq":8'))
        body = (await c.get("/v1/audit/verify", headers=AUTH)).json()
        assert body["anchored"] is False and body["unanchored"][0].startswith("witness not trusted")


async def test_verify_ranges_reach_their_end_and_limits_bound_the_unwitnessed_tail(
    store: Store, tmp_path: Path
) -> None:
    settings, setup = anchored(tmp_path)
    await seed(store)  # seq 1..6
    await witness_head(store.audit, setup)  # checkpoint 7
    await seed(store)  # seq 8..13
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test") as c:
        body = (await c.get("/v1/audit/verify", headers=AUTH)).json()
        assert body["ok"] and body["unwitnessed"]["from_seq"] == 8 and body["unwitnessed"]["records"] == 6
        assert body["last_witness_ts"] and body["partially_anchored"] is False and body["trusted_start"] is None
        over = (await c.get("/v1/audit/verify", params={"max_unwitnessed": 5}, headers=AUTH)).json()
        assert over["ok"] is False and (over["break"]["seq"], over["break"]["kind"]) == (8, "unwitnessed_tail")
        fine = (await c.get("/v1/audit/verify", params={"max_unwitnessed": 6, "max_witness_age": "1h"},
                            headers=AUTH)).json()
        assert fine["ok"] is True
        bad = await c.get("/v1/audit/verify", params={"max_witness_age": "soon"}, headers=AUTH)
        assert bad.status_code == 422
        ranged = (await c.get("/v1/audit/verify", params={"from_seq": 3, "to_seq": 11}, headers=AUTH)).json()
        assert ranged["ok"] and ranged["trusted_start"] == 3
        # Seq 6.. deleted and the head set back to 5: a range over the cut fails too.
        tamper(store, "DELETE FROM audit_events WHERE seq > 5")
        record5 = sqlite3.connect(store.engine.url.database or "").execute(
            "SELECT hash FROM audit_events WHERE seq = 5").fetchone()[0]
        tamper(store, f"UPDATE audit_state SET head_seq = 5, head_hash = '{record5}'")
        cut = (await c.get("/v1/audit/verify", params={"to_seq": 11}, headers=AUTH)).json()
        assert cut["ok"] is False and (cut["break"]["seq"], cut["break"]["kind"]) == (6, "truncated")


async def test_verify_checks_only_appended_witness_lines_and_reports_a_shrunk_witness(
    store: Store, tmp_path: Path
) -> None:
    settings, setup = anchored(tmp_path)
    witness = tmp_path / "witness.jsonl"
    await seed(store)
    await witness_head(store.audit, setup)  # checkpoint 7
    await seed(store)
    await witness_head(store.audit, setup)  # checkpoint 14
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test") as c:
        async def verify() -> dict[str, Any]:
            body: dict[str, Any] = (await c.get("/v1/audit/verify", headers=AUTH)).json()
            return body

        first = await verify()
        assert first["ok"] and first["anchored"] and first["witnessed_through"] == 14
        assert app.state.witness_cache.verified == 2
        again = await verify()
        assert again["anchored"] and again["witnessed_through"] == 14 and app.state.witness_cache.verified == 2
        await seed(store)
        await witness_head(store.audit, setup)  # checkpoint 21: one line appended
        grown = await verify()
        assert grown["anchored"] and grown["witnessed_through"] == 21 and app.state.witness_cache.verified == 3

        # Cut back to its first line: what is left verifies, but an append-only file shrank.
        size = witness.stat().st_size
        witness.write_text(witness.read_text().splitlines(keepends=True)[0])
        shrank = f"the witness witness.jsonl shrank from {size} to {witness.stat().st_size} bytes"
        for _ in range(2):  # and it is still said on the next request
            cut = await verify()
            assert cut["ok"] and cut["anchored"] is False and cut["witnessed_through"] == 7
            assert [w for w in cut["unanchored"] if w.startswith(shrank)] != []
        assert app.state.witness_cache.verified == 4  # the shrunk file verified whole again, once
