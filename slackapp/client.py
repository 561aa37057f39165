"""Posting and updating approval prompts: a thin layer over slack_sdk's `AsyncWebClient`.

Retries happen at two levels, because they answer two different questions:

- inside slack_sdk (`make_web_client`): a 429 is retried after its `Retry-After`, and a
  connection that could not be opened is retried with backoff. In both cases Slack never
  processed the request, so repeating it is always safe;
- here (`SlackPoster`): a 5xx, a dropped connection or a timeout leaves it unknown whether
  Slack posted the message. `post_prompt` and `escalate` are therefore idempotent: every
  message carries Slack message metadata (`event_type` + the approval id), and each attempt
  first looks for it with `conversations.history` (only messages newer than the approval
  can match), so neither a retried attempt nor a retried Celery task posts twice.

After the attempts run out, a `SlackDeliveryError` says which method failed and how, with
`retry_after` when Slack asked to slow down: the caller (a Celery task) retries later.

Scopes: chat:write, and channels:history (groups:history for a private channel) for the
metadata look-up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from broker.approvals.model import Approval
from slackapp.blocks import fallback_text, prompt_blocks, reminder_text
from slackapp.exceptions import SlackDeliveryError
from slackapp.settings import SlackConfig, api_base_url

log = logging.getLogger(__name__)

PROMPT_EVENT = "jitgate_approval"
ESCALATION_EVENT = "jitgate_escalation"
REMINDER_EVENT = "jitgate_reminder"
HISTORY_PAGES = 5  # x 200 messages since the approval was created; plenty for a prompt channel

T = TypeVar("T")


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


def _final(exc: Exception) -> bool:
    """No point repeating now: Slack refused the call (bad token, bad channel, ...), or it is still
    rate limited after slack_sdk waited out `Retry-After`; the caller reschedules."""
    if isinstance(exc, SlackApiError):
        return int(exc.response.status_code) < 500
    return False


class SlackPoster:
    """Posts, finds and updates approval prompts. Stateless apart from its client."""

    def __init__(
        self, client: AsyncWebClient, *, console_url: str | None = None, attempts: int = 3, backoff: float = 0.5,
    ) -> None:
        self.client = client
        self.console_url = console_url.rstrip("/") if console_url else None
        self.attempts = max(1, attempts)
        self.backoff = backoff

    @classmethod
    def from_settings(cls, settings: SlackConfig, *, attempts: int = 3) -> SlackPoster:
        return cls(make_web_client(settings, attempts=attempts), console_url=settings.console_url, attempts=attempts)

    async def post_prompt(self, approval: Approval, channel: str) -> tuple[str, str]:
        """Post the prompt for `approval` to `channel` once; returns (channel id, message ts)."""
        return await self._post_once(approval, channel, PROMPT_EVENT)

    async def escalate(self, approval: Approval, channel: str) -> tuple[str, str]:
        """Post the prompt, with its buttons, to a second channel (once), for approvers who were not reached."""
        return await self._post_once(approval, channel, ESCALATION_EVENT)

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

    async def find_message(self, approval: Approval, channel: str, event_type: str) -> tuple[str, str] | None:
        """The (channel, ts) of the message carrying `event_type` metadata for this approval, if any."""
        oldest = f"{approval.created_at.timestamp() - 60:.6f}"  # some clock skew between us and Slack
        cursor: str | None = None
        for _ in range(HISTORY_PAGES):
            response = await self.client.conversations_history(
                channel=channel, oldest=oldest, limit=200, include_all_metadata=True, cursor=cursor,
            )
            for message in response.get("messages") or []:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == event_type and payload.get("approval_id") == approval.id:
                    return channel, str(message["ts"])
            cursor = (response.get("response_metadata") or {}).get("next_cursor") or None
            if not response.get("has_more") or not cursor:
                return None
        return None

    async def _post_once(self, approval: Approval, channel: str, event_type: str) -> tuple[str, str]:
        async def attempt() -> tuple[str, str]:
            found = await self.find_message(approval, channel, event_type)
            if found is not None:
                return found
            response = await self.client.chat_postMessage(
                channel=channel,
                text=fallback_text(approval),
                blocks=prompt_blocks(approval, console_url=self.console_url),
                metadata={"event_type": event_type, "event_payload": {"approval_id": approval.id}},
                unfurl_links=False,
                unfurl_media=False,
            )
            return str(response["channel"]), str(response["ts"])

        return await self._retrying("chat.postMessage", attempt)

    async def _retrying(self, method: str, call: Callable[[], Awaitable[T]]) -> T:
        last: Exception | None = None
        for number in range(1, self.attempts + 1):
            try:
                return await call()
            except (TimeoutError, SlackApiError, aiohttp.ClientError) as exc:
                last = exc
                if _final(exc) or number == self.attempts:
                    break
                delay = self.backoff * 2 ** (number - 1)
                log.warning("slack %s attempt %d failed (%s); retrying in %.1fs",
                            method, number, _slack_error(method, exc).error, delay)
                await asyncio.sleep(delay)
        assert last is not None
        # The cause is chained for debugging: slack_sdk's errors show Slack's answer, never the token.
        raise _slack_error(method, last) from last
