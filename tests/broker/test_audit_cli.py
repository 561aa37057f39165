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
from broker.store import SessionStart, SessionStats, StatementRecord, Store

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
            issued = await store.tokens.issue_token("agent:demo", ["ai-agents"], "demo", "readwrite",
                timedelta(hours=1),
                                             True)
            grant = await store.tokens.verify_token(issued.token, "demo")
            sid = await store.sessions.start_session(
                SessionStart(grant, client_addr="127.0.0.1:40000", application_name="psql", intent="look around")
            )
            await store.sessions.record_statements([
                StatementRecord(session_id=sid, seq=1, sql="select email from customers limit 2", decision="allow",
                                started_at=datetime.now(UTC), rows=2, masked_values=2, duration_ms=1.5),
                StatementRecord(session_id=sid, seq=2, sql="drop table customers", decision="block",
                                started_at=datetime.now(UTC), rule="drop", reason="no drops",
                                error_sqlstate="42501"),
            ])
            await store.sessions.end_session(sid, reason="client terminated", stats=SessionStats(2, 10, 20))
            return sid
        finally:
            await store.close()

    return asyncio.run(run())


def invoke(app: typer.Typer, config: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*args, "--config", str(config)])


def test_verify_ok_then_broken_exits_1(app: typer.Typer, config: Path) -> None:
    seed(config)
    # No key and no witness: the chain holds, but nothing outside the store vouches for it.
    loud = invoke(app, config, "audit", "verify", "--json")
    assert loud.exit_code == 3, loud.output
    assert json.loads(loud.stdout)["anchored"] is False
    assert "NOT ANCHORED: no public key" in loud.stderr and "NOT ANCHORED: no witness" in loud.stderr
    ok = invoke(app, config, "audit", "verify", "--json", "--allow-unanchored")
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
    assert invoke(app, config, "audit", "verify", "--to-seq", "2", "--allow-unanchored").exit_code == 0


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
    assert "NOT ANCHORED: no witness configured" in result.stderr
    after = json.loads(invoke(app, config, "audit", "verify", "--json", "--allow-unanchored").stdout)
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
    unwitnessed = invoke(app, config, "audit", "verify", "--json")
    assert unwitnessed.exit_code == 3  # signed, but no witness
    report = json.loads(unwitnessed.stdout)
    assert report["ok"] and report["signed_through"] == 5 and report["unanchored"][0].startswith("no witness")
    assert CliRunner().invoke(app, ["audit", "keygen", "--out", str(key)]).exit_code == 2


def anchored_config(app: typer.Typer, config: Path, tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "keys" / "audit.pem"
    public = tmp_path / "keys" / "audit.pub"
    made = CliRunner().invoke(app, ["audit", "keygen", "--out", str(key)])
    public.write_text(made.stdout)
    witness = tmp_path / "worm" / "witness.jsonl"
    config.write_text(config.read_text() + f"audit: {{signing_key_file: {key}, witness: {{file: {witness}}}}}\n")
    return public, witness


def test_witnessed_verify_is_anchored_and_names_a_cut_tail(app: typer.Typer, config: Path, tmp_path: Path) -> None:
    public, witness = anchored_config(app, config, tmp_path)
    sid = seed(config)
    signed = invoke(app, config, "audit", "checkpoint")
    assert signed.exit_code == 0 and "checkpoint seq 6" in signed.stdout and "'file': 'written'" in signed.stdout
    ok = invoke(app, config, "audit", "verify", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout) | {"last_hash": None} == json.loads(ok.stdout) | {
        "ok": True, "anchored": True, "unanchored": [], "witnessed_through": 6, "signed_through": 5, "last_hash": None}
    # An auditor with the public key and a copy of the witness only.
    copy = tmp_path / "auditor-copy.jsonl"
    copy.write_text(witness.read_text())
    config.write_text("data_dir: data\nresources: {}\n")
    assert invoke(app, config, "audit", "verify", "--witness", str(copy), "--key", str(public)).exit_code == 0
    assert invoke(app, config, "audit", "verify", "--witness", str(copy)).exit_code == 2  # no key to check it
    # Cut the tail (with the head rewritten to match) and the witness names where.
    db = sqlite3.connect(db_path(config))
    head = db.execute("SELECT hash FROM audit_events WHERE seq = 4").fetchone()[0]
    db.execute("DELETE FROM audit_events WHERE seq > 4")
    db.execute("UPDATE audit_state SET head_seq = 4, head_hash = ?", (head,))
    db.commit()
    db.close()
    alone = invoke(app, config, "audit", "verify", "--allow-unanchored", "--json")  # the store alone
    # The chain holds; only the session sweep sees that the ended session lost its session.end.
    assert json.loads(alone.stdout)["ok"] is True and alone.exit_code == 1
    assert json.loads(alone.stdout)["sessions"]["problems"] == [f"session {sid}: ended_at"]
    cut = invoke(app, config, "audit", "verify", "--witness", str(copy), "--key", str(public))
    assert cut.exit_code == 1 and "BROKEN at seq 5: truncated" in cut.stdout and "witness signed seq 6" in cut.stdout
    # A forged witness line is refused outright.
    forged = json.loads(copy.read_text().splitlines()[0]) | {"seq": 4}
    copy.write_text(json.dumps(forged) + "\n")
    bad = invoke(app, config, "audit", "verify", "--witness", str(copy), "--key", str(public))
    assert bad.exit_code == 1 and "signature is not valid" in bad.stderr


def test_witnessed_prune_and_archives_chained_to_the_store(app: typer.Typer, config: Path, tmp_path: Path) -> None:
    _, witness = anchored_config(app, config, tmp_path)
    seed(config)
    future = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    arch = tmp_path / "arch"
    first = invoke(app, config, "audit", "prune", "--older-than", future, "--archive-dir", str(arch))
    assert first.exit_code == 0, first.output
    kinds = [json.loads(line)["kind"] for line in witness.read_text().splitlines()]
    assert kinds == ["prune", "checkpoint"]
    seed(config)
    future = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    assert invoke(app, config, "audit", "prune", "--older-than", future, "--archive-dir", str(arch)).exit_code == 0
    archives = sorted(str(p) for p in arch.iterdir())
    assert len(archives) == 2
    verified = invoke(app, config, "audit", "verify-archive", *archives, "--witness", str(witness), "--store")
    assert verified.exit_code == 0, verified.output
    assert invoke(app, config, "audit", "verify").exit_code == 0
    # The first archive alone does not reach the store's anchor; the second alone does not
    # follow the genesis chain... but is still witnessed.
    assert invoke(app, config, "audit", "verify-archive", archives[0], "--store").exit_code == 1
    assert invoke(app, config, "audit", "verify-archive", archives[1], "--witness", str(witness)).exit_code == 0
    # A prune not in the witness (an archive of someone else's making) is refused.
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(witness.read_text().splitlines()[1:]) + "\n")
    stray = invoke(app, config, "audit", "verify-archive", archives[0], "--witness", str(other))
    assert stray.exit_code == 1 and "no witnessed prune matches" in stray.stderr


def test_range_verify_names_a_cut_tail_and_the_unwitnessed_tail_is_bounded(
    app: typer.Typer, config: Path, tmp_path: Path
) -> None:
    public, witness = anchored_config(app, config, tmp_path)
    seed(config)  # seq 1..5
    assert invoke(app, config, "audit", "checkpoint").exit_code == 0  # seq 6, witnessed
    seed(config)  # seq 7..11
    assert invoke(app, config, "audit", "checkpoint").exit_code == 0  # seq 12, witnessed
    seed(config)  # seq 13..17: not witnessed yet
    ok = invoke(app, config, "audit", "verify")
    assert ok.exit_code == 0, ok.output
    assert "unwitnessed: seq 13..17" in ok.stdout and "last witness entry 20" in ok.stdout
    ranged = invoke(app, config, "audit", "verify", "--from-seq", "3", "--to-seq", "11")
    assert ranged.exit_code == 0 and "the link into seq 3 is trusted" in ranged.stdout
    # The unwitnessed tail past a limit is a break naming its first record.
    over = invoke(app, config, "audit", "verify", "--max-unwitnessed", "4", "--json")
    assert over.exit_code == 1, over.output
    b = json.loads(over.stdout)["break"]
    assert (b["seq"], b["kind"]) == (13, "unwitnessed_tail") and b["id"]
    assert invoke(app, config, "audit", "verify", "--max-unwitnessed", "5", "--max-witness-age", "1h").exit_code == 0
    assert invoke(app, config, "audit", "verify", "--max-witness-age", "soon").exit_code == 2
    # Seq 5..17 deleted and the head set back to 4: ranges holding witnessed seq 6 no longer pass.
    db = sqlite3.connect(db_path(config))
    fourth = db.execute("SELECT hash FROM audit_events WHERE seq = 4").fetchone()[0]
    db.execute("DELETE FROM audit_events WHERE seq > 4")
    db.execute("UPDATE audit_state SET head_seq = 4, head_hash = ?", (fourth,))
    db.commit()
    db.close()
    cut = invoke(app, config, "audit", "verify", "--witness", str(witness), "--key", str(public), "--to-seq", "11")
    assert cut.exit_code == 1 and "BROKEN at seq 5: truncated" in cut.stdout, cut.output
    wide = invoke(app, config, "audit", "verify", "--from-seq", "1", "--to-seq", "100", "--json")
    assert wide.exit_code == 1 and json.loads(wide.stdout)["break"]["seq"] == 5
