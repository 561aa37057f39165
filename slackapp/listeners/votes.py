"""Casting a vote from Slack and showing its result where the click happened.

Both vote paths (an Approve button, a submitted Deny modal) end here: resolve the clicking
user to a `Voter`, call `ApprovalActions.vote`, then refresh the surface the click came
from: the prompt message is rewritten in place with `chat.update`, the App Home is
re-published, an ephemeral `/jit list` answer gets a reply through its response_url.
Refusals (not an approver, self-approval, already decided...) go to the clicker alone, as an
ephemeral message; a "no longer pending" refusal also refreshes the stale prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from broker.approvals.model import Approval, ApprovalRefused, NotPending
from broker.approvals.service import repeated_vote
from slackapp.blocks import escape, fallback_text, home_view, outcome_text, prompt_blocks
from slackapp.exceptions import SlackDeliveryError
from slackapp.identity import UNLINKED, voter_for_slack_user
from slackapp.ports import ApprovalActions

log = logging.getLogger(__name__)

Surface = Literal["message", "home", "ephemeral"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a click came from, so its answer goes back there."""

    user_id: str
    surface: Surface
    channel: str | None = None
    ts: str | None = None  # the prompt message, for chat.update
    respond: AsyncRespond | None = None  # ephemeral surfaces have only their response_url


def origin_of(body: dict[str, Any], respond: AsyncRespond | None) -> Origin:
    """The `Origin` of a block_actions payload."""
    container = body.get("container") or {}
    user_id = str((body.get("user") or {}).get("id"))
    if container.get("type") == "view":
        return Origin(user_id, "home")
    channel = container.get("channel_id") or (body.get("channel") or {}).get("id")
    if container.get("is_ephemeral"):
        return Origin(user_id, "ephemeral", channel=channel, respond=respond)
    return Origin(user_id, "message", channel=channel, ts=container.get("message_ts"))


@dataclass(frozen=True, slots=True)
class VoteDesk:
    """Everything a vote needs besides the request: the broker and how prompts look."""

    actions: ApprovalActions
    console_url: str | None = None

    async def vote(
        self, client: AsyncWebClient, origin: Origin, approval_id: str, choice: Literal["approve", "deny"], *,
        reason: str | None = None, scope: str | None = None,
    ) -> None:
        try:
            voter = await voter_for_slack_user(client, self.actions, origin.user_id)
        except SlackDeliveryError:
            await self.tell(client, origin, "Slack could not say who you are; nothing was recorded. Try again.")
            return
        if voter is None:
            await self.tell(client, origin, UNLINKED)
            return
        try:
            result = await self.actions.vote(approval_id, voter, choice, reason=reason, scope=scope)
        except ApprovalRefused as exc:
            await self.tell(client, origin, f"Not recorded: {escape(exc.message)}")
            if isinstance(exc, NotPending):
                current = await self.actions.get(approval_id)
                if current is not None:
                    await self.refresh(client, origin, current)
            return
        except LookupError:
            await self.tell(client, origin, f"Request `{escape(approval_id)}` does not exist.")
            return
        except Exception:
            # Fail closed and say so: the clicker must not believe a vote counted that did not.
            log.exception("vote on %s by slack user %s failed", approval_id, origin.user_id)
            await self.tell(client, origin, "Your vote could not be recorded (internal error); nothing changed.")
            return
        await self.refresh(client, origin, result.approval)
        repeated = repeated_vote(result, voter)
        if repeated is not None:
            await self.tell(client, origin, f"Not recorded: {escape(repeated.message)}")

    async def refresh(self, client: AsyncWebClient, origin: Origin, approval: Approval) -> None:
        try:
            if origin.surface == "message" and origin.channel and origin.ts:
                await client.chat_update(
                    channel=origin.channel, ts=origin.ts, text=fallback_text(approval),
                    blocks=prompt_blocks(approval, console_url=self.console_url),
                )
            elif origin.surface == "home":
                await self.publish_home(client, origin.user_id)
            elif origin.respond is not None:
                await origin.respond(text=outcome_text(approval), response_type="ephemeral", replace_original=False)
        except (SlackApiError, SlackDeliveryError) as exc:
            # The vote is recorded either way; a stale prompt refuses the next click and refreshes then.
            error = exc.error if isinstance(exc, SlackDeliveryError) else exc.response.get("error")
            log.warning("could not refresh the %s of approval %s: %s", origin.surface, approval.id, error)

    async def tell(self, client: AsyncWebClient, origin: Origin, text: str) -> None:
        """A message only the clicking user sees."""
        try:
            if origin.surface == "ephemeral" and origin.respond is not None:
                await origin.respond(text=text, response_type="ephemeral", replace_original=False)
            elif origin.channel:
                await client.chat_postEphemeral(channel=origin.channel, user=origin.user_id, text=text)
            else:
                # App Home has no channel to be ephemeral in: the app's DM with the user.
                await client.chat_postMessage(channel=origin.user_id, text=text)
        except SlackApiError as exc:
            log.warning("could not tell slack user %s: %s", origin.user_id, exc.response.get("error"))

    async def publish_home(self, client: AsyncWebClient, user_id: str) -> None:
        voter = await voter_for_slack_user(client, self.actions, user_id)
        if voter is None:
            view = home_view([], [], console_url=self.console_url)
            view["blocks"] = [{"type": "section", "text": {"type": "mrkdwn", "text": UNLINKED}}]
        else:
            waiting = [
                a for a in await self.actions.list_pending(approver=voter)
                if a.break_glass or not a.is_requester(voter.principal)
            ]
            mine = await self.actions.list_pending(requester=voter.principal)
            view = home_view(waiting, mine, console_url=self.console_url)
        await client.views_publish(user_id=user_id, view=view)
