"""Result recording by policy: a resource with `record_results` keeps the rows each
statement returned, as the client saw them (masked), and `jitgate sessions replay` shows them."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import typer
from typer.testing import CliRunner

from broker.cli import sessions_cmd
from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from tests.conftest import require_binary
from tests.e2e.conftest import Gateway, _resource, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

APP_NAME = "jitgate-record-results-test"
SCRIPT = (
    "select id, email, phone from customers order by id limit 3;\n"
    "select id from customers order by id limit 10;\n"
    "select 1 as one, null::text as nothing;\n"
)


@pytest.fixture(scope="module")
def recording_gateway(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="jitgate-rec-") as tmp:
        extra = {
            "demo_recorded": _resource(
                upstream, demo_roles.rw_user, demo_roles.rw_password,
                record_results=True, record_results_max_rows=5,
            )
        }
        gw = start_gateway(upstream, demo_roles, Path(tmp), extra=extra)
        try:
            yield gw
        finally:
            stop_gateway(gw)


def _ended_session(gateway: Gateway, resource: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        gateway.flush()
        for s in gateway.call(gateway.store.sessions.list_sessions(limit=200)):
            if s.application_name == APP_NAME and s.resource == resource and not s.active:
                return str(s.id)
        time.sleep(0.05)
    raise AssertionError("the psql session was not recorded as ended")


def _psql(gateway: Gateway, resource: str) -> list[str]:
    out = subprocess.run(
        [require_binary("psql"), gateway.dsn(resource), "-X", "-A", "-t", "-F", "|"],
        input=SCRIPT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGSSLMODE": "disable", "PGAPPNAME": APP_NAME},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()


def _replay(gateway: Gateway, sid: str, tmp_path: Path, *args: str) -> str:
    config = tmp_path / "jitgate.yaml"
    config.write_text(f"store_url: {gateway.settings.store_url.get_secret_value()}\nresources: {{}}\n")
    app = typer.Typer()
    sessions_cmd.register(app)
    result = CliRunner().invoke(app, ["sessions", "replay", sid, *args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.stdout


def test_replay_shows_rows_as_psql_printed_them(
    recording_gateway: Gateway, upstream: Upstream, tmp_path: Path
) -> None:
    seen = _psql(recording_gateway, "demo_recorded")
    masked_rows = [line.split("|") for line in seen[:3]]
    assert all("***" in r[1] for r in masked_rows)  # psql got masked emails
    sid = _ended_session(recording_gateway, "demo_recorded")

    lines = [json.loads(x) for x in _replay(recording_gateway, sid, tmp_path, "--json").splitlines()]
    statements = [e for e in lines if e["event"] == "statement"]
    assert len(statements) == 3
    first, ten, const = (s["results"] for s in statements)
    # Exactly what psql printed, column by column: masked values, never the raw PII.
    assert first == [{"columns": ["id", "email", "phone"], "rows": masked_rows, "truncated": False}]
    # The cap (5 rows here) keeps the first rows and says the rest were cut.
    assert ten[0]["rows"] == [[line] for line in seen[3:8]] and ten[0]["truncated"] is True
    assert statements[1]["rows"] == 10
    assert const == [{"columns": ["one", "nothing"], "rows": [["1", None]], "truncated": False}]

    # The raw values, read straight from the upstream, appear nowhere in the recording.
    with psycopg.connect(upstream.dsn("demo"), connect_timeout=10) as conn:
        raw = conn.execute("select email, phone from customers order by id limit 3").fetchall()
    stored = json.dumps(lines)
    for email, phone in raw:
        assert email not in stored and phone not in stored
    text = _replay(recording_gateway, sid, tmp_path)
    for row in masked_rows:
        for value in row:
            assert value in text
    assert "result truncated" in text


def test_results_not_recorded_without_the_option(recording_gateway: Gateway, tmp_path: Path) -> None:
    _psql(recording_gateway, "demo")
    sid = _ended_session(recording_gateway, "demo")
    lines = [json.loads(x) for x in _replay(recording_gateway, sid, tmp_path, "--json").splitlines()]
    assert [e["results"] for e in lines if e["event"] == "statement"] == [None, None, None]
