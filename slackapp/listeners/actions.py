"""The prompt's buttons: Approve, Approve for this session, Deny (which opens a modal)."""

from __future__ import annotations

from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from broker.approvals.model import Scope
from slackapp.blocks import ACTION_APPROVE, ACTION_APPROVE_SESSION, ACTION_DENY, deny_modal
from slackapp.listeners.votes import VoteDesk, origin_of


def register(app: AsyncApp, desk: VoteDesk) -> None:
    async def approve(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond) -> None:
        await ack()
        await desk.vote(client, origin_of(body, respond), _value(body), "approve")

    async def approve_session(
        ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond,
    ) -> None:
        await ack()
        await desk.vote(client, origin_of(body, respond), _value(body), "approve", scope=Scope.SESSION.value)

    async def deny(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond) -> None:
        await ack()
        origin = origin_of(body, respond)
        # The trigger_id is valid for 3 s: open the modal first, before any other call.
        await client.views_open(
            trigger_id=body["trigger_id"],
            view=deny_modal(_value(body), surface=origin.surface, channel=origin.channel, ts=origin.ts),
        )

    app.action(ACTION_APPROVE)(approve)
    app.action(ACTION_APPROVE_SESSION)(approve_session)
    app.action(ACTION_DENY)(deny)


def _value(body: dict[str, Any]) -> str:
    return str(body["actions"][0]["value"])
