"""Celery tasks. Each is idempotent, because delivery is at least once.

- `post_prompt(id)`: the Slack prompt of a new request. A prompt already recorded for the
  request is updated instead; an unrecorded one (the worker died between Slack's answer and
  the store write) is found by its message metadata (`SlackPoster` looks before posting).
- `update_prompt(id)`: rewrite the prompt with the current state (who decided, votes so far).
- `expire_pending()`: expire what is past its timeout; each expiry updates its prompt.
- `nudge_pending()`: remind the prompt's thread after `approvals.reminder_after`, escalate to
  `slack.escalation_channel` after `approvals.escalate_after` (each once per request).
- `reap_leases()`: revoke upstream credential leases whose session or grant ended.
- `export_audit()`: the previous day's audit as JSONL under `<data_dir>/exports/`.

Slack rate limits (429 + Retry-After) are first retried inside the Slack client; when its
attempts run out the task is retried by Celery after Retry-After (or with exponential
backoff for network errors), up to `MAX_RETRIES`.

The tasks run async code on one event loop per worker process, with one store and one Slack
client, opened on first use (after the prefork pool forked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import structlog
from celery import shared_task

from broker import metrics
from broker.approvals.model import Approval, Status
from broker.approvals.service import ApprovalService
from broker.config import Settings, load_settings
from broker.durations import parse_duration
from broker.store import Store

log = structlog.get_logger("jitgate.workers")

MAX_RETRIES = 8
T = TypeVar("T")


class TaskDispatcher:
    """Inside the worker: transitions made by tasks (expiry) update their prompts directly."""

    def created(self, approval: Approval) -> None:
        post_prompt.delay(approval.id)

    def changed(self, approval: Approval) -> None:
        update_prompt.delay(approval.id)


@dataclass
class Runtime:
    settings: Settings
    loop: asyncio.AbstractEventLoop
    store: Store
    service: ApprovalService
    poster: Any | None  # slackapp.client.SlackPoster when Slack is configured


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = load_settings()
        loop = asyncio.new_event_loop()
        store = loop.run_until_complete(Store.open(settings.store_url.get_secret_value()))
        poster = None
        if settings.slack is not None:
            from slackapp.client import SlackPoster

            poster = SlackPoster.from_settings(settings.slack)
        service = ApprovalService(store, settings.approvals, dispatcher=TaskDispatcher())
        _runtime = Runtime(settings, loop, store, service, poster)
    return _runtime


def run(coro: Coroutine[Any, Any, T]) -> T:
    return runtime().loop.run_until_complete(coro)


def _retry(task: Any, exc: Exception) -> None:
    method = getattr(exc, "method", None)
    if method:  # slackapp.exceptions.SlackDeliveryError
        metrics.SLACK_ERRORS.labels(method).inc()
    retry_after = getattr(exc, "retry_after", None)
    countdown = float(retry_after) if retry_after else min(2 ** task.request.retries, 60)
    log.warning("task_retry", task=task.name, error=str(exc), countdown=countdown)
    raise task.retry(exc=exc, countdown=countdown, max_retries=MAX_RETRIES)


async def _post_or_update(rt: Runtime, approval_id: str) -> str:
    approval = await rt.store.get_approval(approval_id)
    if approval is None:
        return "unknown approval"
    if rt.poster is None or rt.settings.slack is None:
        return "slack not configured"
    await _page_break_glass(rt, approval)
    recorded = await rt.store.approval_message(approval_id)
    if recorded is not None:
        await rt.poster.update_prompt(approval, *recorded)
        return "updated"
    channel, ts = await rt.poster.post_prompt(approval, rt.settings.slack.channel)
    await rt.store.set_approval_message(approval_id, channel=channel, ts=ts)
    if approval.final:
        # Decided before the prompt went out: show the outcome, not live buttons.
        await rt.poster.update_prompt(approval, channel, ts)
    return "posted"


BREAK_GLASS_EVENT = "jitgate_break_glass"


async def _page_break_glass(rt: Runtime, approval: Approval) -> None:
    """A self-approval under break-glass pages the approver channel, once."""
    glass = next((v for v in approval.votes if v.break_glass), None)
    if glass is None or rt.poster is None or rt.settings.slack is None:
        return
    channel = rt.settings.slack.channel
    if await rt.poster.find_message(approval, channel, BREAK_GLASS_EVENT) is not None:
        return
    from slackapp.blocks import escape

    await rt.poster.client.chat_postMessage(
        channel=channel,
        text=(
            f"<!channel> Break-glass: {escape(glass.voter)} approved their own request {approval.id} "
            f"on {escape(approval.resource)}. Reason: {escape(glass.reason or '')}"
        ),
        metadata={"event_type": BREAK_GLASS_EVENT, "event_payload": {"approval_id": approval.id}},
    )


@shared_task(name="jitgate.post_prompt", bind=True, max_retries=MAX_RETRIES)
def post_prompt(self: Any, approval_id: str) -> str:
    try:
        return run(_post_or_update(runtime(), approval_id))
    except Exception as exc:
        _retry(self, exc)
        raise


@shared_task(name="jitgate.update_prompt", bind=True, max_retries=MAX_RETRIES)
def update_prompt(self: Any, approval_id: str) -> str:
    try:
        return run(_post_or_update(runtime(), approval_id))
    except Exception as exc:
        _retry(self, exc)
        raise


@shared_task(name="jitgate.expire_pending")
def expire_pending() -> int:
    return len(run(runtime().service.expire_due()))


async def _nudge(rt: Runtime) -> int:
    if rt.poster is None or rt.settings.slack is None:
        return 0
    approvals, slack = rt.settings.approvals, rt.settings.slack
    done = 0
    if approvals.reminder_after:
        for approval_id in await rt.store.pending_older_than(parse_duration(approvals.reminder_after), escalated=False):
            recorded = await rt.store.approval_message(approval_id)
            approval = await rt.store.get_approval(approval_id)
            if recorded is None or approval is None or approval.status is not Status.PENDING:
                continue
            # Marked first: a reminder is at most once (a lost one is harmless, a double is noise).
            if await rt.store.mark_approval_nudged(approval_id, escalated=False):
                await rt.poster.client.chat_postMessage(
                    channel=recorded[0], thread_ts=recorded[1],
                    text=f"Reminder: request {approval_id} is still waiting for "
                         f"{', '.join(approval.approver_groups)} (expires {approval.expires_at:%H:%M} UTC).",
                )
                done += 1
    if approvals.escalate_after and slack.escalation_channel:
        for approval_id in await rt.store.pending_older_than(parse_duration(approvals.escalate_after), escalated=True):
            approval = await rt.store.get_approval(approval_id)
            if approval is None or approval.status is not Status.PENDING:
                continue
            # Escalation is idempotent in Slack (message metadata); marked after it is posted.
            await rt.poster.escalate(approval, slack.escalation_channel)
            await rt.store.mark_approval_nudged(approval_id, escalated=True)
            done += 1
    return done


@shared_task(name="jitgate.nudge_pending", bind=True, max_retries=MAX_RETRIES)
def nudge_pending(self: Any) -> int:
    try:
        return run(_nudge(runtime()))
    except Exception as exc:
        _retry(self, exc)
        raise


async def _reap(rt: Runtime) -> int:
    from broker.credentials.manager import build_manager
    from broker.credentials.reaper import reap

    manager = build_manager(rt.settings, rt.store)
    try:
        if manager.ledger is None:
            return 0
        result = await reap(manager.ledger, manager.providers)
        return result.revoked
    finally:
        await manager.aclose()


@shared_task(name="jitgate.reap_leases")
def reap_leases() -> int:
    return run(_reap(runtime()))


async def _export(rt: Runtime, day: datetime) -> Path:
    from broker.audit.export import render

    since = day.replace(hour=0, minute=0, second=0, microsecond=0)
    until = since + timedelta(days=1)
    out_dir = Path(rt.settings.data_dir) / "exports"
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = out_dir / f"audit-{since:%Y-%m-%d}.jsonl"
    partial = path.with_suffix(".jsonl.partial")
    with partial.open("w") as f:
        async for chunk in render(rt.store.iter_audit(since=since, until=until), "jsonl"):
            f.write(chunk)
    partial.replace(path)  # a re-run rewrites the same file: idempotent
    return path


@shared_task(name="jitgate.export_audit")
def export_audit(day: str | None = None) -> str:
    when = datetime.fromisoformat(day) if day else datetime.now(UTC) - timedelta(days=1)
    return str(run(_export(runtime(), when)))
