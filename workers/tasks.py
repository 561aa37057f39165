"""Celery tasks. Each is idempotent, because delivery is at least once.

- `post_prompt(id)`: the Slack prompt of a new request. The prompt is claimed in the store
  before it is posted and its channel and ts recorded after, so a redelivered task updates
  it instead of posting again (`SlackPoster`; a claim held by a delivery in flight is retried).
- `update_prompt(id)`: rewrite the prompt with the current state (who decided, votes so far).
- `expire_pending()`: expire what is past its timeout; each expiry is published on the
  approvals bus (the proxy that parked the statement answers its client at once) and updates
  its prompt. Beat runs it every `approvals.expiry_check_interval`.
- `nudge_pending()`: remind the prompt's thread after `approvals.reminder_after`, escalate to
  `slack.escalation_channel` after `approvals.escalate_after` (each once per request).
- `reap_leases()`: revoke upstream credential leases whose session or grant ended.
- `export_audit()`: the previous day's audit as JSONL under `<data_dir>/exports/`.
- `witness_checkpoint()`: sign the audit chain's head and write it to the external witness
  (`broker.audit.witness`); every `audit.witness.interval` when a signing key and a witness
  are configured.
- `prune_audit()`: with `audit.retention_days`, archive and prune what is older, the archive
  witnessed before anything is deleted; every `audit.prune_interval`.

Slack rate limits (429 + Retry-After) are first retried inside the Slack client; when its
attempts run out the task is retried by Celery after Retry-After (or with exponential
backoff for network errors), up to `MAX_RETRIES`.

The tasks run async code on one event loop per worker process, with one store, one Slack
client and the approvals service of `open_approvals` (the configured bus, publishing only),
opened on first use (after the prefork pool forked).
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
from broker.cli.approvals_runtime import open_approvals
from broker.config import Settings, load_settings
from broker.durations import parse_duration
from broker.store import Store
from broker.store.approvals import ApprovalRepository
from broker.store.audit import AuditRepository

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
    """What the tasks use, opened once per worker process. Of the store, only the two
    repositories the tasks read and write; the store stays open for the process's life."""

    settings: Settings
    loop: asyncio.AbstractEventLoop
    approvals: ApprovalRepository
    audit: AuditRepository
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

            poster = SlackPoster.from_settings(settings.slack, ledger=store.approvals)
        # The configured bus, so that what the tasks decide (expiry) reaches the waiting proxy.
        service, _ = loop.run_until_complete(
            open_approvals(settings, store.approvals, dispatcher=TaskDispatcher(), listen=False)
        )
        _runtime = Runtime(settings, loop, store.approvals, store.audit, service, poster)
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
    approval = await rt.approvals.get_approval(approval_id)
    if approval is None:
        return "unknown approval"
    if rt.poster is None or rt.settings.slack is None:
        return "slack not configured"
    # A self-approval under break-glass pages the approver channel, once.
    await rt.poster.page_break_glass(approval, rt.settings.slack.channel)
    # Posted once (claimed in the store first); a prompt posted earlier is updated in place.
    posted = await rt.poster.post_prompt(approval, rt.settings.slack.channel)
    return "posted" if posted.new else "updated"


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
        due = await rt.approvals.pending_older_than(parse_duration(approvals.reminder_after), escalated=False)
        for approval_id in due:
            recorded = await rt.approvals.approval_message(approval_id)
            approval = await rt.approvals.get_approval(approval_id)
            if recorded is None or approval is None or approval.status is not Status.PENDING:
                continue
            # Marked first: a reminder is at most once (a lost one is harmless, a double is noise).
            if await rt.approvals.mark_approval_nudged(approval_id, escalated=False):
                await rt.poster.client.chat_postMessage(
                    channel=recorded[0], thread_ts=recorded[1],
                    text=f"Reminder: request {approval_id} is still waiting for "
                         f"{', '.join(approval.approver_groups)} (expires {approval.expires_at:%H:%M} UTC).",
                )
                done += 1
    if approvals.escalate_after and slack.escalation_channel:
        due = await rt.approvals.pending_older_than(parse_duration(approvals.escalate_after), escalated=True)
        for approval_id in due:
            approval = await rt.approvals.get_approval(approval_id)
            if approval is None or approval.status is not Status.PENDING:
                continue
            # Escalation is idempotent in Slack (message metadata); marked after it is posted.
            await rt.poster.escalate(approval, slack.escalation_channel)
            await rt.approvals.mark_approval_nudged(approval_id, escalated=True)
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

    manager = build_manager(rt.settings, rt.audit)
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
        async for chunk in render(rt.audit.iter_audit(since=since, until=until), "jsonl"):
            f.write(chunk)
    partial.replace(path)  # a re-run rewrites the same file: idempotent
    return path


@shared_task(name="jitgate.export_audit")
def export_audit(day: str | None = None) -> str:
    when = datetime.fromisoformat(day) if day else datetime.now(UTC) - timedelta(days=1)
    return str(run(_export(runtime(), when)))


async def _witness(rt: Runtime) -> dict[str, Any] | None:
    from broker.audit.witnessing import build_setup, witness_head

    setup = build_setup(rt.settings)
    try:
        return await witness_head(rt.audit, setup)
    finally:
        await setup.aclose()


@shared_task(name="jitgate.witness_checkpoint")
def witness_checkpoint() -> dict[str, Any] | None:
    from broker.audit.witness import WitnessError

    try:
        done = run(_witness(runtime()))
    except (ValueError, WitnessError) as exc:
        # Not retried: the next beat tick runs it again; a rewritten chain must be looked at.
        log.error("audit_witness_refused", error=str(exc))
        return {"error": str(exc)}
    if done is not None:
        log.info("audit_witnessed", seq=done["seq"], witnesses=done["witnesses"])
    return done


async def _prune(rt: Runtime) -> str | None:
    from broker.audit.witnessing import build_setup, prune_witnessed

    days = rt.settings.audit.retention_days
    if days is None:
        return None
    archive_dir = rt.settings.audit.archive_dir or Path(rt.settings.data_dir) / "audit-archive"
    setup = build_setup(rt.settings)
    try:
        summary = await prune_witnessed(
            rt.audit, setup, before=datetime.now(UTC) - timedelta(days=days), archive_dir=archive_dir
        )
    finally:
        await setup.aclose()
    return None if summary is None else str(summary.path)


@shared_task(name="jitgate.prune_audit")
def prune_audit() -> str | None:
    from broker.audit.witness import WitnessError

    try:
        return run(_prune(runtime()))
    except (ValueError, WitnessError) as exc:
        log.error("audit_prune_refused", error=str(exc))
        return None
