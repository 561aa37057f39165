"""Listeners, one module per Slack surface; `register` wires them all onto an app.

Every listener acks first and works after. Bolt runs a listener as a task and answers Slack's
HTTP request (or Socket Mode envelope) as soon as `ack()` is called, so the work after it
(users.info, the vote, chat.update) is never inside Slack's 3-second window. The only
exception is a validation error in the Deny modal, which must travel in the ack itself.
"""

from __future__ import annotations

from slack_bolt.async_app import AsyncApp

from slackapp.listeners import actions, commands, home, views
from slackapp.listeners.votes import VoteDesk


def register(app: AsyncApp, desk: VoteDesk) -> None:
    actions.register(app, desk)
    views.register(app, desk)
    commands.register(app, desk)
    home.register(app, desk)
