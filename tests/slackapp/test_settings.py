from __future__ import annotations

import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from slackapp.app import build_app
from slackapp.client import SlackPoster
from slackapp.http import mount
from slackapp.settings import SlackSettings
from tests.slackapp.fakes import InMemoryApprovals, InMemoryLedger


def test_tokens_never_show() -> None:
    settings = SlackSettings(bot_token="xoxb-secret-1", signing_secret="sig-secret", app_token="xapp-secret-2",
                             channel="C1", api_url="https://slack-gov.com/api", console_url="https://c.example/")
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "xoxb-secret-1" not in shown and "sig-secret" not in shown and "xapp-secret-2" not in shown
    assert settings.api_url == "https://slack-gov.com/api/" and settings.console_url == "https://c.example"


def test_token_kinds_are_checked() -> None:
    with pytest.raises(ValidationError, match="bot token"):
        SlackSettings(bot_token="xapp-1", signing_secret="s", channel="C1")
    with pytest.raises(ValidationError, match="app-level token"):
        SlackSettings(bot_token="xoxb-1", signing_secret="s", channel="C1", app_token="xoxb-2")
    with pytest.raises(ValidationError):
        SlackSettings(bot_token="xoxb-1", signing_secret="s", channel="C1", unknown=1)


def test_build_app_and_mount() -> None:
    settings = SlackSettings(bot_token="xoxb-1", signing_secret="s", channel="C1", api_url="http://127.0.0.1:9/api/")
    bolt = build_app(settings, InMemoryApprovals({}))
    assert bolt.client.base_url == "http://127.0.0.1:9/api/"
    api = FastAPI()
    mount(api, bolt)
    assert any(getattr(r, "path", None) == "/slack/events" for r in api.routes)
    assert "/slack/events" not in api.openapi()["paths"]


def test_the_brokers_own_slack_section_works_too() -> None:
    # broker/ imports nothing from slackapp, so it keeps its own copy of the section.
    from broker.approvals.settings import SlackSettings as BrokerSlackSettings

    settings = BrokerSlackSettings(bot_token="xoxb-1", signing_secret="s", channel="C1",
                                   api_url="https://slack-gov.com/api", console_url="https://c.example/")
    bolt = build_app(settings, InMemoryApprovals({}))
    assert bolt.client.base_url == "https://slack-gov.com/api/"
    assert SlackPoster.from_settings(settings, ledger=InMemoryLedger()).console_url == "https://c.example"
