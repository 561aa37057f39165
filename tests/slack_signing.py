"""Requests as Slack sends them to an app, correctly signed (or, on purpose, not).

    signer = SlackSigner(SIGNING_SECRET)
    req = signer.block_actions(user_id="U1", action_id="jitgate_approve", value=approval.id,
                               channel="C_APPROVALS", message_ts=ts, response_url=slack.response_url())
    response = await http.post("/slack/events", content=req.body, headers=req.headers)

Signature: `X-Slack-Signature: v0=hex(hmac_sha256(signing_secret, "v0:{ts}:{body}"))` with
`X-Slack-Request-Timestamp: {ts}`. Every builder takes `bad_signature=True` (a signature made
with another secret) and `timestamp=` (e.g. `time.time() - 600` for a stale one).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM = {"id": "T0JITGATE", "domain": "jitgate-test"}

_ids = itertools.count(1)


@dataclass(frozen=True)
class SignedRequest:
    body: bytes
    headers: dict[str, str]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def trigger_id() -> str:
    return f"{next(_ids)}.1111.{int(time.time())}abcdef"


class SlackSigner:
    def __init__(self, signing_secret: str = SIGNING_SECRET) -> None:
        self.signing_secret = signing_secret

    def signed(
        self, body: bytes, content_type: str, *, timestamp: float | None = None, bad_signature: bool = False,
    ) -> SignedRequest:
        ts = str(int(time.time() if timestamp is None else timestamp))
        secret = "not-the-signing-secret" if bad_signature else self.signing_secret
        return SignedRequest(body, {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(secret, ts, body),
        })

    def _interaction(self, payload: dict[str, Any], **options: Any) -> SignedRequest:
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return self.signed(body, "application/x-www-form-urlencoded", **options)

    def block_actions(
        self, *, user_id: str, action_id: str, value: str, channel: str | None = None, message_ts: str | None = None,
        response_url: str | None = None, home: bool = False, ephemeral: bool = False, block_id: str = "jitgate_actions",
        **options: Any,
    ) -> SignedRequest:
        """A button click on a message (or, with home=True, on the App Home view)."""
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": TEAM,
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM["id"]},
            "api_app_id": "AJITGATE",
            "token": "legacy-verification-token",
            "trigger_id": trigger_id(),
            "actions": [{
                "type": "button", "action_id": action_id, "block_id": block_id, "value": value,
                "text": {"type": "plain_text", "text": "Approve", "emoji": True},
                "action_ts": f"{time.time():.6f}",
            }],
        }
        if home:
            payload["container"] = {"type": "view", "view_id": "VHOME"}
            payload["view"] = {"id": "VHOME", "type": "home", "team_id": TEAM["id"], "blocks": []}
        else:
            payload["container"] = {"type": "message", "message_ts": message_ts, "channel_id": channel,
                                    "is_ephemeral": ephemeral}
            payload["channel"] = {"id": channel, "name": "approvals"}
            if not ephemeral:
                payload["message"] = {"type": "message", "ts": message_ts, "text": "approval", "blocks": []}
            if response_url:
                payload["response_url"] = response_url
        return self._interaction(payload, **options)

    def view_submission(
        self, *, user_id: str, view: dict[str, Any], values: dict[str, dict[str, Any]], **options: Any,
    ) -> SignedRequest:
        """A modal submission: `view` as the app opened it, `values` as block_id → action_id → state."""
        submitted = dict(view)
        submitted.setdefault("id", "VMODAL")
        submitted["state"] = {"values": values}
        payload = {
            "type": "view_submission",
            "team": TEAM,
            "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM["id"]},
            "api_app_id": "AJITGATE",
            "token": "legacy-verification-token",
            "trigger_id": trigger_id(),
            "view": submitted,
            "response_urls": [],
        }
        return self._interaction(payload, **options)

    def slash_command(
        self, *, user_id: str, text: str, response_url: str, command: str = "/jit", channel: str = "C_APPROVALS",
        **options: Any,
    ) -> SignedRequest:
        body = urlencode({
            "token": "legacy-verification-token", "team_id": TEAM["id"], "team_domain": TEAM["domain"],
            "channel_id": channel, "channel_name": "approvals", "user_id": user_id, "user_name": user_id.lower(),
            "command": command, "text": text, "api_app_id": "AJITGATE", "response_url": response_url,
            "trigger_id": trigger_id(),
        }).encode()
        return self.signed(body, "application/x-www-form-urlencoded", **options)

    def event(self, event: dict[str, Any], **options: Any) -> SignedRequest:
        """An Events API envelope around `event` (e.g. app_home_opened)."""
        body = json.dumps({
            "token": "legacy-verification-token", "team_id": TEAM["id"], "api_app_id": "AJITGATE",
            "event": event, "type": "event_callback", "event_id": f"Ev{next(_ids):08d}",
            "event_time": int(time.time()), "authorizations": [
                {"team_id": TEAM["id"], "user_id": "UBOTJITGATE", "is_bot": True, "is_enterprise_install": False},
            ],
        }).encode()
        return self.signed(body, "application/json", **options)

    def app_home_opened(self, *, user_id: str, **options: Any) -> SignedRequest:
        return self.event({"type": "app_home_opened", "user": user_id, "channel": "D0HOME", "tab": "home",
                           "event_ts": f"{time.time():.6f}"}, **options)

    def url_verification(self, challenge: str, **options: Any) -> SignedRequest:
        body = json.dumps({"token": "legacy-verification-token", "challenge": challenge,
                           "type": "url_verification"}).encode()
        return self.signed(body, "application/json", **options)
