"""infra/slack/manifest.yaml asks for exactly what the code uses, derived from the code itself.

The Web API methods are found by reading the source of every package that talks to Slack
(calls like `client.chat_postMessage(...)`), so a new call shows up here without anyone
listing it; each maps to the scope Slack documents for it (the double's `METHOD_SCOPES`,
which the double also enforces). A test run with the manifest's scopes then proves the
scopes suffice (the double answers `missing_scope` otherwise), and this test proves there
is none too many.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from slack_sdk.web.async_client import AsyncWebClient

from slackapp.listeners.commands import COMMAND, USAGE
from tests.slack_double import FIELD_SCOPES, MANIFEST, METHOD_SCOPES, manifest_bot_scopes

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("slackapp", "workers", "broker")  # every package that may hold a Slack client
# Called by slack-bolt itself: auth.test when the first request arrives (single-team apps).
FRAMEWORK_METHODS = {"auth.test"}
# slack_sdk's Web API methods: chat_postMessage -> chat.postMessage.
WEB_API = {
    name: name.replace("_", ".")
    for name, member in inspect.getmembers(AsyncWebClient, inspect.iscoroutinefunction)
    if "_" in name and not name.startswith("_") and name != "api_call"
}


def _modules() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ast.parse(path.read_text(), filename=str(path))


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _reads_key(tree: ast.AST, key: str) -> bool:
    """`x["key"]` or `x.get("key")` somewhere in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == key:
            return True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == key):
            return True
    return False


def methods_called() -> dict[str, set[Path]]:
    """Web API method -> the modules that call it."""
    found: dict[str, set[Path]] = {}
    for path, tree in _modules():
        for call in _calls(tree):
            if isinstance(call.func, ast.Attribute) and call.func.attr in WEB_API:
                found.setdefault(WEB_API[call.func.attr], set()).add(path)
    return found


def registers_slash_command() -> bool:
    """`app.command("/jit")(...)` (or as a decorator) anywhere in the Slack app."""
    return any(
        isinstance(call.func, ast.Attribute) and call.func.attr == "command"
        for _, tree in _modules() for call in _calls(tree)
    )


def required_scopes() -> set[str]:
    called = methods_called()
    scopes = {METHOD_SCOPES[m] for m in set(called) | FRAMEWORK_METHODS} - {None}
    trees = {path: tree for path, tree in _modules()}
    for (method, field), scope in FIELD_SCOPES.items():
        if any(_reads_key(trees[path], field) for path in called.get(method, ())):
            scopes.add(scope)
    if registers_slash_command():
        scopes.add("commands")
    return {s for s in scopes if s is not None}


def manifest() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MANIFEST.read_text())
    return loaded


def test_the_scan_finds_the_calls_the_code_makes() -> None:
    called = methods_called()
    # A sanity check of the scanner itself: these calls are known to exist.
    assert {"chat.postMessage", "chat.update", "users.info", "views.publish", "views.open"} <= set(called)
    assert ROOT / "slackapp" / "identity.py" in called["users.info"]
    assert "conversations.history" not in called  # prompts are found in the store, not the channel
    unknown = set(called) - set(METHOD_SCOPES)
    assert not unknown, f"add Slack's documented scope for {unknown} to tests/slack_double.py METHOD_SCOPES"


def test_manifest_grants_exactly_the_scopes_of_the_methods_the_code_calls() -> None:
    granted = set(manifest_bot_scopes())
    assert granted == required_scopes(), (
        f"manifest asks for {sorted(granted - required_scopes())} that nothing uses, "
        f"and lacks {sorted(required_scopes() - granted)}"
    )
    assert required_scopes() == {"chat:write", "commands", "users:read", "users:read.email"}


def test_the_slash_command_usage_hint_is_the_parsers_usage() -> None:
    (command,) = manifest()["features"]["slash_commands"]
    assert command["command"] == COMMAND
    assert command["usage_hint"] == USAGE
