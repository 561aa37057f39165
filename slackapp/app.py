"""The Slack app: `build_app` registers jitgate's listeners on a slack-bolt `AsyncApp`.

    bolt_app = build_app(settings.slack, approval_service)
    mount(fastapi_app, bolt_app)                    # HTTP mode: POST /slack/events
    await run_socket_mode(bolt_app, settings.slack.app_token)   # or Socket Mode

Bolt verifies every HTTP request's signature (HMAC-SHA256 of `v0:<timestamp>:<body>` with
the signing secret) and refuses timestamps more than five minutes from now; right after it,
`SignedOnce` (slackapp/middleware/replay.py) refuses a signed request it has seen before, so
a captured request cannot be replayed within those five minutes. Both run before any
listener; a refused request gets 401. `replay` is the cache it uses: pass a
`RedisReplayCache` when several processes serve Slack (`replay_cache_for(broker_url)`);
the default is this process's memory. Listeners are in `slackapp/listeners/`, one module per
surface; they decide nothing themselves and call `ApprovalActions` (the broker).
"""

from __future__ import annotations

import logging

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from slackapp.client import make_web_client
from slackapp.listeners import register
from slackapp.listeners.votes import VoteDesk
from slackapp.middleware.replay import MemoryReplayCache, ReplayCache, SignedOnce
from slackapp.ports import ApprovalActions
from slackapp.settings import SlackConfig


def build_app(
    settings: SlackConfig, actions: ApprovalActions, *, client: AsyncWebClient | None = None,
    logger: logging.Logger | None = None, replay: ReplayCache | None = None,
) -> AsyncApp:
    app = AsyncApp(
        name="jitgate",
        signing_secret=settings.signing_secret.get_secret_value(),
        client=client or make_web_client(settings),
        logger=logger or logging.getLogger("slackapp"),
        # Bolt answers Slack as soon as a listener calls ack() and runs the rest as a task.
        process_before_response=False,
        request_verification_enabled=True,
        # Runs right after the signature check, before authorize and every listener.
        before_authorize=SignedOnce(replay if replay is not None else MemoryReplayCache()),
    )
    console_url = settings.console_url.rstrip("/") if settings.console_url else None
    register(app, VoteDesk(actions, console_url=console_url))
    return app
