"""`jitgate audit verify|export` and `jitgate sessions list|show|replay` against a real store."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from broker.audit.chain import AuditRecord, ChainVerifier
from broker.cli import audit_cmd, sessions_cmd
from broker.store import SessionStats, StatementRecord, Store

T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    audit_cmd.register(app)
    sessions_cmd.register(app)
    return app


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("JITGATE_CONFIG", "JITGATE_STORE_URL", "JITGATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "jitgate.yaml"
    path.write_text("data_dir: data\nresources: {}\n")
    return path


def db_path(config: Path) -> Path:
    return config.parent / "data" / "jitgate.db"


def seed(config: Path) -> str:
    """A session as the proxy records it: two statements (one blocked), then the end."""

    async def run() -> str:
        store = await Store.open(f"sqlite+aiosqlite:///{db_path(config)}")
        try:
            issued = await store.issue_token("agent:demo", ["ai-agents"], "demo", "readwrite", timedelta(hours=1),
                                             True)
            grant = await store.verify_token(issued.token, "demo")
            sid = await store.start_session(grant, client_addr="127.0.0.1:40000", application_name="psql",
                                            intent="look around")
            await store.record_statements([
                StatementRecord(session_id=sid, seq=1, sql="select email from customers limit 2", decision="allow",
                                started_at=datetime.now(UTC), rows=2, masked_values=2, duration_ms=1.5),
                StatementRecord(session_id=sid, seq=2, sql="drop table customers", decision="block",
                                started_at=datetime.now(UTC), rule="drop", reason="no drops",
                                error_sqlstate="42501"),
            ])
            await store.end_session(sid, reason="client terminated", stats=SessionStats(2, 10, 20))
            return sid
        finally:
            await store.close()

    return asyncio.run(run())


def invoke(app: typer.Typer, config: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*args, "--config", str(config)])


def test_verify_ok_then_broken_exits_1(app: typer.Typer, config: Path) -> None:
    seed(config)
    ok = invoke(app, config, "audit", "verify", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
    db = sqlite3.connect(db_path(config))
    db.execute("DELETE FROM audit_events WHERE seq = 3")
    db.commit()
    db.close()
    broken = invoke(app, config, "audit", "verify", "--json")
    assert broken.exit_code == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False and report["break"]["seq"] == 4 and report["break"]["kind"] == "missing"
    text = invoke(app, config, "audit", "verify")
    assert text.exit_code == 1 and "BROKEN at seq 4" in text.stdout
    assert invoke(app, config, "audit", "verify", "--to-seq", "2").exit_code == 0


def test_export_to_file_reverifies(app: typer.Typer, config: Path, tmp_path: Path) -> None:
    seed(config)
    out = tmp_path / "audit.jsonl"
    result = invoke(app, config, "audit", "export", "--format", "jsonl", "--out", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    verifier = ChainVerifier()
    for d in rows:
        assert verifier.feed(AuditRecord(d["seq"], d["id"], datetime.fromisoformat(d["ts"]), d["type"], d["actor"],
                                         d["session_id"], d["data"], d["prev_hash"], d["hash"])) is None
    assert verifier.checked == 5
    ocsf = invoke(app, config, "audit", "export", "--format", "ocsf", "--since", "1h")
    assert ocsf.exit_code == 0
    assert [json.loads(line)["class_uid"] for line in ocsf.stdout.splitlines()] == [6003, 6005, 6005, 6005, 6005]
    none = invoke(app, config, "audit", "export", "--format", "csv", "--until", "2000-01-01")
    assert none.stdout.splitlines() == ["seq,id,ts,type,actor,session_id,data,prev_hash,hash"]
    assert invoke(app, config, "audit", "export", "--format", "xml").exit_code == 2


def test_sessions_list_show_and_replay(app: typer.Typer, config: Path) -> None:
    sid = seed(config)
    listed = [json.loads(line) for line in invoke(app, config, "sessions", "list", "--json").stdout.splitlines()]
    assert [s["id"] for s in listed] == [sid] and listed[0]["application_name"] == "psql"
    shown = json.loads(invoke(app, config, "sessions", "show", sid, "--json").stdout)
    assert shown["intent"] == "look around" and len(shown["statements"]) == 2

    replay = [json.loads(line) for line in invoke(app, config, "sessions", "replay", sid, "--json").stdout.splitlines()]
    assert [e["event"] for e in replay] == ["session", "statement", "statement", "end"]
    first, second = replay[1], replay[2]
    assert (first["sql"], first["decision"], first["rows"], first["masked_values"]) == (
        "select email from customers limit 2", "allow", 2, 2)
    assert (second["decision"], second["rule"], second["error_sqlstate"]) == ("block", "drop", "42501")
    assert first["offset_ms"] >= 0

    text = invoke(app, config, "sessions", "replay", sid)
    assert text.exit_code == 0
    for expected in ("select email from customers limit 2", "drop table customers", "block", "42501",
                     "session ended: client terminated"):
        assert expected in text.stdout
    assert invoke(app, config, "sessions", "replay", "nope").exit_code == 1


def test_prune_then_verify_across_the_cut(app: typer.Typer, config: Path, tmp_path: Path) -> None:
    seed(config)
    assert invoke(app, config, "audit", "prune").exit_code == 2  # no retention configured
    future = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    result = invoke(app, config, "audit", "prune", "--older-than", future, "--archive-dir", str(tmp_path / "arch"))
    assert result.exit_code == 0, result.output
    assert "archived seq 1..5" in result.stdout
    (archive,) = (tmp_path / "arch").iterdir()
    checked = CliRunner().invoke(app, ["audit", "verify-archive", str(archive), "--json"])
    assert checked.exit_code == 0 and json.loads(checked.stdout)["checked"] == 5
    after = json.loads(invoke(app, config, "audit", "verify", "--json").stdout)
    assert after["ok"] and after["first_seq"] == 6 and after["checked"] == 1  # just the prune record


def test_keygen_checkpoint_and_signed_verify(app: typer.Typer, config: Path, tmp_path: Path) -> None:
    key = tmp_path / "keys" / "audit.pem"
    made = CliRunner().invoke(app, ["audit", "keygen", "--out", str(key)])
    assert made.exit_code == 0 and "BEGIN PUBLIC KEY" in made.stdout
    assert key.stat().st_mode & 0o077 == 0
    config.write_text(config.read_text() + f"audit: {{signing_key_file: {key}}}\n")
    seed(config)
    signed = invoke(app, config, "audit", "checkpoint")
    assert signed.exit_code == 0 and "signs seq 5" in signed.stdout
    report = json.loads(invoke(app, config, "audit", "verify", "--json").stdout)
    assert report["ok"] and report["signed_through"] == 5
    assert CliRunner().invoke(app, ["audit", "keygen", "--out", str(key)]).exit_code == 2
