"""The double refuses what Slack refuses; a sync test, to show it works outside an event loop too."""

from __future__ import annotations

import json

import httpx

from tests.slack_double import APP_TOKEN, BOT_TOKEN, METHOD_SCOPES, SlackDouble, manifest_bot_scopes

AUTH = {"Authorization": f"Bearer {BOT_TOKEN}"}
BUTTON = {"type": "button", "action_id": "a", "text": {"type": "plain_text", "text": "Go"}, "value": "1"}


def call(slack: SlackDouble, method: str, headers: dict[str, str] | None = None, **args: object) -> dict:
    response = httpx.post(slack.base_url + method, json=args, headers=AUTH if headers is None else headers)
    return response.json()


def test_auth_and_required_arguments() -> None:
    with SlackDouble(users={"U1": "u1@example.com"}) as slack:
        assert call(slack, "auth.test", headers={})["error"] == "not_authed"
        assert call(slack, "auth.test", headers={"Authorization": "Bearer xoxb-other"})["error"] == "invalid_auth"
        assert call(slack, "auth.test")["ok"] is True
        assert call(slack, "chat.update", channel="C_APPROVALS")["error"] == "missing_argument:ts"
        assert call(slack, "chat.postMessage", channel="C_APPROVALS")["error"] == "no_text"
        assert call(slack, "chat.postMessage", channel="C_NOWHERE", text="x")["error"] == "channel_not_found"
        assert call(slack, "users.info", user="U2")["error"] == "user_not_found"
        assert call(slack, "users.info", user="U1")["user"]["profile"]["email"] == "u1@example.com"
        assert [c.method for c in slack.calls][:2] == ["auth.test", "auth.test"]


def test_block_kit_is_checked() -> None:
    with SlackDouble() as slack:
        def post(blocks: object) -> dict:
            return call(slack, "chat.postMessage", channel="C_APPROVALS", text="t", blocks=blocks)

        assert post([{"type": "actions", "elements": [BUTTON]}])["ok"] is True
        assert post([{"type": "actions", "elements": [BUTTON, BUTTON]}])["error"] == "invalid_blocks"
        assert post([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}])["error"] == "invalid_blocks"
        assert post([{"type": "header", "text": {"type": "mrkdwn", "text": "x"}}])["error"] == "invalid_blocks"
        assert post([{"type": "divider"}] * 51)["error"] == "invalid_blocks"
        assert post([{"type": "carousel"}])["error"] == "invalid_blocks"
        no_text = {k: v for k, v in BUTTON.items() if k != "text"}
        assert post([{"type": "actions", "elements": [no_text]}])["error"] == "invalid_blocks"
        twice = [{"type": "divider", "block_id": "b"}, {"type": "divider", "block_id": "b"}]
        assert post(twice)["error"] == "invalid_blocks"


def test_form_bodies_metadata_and_failures() -> None:
    with SlackDouble(scopes=("chat:write", "channels:history")) as slack:
        form = {"channel": "C_APPROVALS", "text": "hi", "blocks": json.dumps([{"type": "divider"}]),
                "metadata": json.dumps({"event_type": "e", "event_payload": {"k": "v"}})}
        posted = httpx.post(slack.base_url + "chat.postMessage", data=form, headers=AUTH).json()
        assert posted["ok"] is True and "metadata" in posted["message"]
        plain = httpx.get(slack.base_url + "conversations.history", params={"channel": "C_APPROVALS"},
                          headers=AUTH).json()
        assert "metadata" not in plain["messages"][0]
        full = httpx.get(slack.base_url + "conversations.history",
                         params={"channel": "C_APPROVALS", "include_all_metadata": "true"}, headers=AUTH).json()
        assert full["messages"][0]["metadata"] == {"event_type": "e", "event_payload": {"k": "v"}}

        slack.fail_next("auth.test", status=429, retry_after=7, times=2)
        for _ in range(2):
            limited = httpx.post(slack.base_url + "auth.test", headers=AUTH)
            assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
        slack.fail_next("auth.test", status=500)
        assert httpx.post(slack.base_url + "auth.test", headers=AUTH).status_code == 500
        assert httpx.post(slack.base_url + "auth.test", headers=AUTH).status_code == 200
        assert slack.count("auth.test") == 4


def test_scopes_are_enforced_as_slack_does() -> None:
    with SlackDouble(users={"U1": "u1@example.com"}, scopes=("commands", "users:read")) as slack:
        refused = call(slack, "chat.postMessage", channel="C_APPROVALS", text="x")
        assert refused == {"ok": False, "error": "missing_scope", "needed": "chat:write",
                           "provided": "commands,users:read"}
        assert call(slack, "conversations.history", channel="C_APPROVALS")["needed"] == "channels:history"
        assert slack.messages("C_APPROVALS") == []
        # users.info answers with users:read, but the email only comes with users:read.email.
        assert "email" not in call(slack, "users.info", user="U1")["user"]["profile"]
        assert call(slack, "auth.test")["ok"] is True and call(slack, "views.publish", user_id="U1", view={
            "type": "home", "blocks": []})["ok"] is True  # no scope beyond the bot token's
        app = {"Authorization": f"Bearer {APP_TOKEN}"}
        assert call(slack, "apps.connections.open", headers=app)["ok"] is True  # connections:write
    with SlackDouble(users={"U1": "u1@example.com"}) as slack:
        assert slack.scopes == frozenset(manifest_bot_scopes())
        assert call(slack, "users.info", user="U1")["user"]["profile"]["email"] == "u1@example.com"


def test_every_method_the_double_serves_has_its_documented_scope() -> None:
    served = {name[len("_api_"):].replace("_", ".") for name in dir(SlackDouble) if name.startswith("_api_")}
    assert served == set(METHOD_SCOPES)
