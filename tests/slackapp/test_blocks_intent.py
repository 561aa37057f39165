"""A statement's prompt shows the requester's stated intent, or says none was given; the
client's application_name is labelled as the program it is, never shown as the intent."""

from __future__ import annotations

import json

from slackapp import blocks
from tests.slack_double import validate_blocks
from tests.slackapp.fakes import make_approval


def test_no_stated_intent_says_so_and_labels_application_name() -> None:
    approval = make_approval(reason=None, details={"tables": ["t"], "application_name": "psql"})
    payload = blocks.prompt_blocks(approval)
    validate_blocks(payload)
    text = json.dumps(payload)
    assert "*Intent*\\n_no reason given_" in text
    assert "*application_name* (the client program): psql" in text
    assert "*Intent*\\npsql" not in text


def test_stated_intent_is_shown_as_the_intent() -> None:
    approval = make_approval(reason="rotate ticket 12", details={"application_name": "etl"})
    text = json.dumps(blocks.prompt_blocks(approval))
    assert "*Intent*\\nrotate ticket 12" in text and "no reason given" not in text
    assert "(the client program): etl" in text
