"""A witnessed prune that was signed but never applied is finished at its own cut by the next
prune, so the witness never holds two prunes from one start and `jitgate audit verify`
passes again. Real SQLite store, real `jitgate audit prune` (in a process that is killed
mid-prune, and in-process), the worker's witness state directory, the verify CLI's exit code.
A file put under an unfinished prune's name (junk, or a valid archive no witness signed) moves
no recent record out of the store."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner, Result

from broker.audit import events
from broker.audit.archive import write_archive
from broker.audit.chain import GENESIS_HASH
from broker.audit.signing import new_private_key
from broker.cli import audit_cmd
from broker.store import Store
from tests.processes import start


class Hook(ThreadingHTTPServer):
    """The webhook witness. While `kill` holds a pid, a prune entry SIGKILLs that process group
    instead of being answered: the pruner dies after the file witness took the entry and before
    anything is deleted."""

    kill: int | None = None
    lines: list[dict[str, Any]]


class HookHandler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        entry = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if entry["kind"] == "prune" and self.server.kill is not None:
            os.killpg(self.server.kill, signal.SIGKILL)
            self.server.kill = None
            return  # no answer: the client is gone
        self.server.lines.append(entry)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook(("127.0.0.1", 0), HookHandler)
    server.lines = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("JITGATE_CONFIG", "JITGATE_STORE_URL", "JITGATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    new_private_key(tmp_path / "audit.pem")
    path = tmp_path / "jitgate.yaml"
    write_config(path, {"file": str(tmp_path / "worm" / "witness.jsonl")})
    return path


def write_config(path: Path, witness: dict[str, Any]) -> None:
    tmp = path.parent
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp / "data"),
        "store_url": store_url(tmp),
        "resources": {},
        "audit": {"signing_key_file": str(tmp / "audit.pem"), "archive_dir": str(tmp / "arch"), "witness": witness},
    }))


def store_url(tmp: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp}/jitgate.db"


def append(tmp: Path, n: int) -> None:
    async def run() -> None:
        store = await Store.open(store_url(tmp))
        try:
            await store.audit.append_audit(*(events.config_changed(actor="ops", what=f"k{i}") for i in range(n)))
        finally:
            await store.close()

    asyncio.run(run())


def cli(config: Path, *args: str) -> Result:
    app = typer.Typer()
    audit_cmd.register(app)
    return CliRunner().invoke(app, ["audit", *args, "--config", str(config)])


def soon() -> str:
    return (datetime.now(UTC) + timedelta(seconds=5)).isoformat()


def prunes(tmp: Path) -> list[dict[str, Any]]:
    lines = (tmp / "worm" / "witness.jsonl").read_text().splitlines()
    return [e["archive"] for e in map(json.loads, lines) if e["kind"] == "prune"]


def anchor(tmp: Path) -> int:
    db = sqlite3.connect(tmp / "jitgate.db")
    try:
        return int(db.execute("SELECT anchor_seq FROM audit_state").fetchone()[0])
    finally:
        db.close()


def verify_exit(config: Path) -> int:
    result = cli(config, "verify", "--json")
    assert result.exit_code != 0 or json.loads(result.stdout)["anchored"], result.output
    return result.exit_code


def test_a_prune_whose_deletion_failed_is_finished_at_its_cut(config: Path, tmp_path: Path) -> None:
    append(tmp_path, 3)
    assert cli(config, "checkpoint").exit_code == 0  # seq 4
    db = sqlite3.connect(tmp_path / "jitgate.db")
    db.execute("CREATE TRIGGER refuse BEFORE DELETE ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    failed = cli(config, "prune", "--older-than", soon())
    assert failed.exit_code == 2 and "store error: prune audit" in failed.output
    # Signed and witnessed, not applied: the chain still verifies from the genesis.
    (signed,) = prunes(tmp_path)
    assert (signed["from_seq"], signed["through_seq"], anchor(tmp_path)) == (1, 4, 0)
    assert (tmp_path / "arch" / signed["name"]).exists()
    assert verify_exit(config) == 0
    db.execute("DROP TRIGGER refuse")
    db.commit()
    db.close()

    append(tmp_path, 2)  # seq 5..6: the next prune would naturally cut past 4
    done = cli(config, "prune", "--older-than", soon())
    assert done.exit_code == 0, done.output
    first, again, new = prunes(tmp_path)
    assert first == signed and again == signed  # the same cut, signed again: one prune in the witness
    assert (new["from_seq"], new["prev_hash"]) == (5, signed["through_hash"])
    assert anchor(tmp_path) == new["through_seq"]
    assert verify_exit(config) == 0
    archives = sorted(str(p) for p in (tmp_path / "arch").iterdir())
    assert len(archives) == 2
    witness = str(tmp_path / "worm" / "witness.jsonl")
    assert cli(config, "verify-archive", *archives, "--witness", witness, "--store").exit_code == 0

    # Nothing pending any more, nothing old enough: a repeat changes nothing.
    before = (tmp_path / "worm" / "witness.jsonl").read_text()
    assert cli(config, "prune", "--older-than", (datetime.now(UTC) - timedelta(days=1)).isoformat()).exit_code == 0
    assert prunes(tmp_path) == [first, again, new]
    assert (tmp_path / "worm" / "witness.jsonl").read_text() == before
    assert verify_exit(config) == 0


def test_a_pruner_killed_after_signing_is_finished_by_the_next_prune(
    config: Path, tmp_path: Path, hook: Hook
) -> None:
    url = f"http://127.0.0.1:{hook.server_address[1]}/"
    write_config(config, {"file": str(tmp_path / "worm" / "witness.jsonl"), "webhook_url": url})
    append(tmp_path, 3)
    log = tmp_path / "prune.log"
    proc = start(["audit", "prune", "--older-than", soon(), "--config", str(config)], log=log)
    hook.kill = proc.pid
    assert proc.wait(60) == -signal.SIGKILL, log.read_text()
    (signed,) = prunes(tmp_path)  # the file witness took it before the webhook's turn
    assert (signed["from_seq"], signed["through_seq"], anchor(tmp_path)) == (1, 3, 0)
    assert hook.lines == []
    assert verify_exit(config) == 0

    append(tmp_path, 4)
    assert cli(config, "checkpoint").exit_code == 0  # the worker's tick in between
    done = cli(config, "prune", "--older-than", soon())
    assert done.exit_code == 0, done.output
    first, again, new = prunes(tmp_path)
    assert first == again == signed
    assert (new["from_seq"], new["prev_hash"]) == (4, signed["through_hash"])
    # The webhook, down for the first signing, holds the same two prunes.
    assert [e["archive"] for e in hook.lines if e["kind"] == "prune"] == [again, new]
    assert verify_exit(config) == 0
    assert verify_exit(config) == 0  # and stays so


def test_a_normal_prune_signs_once(config: Path, tmp_path: Path) -> None:
    append(tmp_path, 3)
    done = cli(config, "prune", "--older-than", soon())
    assert done.exit_code == 0, done.output
    (only,) = prunes(tmp_path)
    assert (only["from_seq"], only["through_seq"]) == (1, 3) and anchor(tmp_path) == 3
    assert verify_exit(config) == 0
    append(tmp_path, 2)
    assert cli(config, "prune", "--older-than", soon()).exit_code == 0
    first, second = prunes(tmp_path)
    assert first == only and (second["from_seq"], second["prev_hash"]) == (4, only["through_hash"])
    assert verify_exit(config) == 0


def year_ago() -> str:
    return (datetime.now(UTC) - timedelta(days=365)).isoformat()


def live_seqs(tmp: Path) -> list[int]:
    db = sqlite3.connect(tmp / "jitgate.db")
    try:
        return [int(r[0]) for r in db.execute("SELECT seq FROM audit_events ORDER BY seq")]
    finally:
        db.close()


def test_a_junk_file_named_as_an_unfinished_prune_moves_no_recent_record(config: Path, tmp_path: Path) -> None:
    # Anyone who can write the archive dir: five recent records, a year's retention.
    append(tmp_path, 5)
    assert cli(config, "checkpoint").exit_code == 0  # seq 6
    junk = tmp_path / "arch" / "audit-000000000001-000000000005.jsonl.gz"
    junk.parent.mkdir()
    junk.write_bytes(b"junk")
    refused = cli(config, "prune", "--older-than", year_ago())
    assert refused.exit_code != 0
    assert junk.name in refused.output and "not a whole archive" in refused.output
    assert "nothing deleted" in refused.output and "move it out" in refused.output
    assert (live_seqs(tmp_path), anchor(tmp_path)) == ([1, 2, 3, 4, 5, 6], 0)
    assert junk.read_bytes() == b"junk" and prunes(tmp_path) == []
    assert verify_exit(config) == 0


def test_an_unsigned_archive_of_recent_records_is_refused(config: Path, tmp_path: Path) -> None:
    # A whole, matching archive (anyone who can read the store can write one), never signed.
    append(tmp_path, 5)
    assert cli(config, "checkpoint").exit_code == 0  # seq 6
    path = tmp_path / "arch" / "audit-000000000001-000000000005.jsonl.gz"
    path.parent.mkdir()

    async def forge() -> None:
        store = await Store.open(store_url(tmp_path))
        try:
            await write_archive(path, store.audit.iter_audit(to_seq=5), prev_seq=0, prev_hash=GENESIS_HASH)
        finally:
            await store.close()

    asyncio.run(forge())
    refused = cli(config, "prune", "--older-than", year_ago())
    assert refused.exit_code != 0 and "no witness holds a signed prune entry" in refused.output, refused.output
    assert (live_seqs(tmp_path), anchor(tmp_path), prunes(tmp_path)) == ([1, 2, 3, 4, 5, 6], 0, [])
    assert verify_exit(config) == 0


def test_a_witnessed_unfinished_prune_is_finished_whatever_the_cutoff(config: Path, tmp_path: Path) -> None:
    # The witness's signed entry is what lets a prune finish a cut its own cutoff would not make.
    append(tmp_path, 3)
    db = sqlite3.connect(tmp_path / "jitgate.db")
    db.execute("CREATE TRIGGER refuse BEFORE DELETE ON audit_events BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db.commit()
    assert cli(config, "prune", "--older-than", soon()).exit_code == 2
    db.execute("DROP TRIGGER refuse")
    db.commit()
    db.close()
    (signed,) = prunes(tmp_path)
    done = cli(config, "prune", "--older-than", year_ago())
    assert done.exit_code == 0, done.output
    assert prunes(tmp_path) == [signed, signed] and anchor(tmp_path) == signed["through_seq"] == 3
    assert verify_exit(config) == 0
