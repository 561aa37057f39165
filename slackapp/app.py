"""The Slack app: `build_app` registers jitgate's listeners on a slack-bolt `AsyncApp`.

    bolt_app = build_app(settings.slack, approval_service)
    mount(fastapi_app, bolt_app)                    # HTTP mode: POST /slack/events
    await run_socket_mode(bolt_app, settings.slack.app_token)   # or Socket Mode

Bolt verifies every HTTP request's signature (HMAC-SHA256 of `v0:<timestamp>:<body>` with
the signing secret) and refuses timestamps more than five minutes old, before any listener
runs; a refused request gets 401. Listeners are in `slackapp/listeners/`, one module per
surface; they decide nothing themselves and call `ApprovalActions` (the broker).
"""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from slackapp.client import make_web_client
from slackapp.listeners import register
from slackapp.listeners.votes import VoteDesk
from slackapp.ports import ApprovalActions
from slackapp.settings import SlackConfig


def build_app(
    settings: SlackConfig, actions: ApprovalActions, *, client: AsyncWebClient | None = None,
    logger: logging.Logger | None = None,
) -> AsyncApp:
    app = AsyncApp(
        name="jitgate",
        signing_secret=settings.signing_secret.get_secret_value(),
        client=client or make_web_client(settings),
        logger=logger or logging.getLogger("slackapp"),
        # Bolt answers Slack as soon as a listener calls ack() and runs the rest as a task.
        process_before_response=False,
        request_verification_enabled=True,
    )
    console_url = settings.console_url.rstrip("/") if settings.console_url else None
    register(app, VoteDesk(actions, console_url=console_url))
    return app
