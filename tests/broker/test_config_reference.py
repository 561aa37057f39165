"""docs/CONFIG.md is generated from the models and must be current."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from broker.cli.main import app
from broker.config_reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_the_committed_reference_is_current():
    assert DOC.read_text() == render(), "run: jitgate config reference > docs/CONFIG.md"


def test_reference_covers_nested_sections_and_their_descriptions():
    text = render()
    for key in ("proxy.review_wait_seconds", "resources.<name>.upstream.host", "approvals.rules[].quorum",
                "slack.signing_secret", "oidc.issuers[].audience", "access.rules[].approvers", "broker_url",
                "worker.metrics_port"):
        assert f"| `{key}` |" in text, key
    assert "| `slack.bot_token` | secret |" in text
    quorum = next(line for line in text.splitlines() if line.startswith("| `approvals.rules[].quorum`"))
    assert "`1`" in quorum and "one denial decides" in quorum


def test_cli_prints_it():
    result = CliRunner().invoke(app, ["config", "reference"])
    assert result.exit_code == 0 and result.output == render()
