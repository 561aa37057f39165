"""Which broker API the requester CLI talks to: --api, $JITGATE_API_URL, the login's, the running
demo's (`.jitgate/demo.json` in the working directory), else the local default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli.identity_cmd import DEFAULT_API, _api_url


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JITGATE_API_URL", raising=False)
    return tmp_path


def _demo_file(cwd: Path, data: object) -> None:
    (cwd / ".jitgate").mkdir()
    (cwd / ".jitgate" / "demo.json").write_text(json.dumps(data))


def test_the_running_demos_api_is_the_default(cwd: Path) -> None:
    assert _api_url(None, {}) == DEFAULT_API
    _demo_file(cwd, {"api_url": "http://127.0.0.1:41234", "approver_token": "x"})
    assert _api_url(None, {}) == "http://127.0.0.1:41234"


def test_explicit_choices_beat_the_demo_file(cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _demo_file(cwd, {"api_url": "http://127.0.0.1:41234"})
    assert _api_url(None, {"api": "https://login.example/"}) == "https://login.example"
    monkeypatch.setenv("JITGATE_API_URL", "http://env.example:9000/")
    assert _api_url(None, {"api": "https://login.example"}) == "http://env.example:9000"
    assert _api_url("http://flag.example", {}) == "http://flag.example"


@pytest.mark.parametrize("content", ["not json", "[]", '{"api_url": 5}', '{"api_url": "file:///etc/passwd"}'])
def test_an_unusable_demo_file_is_ignored(cwd: Path, content: str) -> None:
    (cwd / ".jitgate").mkdir()
    (cwd / ".jitgate" / "demo.json").write_text(content)
    assert _api_url(None, {}) == DEFAULT_API
