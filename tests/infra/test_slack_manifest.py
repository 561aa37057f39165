"""infra/slack/manifest.yaml: Slack's manifest schema (see schemas/README.md) and what the
approvals app needs from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.infra.conftest import INFRA, load_yaml

SCHEMA = Path(__file__).parent / "schemas" / "slack-app-manifest.schema.json"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return load_yaml(INFRA / "slack" / "manifest.yaml")


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_manifest_matches_the_schema(manifest: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    errors = list(validator.iter_errors(manifest))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "patch",
    [
        {"settings": {"interactivity": {"request_url": "https://x/slack/events"}}},  # is_enabled missing
        {"features": {"slash_commands": [{"command": "jit", "description": "no slash"}]}},
        {"oauth_config": {"scopes": {"bot": ["chat write"]}}},
        {"display_information": {"name": "x" * 36}},
        {"settings": {"interactivty": {"is_enabled": True}}},  # misspelt key
    ],
)
def test_schema_rejects_broken_manifests(
    manifest: dict[str, Any], validator: jsonschema.Draft7Validator, patch: dict[str, Any]
) -> None:
    broken = json.loads(json.dumps(manifest))
    for section, value in patch.items():
        broken[section] = value if section == "display_information" else {**broken.get(section, {}), **value}
    assert list(validator.iter_errors(broken))


def test_manifest_has_what_the_approvals_app_uses(manifest: dict[str, Any]) -> None:
    # The bot scopes are derived from the code's Web API calls: tests/slackapp/test_manifest.py.
    settings = manifest["settings"]
    events_url = settings["event_subscriptions"]["request_url"]
    assert events_url.endswith("/slack/events") and events_url.startswith("https://")
    assert settings["interactivity"] == {"is_enabled": True, "request_url": events_url}
    assert "app_home_opened" in settings["event_subscriptions"]["bot_events"]
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/jit" and command["url"] == events_url
