"""The `jitgate sessions` / `jitgate audit` commands against a test store (both backends)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from broker.cli import audit_cmd, sessions_cmd


@pytest.fixture
def cli_config(tmp_path: Path, backend_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A config naming the test's store (import `backend_url` beside this fixture)."""
    for name in ("JITGATE_CONFIG", "JITGATE_STORE_URL", "JITGATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "jitgate.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\nstore_url: '{backend_url}'\nresources: {{}}\n")
    return path


def run_cli(config: Path, *args: str) -> Result:
    app = typer.Typer()
    sessions_cmd.register(app)
    app.add_typer(audit_cmd.audit_app, name="audit")
    return CliRunner().invoke(app, [*args, "--config", str(config)])
