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


def _demo_file(cwd: Path, data: object, mode: int = 0o600) -> Path:
    (cwd / ".jitgate").mkdir(exist_ok=True)
    path = cwd / ".jitgate" / "demo.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


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
    _demo_file(cwd, content)
    assert _api_url(None, {}) == DEFAULT_API


@pytest.mark.parametrize(
    "url",
    ["https://attacker.example", "http://attacker.example:8080", "http://127.0.0.1.attacker.example:80",
     "http://10.0.0.5:8080", "http://127.0.0.1", "http://127.0.0.1:8080/elsewhere", "http://127.0.0.1:99999"],
)
def test_a_demo_file_pointing_anywhere_but_this_machine_is_ignored(cwd: Path, url: str) -> None:
    """The CLI sends its bearer token (an approver's, as the README exports it) to this URL: a
    demo.json planted in a cloned repository must not redirect it."""
    _demo_file(cwd, {"api_url": url})
    assert _api_url(None, {}) == DEFAULT_API


def test_a_demo_file_others_could_have_written_is_ignored(cwd: Path) -> None:
    _demo_file(cwd, {"api_url": "http://127.0.0.1:41234"}, mode=0o644)
    assert _api_url(None, {}) == DEFAULT_API
