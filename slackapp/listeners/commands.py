"""`/jit`: list what waits for me and what I asked for, request access, help.

    /jit list                                     pending requests: mine, and those I can decide
    /jit request <resource> <role> <ttl> <reason> ask for access, e.g. /jit request demo readonly 1h debugging
    /jit help

`/jit` alone, `/jit help` and an unknown subcommand answer with the usage. `USAGE` is the one
spelling of it: the manifest's `usage_hint` (infra/slack/manifest.yaml) must equal it, and a
test holds them together.

Answers are ephemeral, through the command's response_url (it works in any channel, DMs
included, without the bot being a member).
"""

from __future__ import annotations

import logging
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient

from broker.approvals.model import ApprovalRefused
from slackapp.blocks import MESSAGE_BLOCKS_MAX, approval_list_blocks, escape
from slackapp.exceptions import SlackDeliveryError
from slackapp.identity import UNLINKED, email_for_slack_user
from slackapp.listeners.votes import VoteDesk

log = logging.getLogger(__name__)

COMMAND = "/jit"
REQUEST = "request <resource> <role> <ttl> <reason>"
SUBCOMMANDS = {
    "list": "requests waiting for your approval, and your own pending requests",
    REQUEST: "ask for access, e.g. `/jit request demo readonly 1h investigating ticket 123`",
    "help": "this message",
}
USAGE = " | ".join(SUBCOMMANDS)  # the manifest's usage_hint
# mrkdwn: `<` and `>` must be escaped even inside code spans, or Slack reads <resource> as a link.
HELP = f"*{COMMAND}* — just-in-time access. Usage: `{COMMAND} {escape(USAGE)}`\n" + "\n".join(
    f"• `{COMMAND} {escape(sub)}`: {what}" for sub, what in SUBCOMMANDS.items()
)


def register(app: AsyncApp, desk: VoteDesk) -> None:
    async def jit(ack: AsyncAck, command: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond) -> None:
        words = str(command.get("text") or "").split()
        sub = words[0].lower() if words else "help"
        if sub not in ("list", "request"):
            prefix = "" if sub == "help" else f"Unknown subcommand `{escape(sub)}`.\n\n"
            await ack(text=prefix + HELP)
            return
        if sub == "request" and len(words) < 5:
            await ack(text=f"Usage: `{COMMAND} {escape(REQUEST)}`")
            return
        await ack()
        user_id = str(command["user_id"])
        try:
            if sub == "list":
                await _list(desk, client, respond, user_id)
            else:
                resource, role, ttl = words[1:4]
                await _request(desk, client, respond, user_id, resource, role, ttl, " ".join(words[4:]))
        except SlackDeliveryError:
            await respond(text="Slack could not say who you are just now; try again.", response_type="ephemeral")

    app.command(COMMAND)(jit)


async def _list(desk: VoteDesk, client: AsyncWebClient, respond: AsyncRespond, user_id: str) -> None:
    email = await email_for_slack_user(client, user_id)
    voter = await desk.actions.voter_for_email(email) if email else None
    if voter is None:
        await respond(text=UNLINKED, response_type="ephemeral")
        return
    waiting = [
        a for a in await desk.actions.list_pending(approver=voter)
        if a.break_glass or not a.is_requester(voter.principal)
    ]
    mine = await desk.actions.list_pending(requester=voter.principal)
    blocks = approval_list_blocks(waiting, mine, max_blocks=MESSAGE_BLOCKS_MAX, console_url=desk.console_url)
    text = f"{len(waiting)} waiting for your approval, {len(mine)} of your requests pending"
    await respond(text=text, blocks=blocks, response_type="ephemeral")


async def _request(
    desk: VoteDesk, client: AsyncWebClient, respond: AsyncRespond, user_id: str,
    resource: str, role: str, ttl: str, reason: str,
) -> None:
    email = await email_for_slack_user(client, user_id)
    if email is None or await desk.actions.voter_for_email(email) is None:
        await respond(text=UNLINKED, response_type="ephemeral")
        return
    try:
        outcome = await desk.actions.request_access(email=email, resource=resource, role=role, reason=reason, ttl=ttl)
    except (ApprovalRefused, LookupError, ValueError) as exc:
        message = exc.message if isinstance(exc, ApprovalRefused) else str(exc)
        outcome = f"Request refused: {message}"
    except Exception:
        log.exception("/jit request by slack user %s failed", user_id)
        outcome = "The request could not be made (internal error); try again or use `jitgate connect`."
    await respond(text=escape(outcome), response_type="ephemeral")
