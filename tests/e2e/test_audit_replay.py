"""A psql session through the real gateway, replayed from the store: what `jitgate sessions
replay` prints matches what the client saw, and the session's audit records chain."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from broker.cli import sessions_cmd
from tests.conftest import require_binary

pytestmark = pytest.mark.e2e

APP_NAME = "jitgate-replay-test"
SCRIPT = (
    "select id, email from customers order by id limit 3;\n"
    "select pg_read_file('/etc/passwd');\n"
    "select count(*) from customers;\n"
)


def _ended_session(gateway) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gateway.flush()
        for s in gateway.call(gateway.store.sessions.list_sessions(limit=200)):
            if s.application_name == APP_NAME and not s.active:
                return str(s.id)
        time.sleep(0.05)
    raise AssertionError("the psql session was not recorded as ended")


def test_replay_matches_what_psql_saw(gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = require_binary("psql")
    out = subprocess.run(
        [exe, gateway.dsn(), "-X", "-A", "-t", "-F", "|", "-v", "VERBOSITY=verbose"],
        input=SCRIPT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGSSLMODE": "disable", "PGAPPNAME": APP_NAME},
    )
    assert "42501" in out.stderr
    seen = out.stdout.strip().splitlines()
    rows, count = seen[:3], seen[3]
    assert len(rows) == 3 and all("***" in r.split("|")[1] for r in rows)  # emails reached psql masked
    sid = _ended_session(gateway)

    config = tmp_path / "jitgate.yaml"
    config.write_text(f"store_url: {gateway.settings.store_url.get_secret_value()}\nresources: {{}}\n")
    app = typer.Typer()
    sessions_cmd.register(app)
    result = CliRunner().invoke(app, ["sessions", "replay", sid, "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events] == ["session", "statement", "statement", "statement", "end"]
    assert events[0]["application_name"] == APP_NAME
    first, blocked, counted = events[1:4]
    sent = [line.rstrip(";") for line in SCRIPT.splitlines()]
    assert [s["sql"].strip().rstrip(";") for s in (first, blocked, counted)] == sent
    # What the client saw: 3 rows with 3 masked emails, a refusal with 42501, one row.
    assert (first["decision"], first["rows"], first["masked_values"]) == ("allow", 3, 3)
    assert (blocked["decision"], blocked["error_sqlstate"]) == ("block", "42501")
    assert (counted["decision"], counted["rows"]) == ("allow", 1) and count == "200"

    audit = [r for r in gateway.call(_collect(gateway.store)) if r.session_id == sid]
    assert [r.type for r in audit] == ["session.start", "statement", "statement", "statement", "session.end"]
    assert audit[0].data["application_name"] == APP_NAME
    assert gateway.call(gateway.store.audit.verify_audit()).ok


async def _collect(store):  # type: ignore[no-untyped-def]
    return [r async for r in store.audit.iter_audit()]


def test_intent_is_on_every_statement_record(gateway) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    intent = "clean up duplicate orders for ticket 812"
    with psycopg.connect(gateway.dsn(options=f"-c jitgate.intent={intent.replace(' ', chr(92) + ' ')}")) as conn:
        conn.execute("select 'intent-marker-1'")
        conn.execute("select 'intent-marker-2'")
    gateway.flush()

    async def statements() -> list[dict]:  # type: ignore[type-arg]
        return [r.data async for r in gateway.store.audit.iter_audit() if r.type == "statement"
                and "intent-marker" in str(r.data.get("sql"))]

    found = gateway.call(statements())
    assert len(found) == 2 and all(d["intent"] == intent for d in found)
