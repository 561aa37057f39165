"""Fixtures for the Slack app: the Slack double, settings, the in-memory broker, the HTTP app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI

from slackapp.app import build_app
from slackapp.http import mount
from slackapp.settings import SlackSettings
from tests.slack_double import BOT_TOKEN, SlackDouble
from tests.slack_signing import SIGNING_SECRET, SlackSigner
from tests.slackapp.fakes import InMemoryApprovals

USERS = {
    "U_ALICE": "alice@example.com",  # dba: an approver
    "U_BOB": "bob@example.com",  # dba: an approver
    "U_CAROL": "carol@example.com",  # developers: not an approver
    "U_DAVE": "dave@example.com",  # dba, and the person the agent acts for
    "U_GHOST": "ghost@example.com",  # in Slack, unknown to the broker
    "U_NOMAIL": None,  # a profile without an email
}
PEOPLE = {
    "alice@example.com": ("dba",),
    "bob@example.com": ("dba", "developers"),
    "carol@example.com": ("developers",),
    "dave@example.com": ("dba",),
}


@pytest.fixture
def slack() -> Iterator[SlackDouble]:
    with SlackDouble(users=USERS) as double:
        yield double


@pytest.fixture
def settings(slack: SlackDouble) -> SlackSettings:
    return SlackSettings(
        bot_token=BOT_TOKEN, signing_secret=SIGNING_SECRET, channel="C_APPROVALS",
        escalation_channel="C_ESCALATE", api_url=slack.base_url, console_url="https://jitgate.example.com",
    )


@pytest.fixture
def approvals() -> InMemoryApprovals:
    return InMemoryApprovals(PEOPLE)


@pytest.fixture
def signer() -> SlackSigner:
    return SlackSigner(SIGNING_SECRET)


@pytest.fixture
async def http(settings: SlackSettings, approvals: InMemoryApprovals) -> AsyncIterator[httpx.AsyncClient]:
    api = FastAPI()
    mount(api, build_app(settings, approvals))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://jitgate.test") as client:
        yield client
