from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from broker.cli import tokens_cmd
from broker.config import hash_api_token
from broker.durations import parse_duration
from broker.exceptions import InvalidToken
from broker.store import Store


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    tokens_cmd.register(app)

    @app.callback()
    def main() -> None:  # keeps `token` a sub-command even with one group registered
        pass

    return app


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("JITGATE_CONFIG", "JITGATE_STORE_URL", "JITGATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "jitgate.yaml"
    path.write_text(
        "data_dir: data\n"
        "resources:\n"
        "  demo:\n"
        "    upstream: {host: 127.0.0.1, dbname: demo, username: app}\n"
    )
    return path


def verify(config: Path, token: str, resource: str = "demo"):
    async def run():
        store = await Store.open(f"sqlite+aiosqlite:///{config.parent}/data/jitgate.db")
        try:
            return await store.tokens.verify_token(token, resource)
        finally:
            await store.close()

    return asyncio.run(run())


def test_issue_prints_only_the_token_on_stdout(app: typer.Typer, config: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "token", "issue", "--resource", "demo", "--role", "readwrite",
            "--principal", "agent:ci", "--group", "ai-agents", "-g", "dev",
            "--ttl", "8h", "--reusable", "--config", str(config),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("jgt_") and "\n" not in token
    assert "shown only now" in result.stderr

    grant = verify(config, token)
    assert (grant.principal, grant.groups, grant.role) == (
        "agent:ci",
        ("ai-agents", "dev"),
        "readwrite",
    )
    assert grant.reusable
    verify(config, token)  # reusable: a second session works


def test_issue_json_and_revoke(app: typer.Typer, config: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["token", "issue", "--resource", "demo", "--role", "ro", "--principal", "p",
         "--ttl", "30m", "--json", "--config", str(config)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["reusable"] is False and body["groups"] == []

    revoked = runner.invoke(app, ["token", "revoke", body["token_id"], "-c", str(config)])
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(InvalidToken) as err:
        verify(config, body["token"])
    assert err.value.reason == "revoked"

    again = runner.invoke(app, ["token", "revoke", body["token_id"], "-c", str(config)])
    assert again.exit_code == 1 and "no live token" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resource", "billing"], "unknown resource 'billing' (known: demo)"),
        (["--resource", "demo", "--ttl", "forever"], "invalid duration 'forever'"),
    ],
)
def test_issue_refuses_bad_input(
    app: typer.Typer, config: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["token", "issue", "--role", "ro", "--principal", "p", "-c", str(config), *args],
    )
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_issue_reports_config_errors(app: typer.Typer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy: {listen_port: -1}\n")
    result = CliRunner().invoke(
        app, ["token", "issue", "--resource", "demo", "--role", "r", "--principal", "p",
              "-c", str(bad)],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "proxy.listen_port: Input should be greater than or equal to 0" in result.stderr


def test_new_api_token_digest_matches(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["token", "new-api"])
    assert result.exit_code == 0
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    token = lines["token"].strip()
    digest = lines["digest"].split("#")[0].strip()
    assert token.startswith("jga_") and len(token) > 40
    assert digest == hash_api_token(token)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("8h", timedelta(hours=8)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        (" 1H ", timedelta(hours=1)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "8", "h", "1w", "0m", "-5m", "1.5h", "8 hours"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
