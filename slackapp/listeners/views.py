"""The Deny modal's submission: a required reason, then the deny vote."""

from __future__ import annotations

import json
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from slackapp.blocks import DENY_MODAL, DENY_REASON_ACTION, DENY_REASON_BLOCK
from slackapp.listeners.votes import Origin, Surface, VoteDesk


def register(app: AsyncApp, desk: VoteDesk) -> None:
    async def deny_submitted(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any], client: AsyncWebClient) -> None:
        values = view.get("state", {}).get("values", {})
        reason = str((values.get(DENY_REASON_BLOCK, {}).get(DENY_REASON_ACTION) or {}).get("value") or "").strip()
        if not reason:
            # Validation errors travel in the ack: the modal stays open with the message under the input.
            await ack(response_action="errors", errors={DENY_REASON_BLOCK: "A denial needs a reason."})
            return
        await ack()
        meta = json.loads(view.get("private_metadata") or "{}")
        surfaces: dict[str, Surface] = {"message": "message", "home": "home", "ephemeral": "ephemeral"}
        surface = surfaces.get(str(meta.get("surface")), "message")
        origin = Origin(str(body["user"]["id"]), surface, channel=meta.get("channel"), ts=meta.get("ts"))
        if origin.surface == "ephemeral":
            # An ephemeral list's response_url is not carried through the modal: answer by ephemeral message.
            origin = Origin(origin.user_id, "message", channel=origin.channel)
        await desk.vote(client, origin, str(meta["approval_id"]), "deny", reason=reason)

    app.view(DENY_MODAL)(deny_submitted)
