"""Posting and updating approval prompts: a thin layer over slack_sdk's `AsyncWebClient`.

Each approval's messages (its prompt, an escalation, a break-glass page) are posted once:
the poster claims the message in a `MessageLedger` (the store's `slack_messages` table)
before `chat.postMessage` and records its channel and `ts` after, so a task delivered twice
(Celery is at least once) updates the recorded message with `chat.update` instead of posting
a second one; a delivery that finds a fresh claim without a `ts` (another worker is posting
right now) raises `SlackDeliveryError("post_in_flight")` and is retried by Celery. The app
never searches a channel's history, so it needs no `*:history` scope.

Retries happen at two levels, because they answer two different questions:

- inside slack_sdk (`make_web_client`): a 429 is retried after its `Retry-After`, and a
  connection that could not be opened is retried with backoff. In both cases Slack never
  processed the request, so repeating it is always safe;
- here: a 5xx is retried (Slack answered that it failed), and `chat.update`, which is
  idempotent, also after a dropped connection or a timeout. `chat.postMessage` is not
  repeated when no answer came back, because Slack may have posted: the claim is kept, and
  only once it is `claim_ttl` old may another delivery post again. So an answer lost on the
  wire costs at most one extra prompt, after `claim_ttl`; when Slack answered with an error
  the claim is released and the next delivery posts at once.

After the attempts run out, a `SlackDeliveryError` says which method failed and how, with
`retry_after` when Slack asked to slow down: the caller (a Celery task) retries later.

Scopes: chat:write (post, update, ephemeral notices).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from broker.approvals.model import Approval
from slackapp.blocks import break_glass_text, fallback_text, prompt_blocks, reminder_text
from slackapp.exceptions import SlackDeliveryError
from slackapp.ports import MessageLedger
from slackapp.settings import SlackConfig, api_base_url

log = logging.getLogger(__name__)

PROMPT = "prompt"
ESCALATION = "escalation"
BREAK_GLASS = "break_glass"
# Message metadata (chat:write posts it): tells people and tools which approval a message is for.
PROMPT_EVENT = "jitgate_approval"
ESCALATION_EVENT = "jitgate_escalation"
REMINDER_EVENT = "jitgate_reminder"
BREAK_GLASS_EVENT = "jitgate_break_glass"
_EVENTS = {PROMPT: PROMPT_EVENT, ESCALATION: ESCALATION_EVENT, BREAK_GLASS: BREAK_GLASS_EVENT}
# Longer than one delivery's whole attempt (3 tries x 10 s timeout, plus Retry-After waits);
# JITGATE_SLACK_CLAIM_TTL (seconds) shortens it for tests.
CLAIM_TTL = timedelta(seconds=float(os.environ.get("JITGATE_SLACK_CLAIM_TTL", "60")))

T = TypeVar("T")


@dataclass(frozen=True)
class Posted:
    channel: str
    ts: str
    new: bool  # False: the message was posted earlier (and was updated now, for a prompt)


def make_web_client(
    settings: SlackConfig, *, attempts: int = 3, backoff: float = 0.5, timeout: int = 10,
) -> AsyncWebClient:
    """An AsyncWebClient for `settings.api_url` with bounded, always-safe retries built in.

    The client opens one aiohttp session per call (none is passed in), so it holds nothing
    that needs closing.
    """
    retries = max(0, attempts - 1)
    return AsyncWebClient(
        token=settings.bot_token.get_secret_value(),
        base_url=api_base_url(settings.api_url),
        timeout=timeout,
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=retries),
            AsyncConnectionErrorRetryHandler(
                max_retry_count=retries,
                interval_calculator=BackoffRetryIntervalCalculator(backoff_factor=backoff),
                # Only failures to connect: the request never left, so a repeat cannot double-post.
                error_types=[aiohttp.ClientConnectorError],
            ),
        ],
    )


def _slack_error(method: str, exc: Exception) -> SlackDeliveryError:
    if isinstance(exc, SlackApiError):
        response = exc.response
        # The call that failed may be the look-up before a post: name that one.
        method = str(getattr(response, "api_url", "") or method).rstrip("/").rsplit("/", 1)[-1] or method
        error = str(response.get("error") or f"HTTP {response.status_code}")
        retry_after: float | None = None
        if response.status_code == 429:
            raw = response.headers.get("Retry-After") or response.headers.get("retry-after")
            try:
                retry_after = float(raw) if raw is not None else 1.0
            except ValueError:
                retry_after = 1.0
        return SlackDeliveryError(method, error, retry_after=retry_after)
    return SlackDeliveryError(method, type(exc).__name__)


def _unanswered(exc: Exception) -> bool:
    """The request may have reached Slack but no answer came back (timeout, dropped connection):
    whether a post happened is unknown. Slack's own answers (errors and 5xx included) and a
    connection that never opened are not."""
    return not isinstance(exc, SlackApiError | aiohttp.ClientConnectorError)


def _final(exc: Exception) -> bool:
    """No point repeating now: Slack refused the call (bad token, bad channel, ...), or it is still
    rate limited after slack_sdk waited out `Retry-After`; the caller reschedules."""
    if isinstance(exc, SlackApiError):
        return int(exc.response.status_code) < 500
    return False


class SlackPoster:
    """Posts approval messages once (through the ledger) and updates them in place."""

    def __init__(
        self, client: AsyncWebClient, *, ledger: MessageLedger, console_url: str | None = None, attempts: int = 3,
        backoff: float = 0.5, claim_ttl: timedelta = CLAIM_TTL,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.console_url = console_url.rstrip("/") if console_url else None
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.claim_ttl = claim_ttl

    @classmethod
    def from_settings(cls, settings: SlackConfig, *, ledger: MessageLedger, attempts: int = 3) -> SlackPoster:
        return cls(make_web_client(settings, attempts=attempts), ledger=ledger, console_url=settings.console_url,
                   attempts=attempts, claim_ttl=CLAIM_TTL)

    async def post_prompt(self, approval: Approval, channel: str) -> Posted:
        """Post the prompt for `approval` to `channel` once; a prompt posted earlier is updated instead."""
        return await self._post_once(approval, channel, PROMPT)

    async def escalate(self, approval: Approval, channel: str) -> Posted:
        """Post the prompt, with its buttons, to a second channel (once), for approvers who were not reached."""
        return await self._post_once(approval, channel, ESCALATION)

    async def page_break_glass(self, approval: Approval, channel: str) -> Posted | None:
        """Page `channel` (once) when the requester approved their own request under break-glass."""
        if not any(v.break_glass for v in approval.votes):
            return None
        return await self._post_once(approval, channel, BREAK_GLASS)

    async def post_reminder(self, approval: Approval, channel: str, ts: str) -> str:
        """A reply in the prompt's thread; returns its ts. Not deduplicated: the caller marks
        the reminder sent first (at most once), as a lost reminder is harmless and a double is noise."""
        response = await self._retrying("chat.postMessage", lambda: self.client.chat_postMessage(
            channel=channel, thread_ts=ts, text=reminder_text(approval),
            metadata={"event_type": REMINDER_EVENT, "event_payload": {"approval_id": approval.id}},
        ))
        return str(response["ts"])

    async def update_prompt(self, approval: Approval, channel: str, ts: str) -> None:
        """Rewrite a posted prompt with the approval's current state (chat.update is idempotent)."""
        await self._retrying("chat.update", lambda: self.client.chat_update(
            channel=channel, ts=ts, text=fallback_text(approval),
            blocks=prompt_blocks(approval, console_url=self.console_url),
        ))

    async def _post_once(self, approval: Approval, channel: str, kind: str) -> Posted:
        claim = await self.ledger.claim_slack_message(approval.id, kind, channel=channel, stale_after=self.claim_ttl)
        if claim is not None:
            recorded_channel, recorded_ts = claim
            if recorded_ts is None:
                raise SlackDeliveryError("chat.postMessage", "post_in_flight")
            if kind != BREAK_GLASS:
                await self.update_prompt(approval, recorded_channel, recorded_ts)
            return Posted(recorded_channel, recorded_ts, new=False)
        message: dict[str, Any] = (
            {"text": break_glass_text(approval)} if kind == BREAK_GLASS
            else {"text": fallback_text(approval), "blocks": prompt_blocks(approval, console_url=self.console_url)}
        )
        try:
            response = await self._retrying("chat.postMessage", lambda: self.client.chat_postMessage(
                channel=channel, **message, unfurl_links=False, unfurl_media=False,
                metadata={"event_type": _EVENTS[kind], "event_payload": {"approval_id": approval.id}},
            ), retry_unanswered=False)
        except SlackDeliveryError as exc:
            if isinstance(exc.__cause__, Exception) and _unanswered(exc.__cause__):
                log.warning("slack chat.postMessage for %s %s: no answer (%s); not posted again before %ss",
                            kind, approval.id, exc.error, int(self.claim_ttl.total_seconds()))
            else:
                await self.ledger.release_slack_message(approval.id, kind)
            raise
        posted = Posted(str(response["channel"]), str(response["ts"]), new=True)
        await self.ledger.record_slack_message(approval.id, kind, channel=posted.channel, ts=posted.ts)
        return posted

    async def _retrying(
        self, method: str, call: Callable[[], Awaitable[T]], *, retry_unanswered: bool = True,
    ) -> T:
        last: Exception | None = None
        for number in range(1, self.attempts + 1):
            try:
                return await call()
            except (TimeoutError, SlackApiError, aiohttp.ClientError) as exc:
                last = exc
                if _final(exc) or number == self.attempts or (_unanswered(exc) and not retry_unanswered):
                    break
                delay = self.backoff * 2 ** (number - 1)
                log.warning("slack %s attempt %d failed (%s); retrying in %.1fs",
                            method, number, _slack_error(method, exc).error, delay)
                await asyncio.sleep(delay)
        assert last is not None
        # The cause is chained for debugging: slack_sdk's errors show Slack's answer, never the token.
        raise _slack_error(method, last) from last
