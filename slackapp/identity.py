"""Who clicked: a Slack user id → the broker's `Voter`, through the verified profile email.

Slack signs the request, so the user id is Slack's word; `users.info` (scope
`users:read.email`) gives that user's email, and the broker's directory
(`ApprovalActions.voter_for_email`) gives the person and their last known OIDC groups. A
Slack user the broker does not know, a bot, or a profile without an email maps to None: no
vote, no request, whatever the Slack display name claims.
"""

from __future__ import annotations

from dataclasses import replace

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from broker.approvals.model import Voter
from slackapp.exceptions import SlackDeliveryError
from slackapp.ports import ApprovalActions

UNLINKED = "Your Slack account is not linked to a jitgate identity (no known person with your Slack email)."


async def email_for_slack_user(client: AsyncWebClient, user_id: str) -> str | None:
    """The profile email of a Slack user; None when Slack knows no such user or no email.

    Raises `SlackDeliveryError` when Slack could not answer: "try again" is not "not linked".
    """
    try:
        response = await client.users_info(user=user_id)
    except SlackApiError as exc:
        error = str(exc.response.get("error") or f"HTTP {exc.response.status_code}")
        if error in ("user_not_found", "users_not_found", "user_not_visible"):
            return None
        raise SlackDeliveryError("users.info", error) from exc
    user = response.get("user") or {}
    if user.get("is_bot") or user.get("deleted"):
        return None
    email = str((user.get("profile") or {}).get("email") or "").strip()
    return email or None


async def voter_for_slack_user(client: AsyncWebClient, actions: ApprovalActions, user_id: str) -> Voter | None:
    email = await email_for_slack_user(client, user_id)
    if email is None:
        return None
    voter = await actions.voter_for_email(email)
    return replace(voter, via="slack") if voter is not None else None
