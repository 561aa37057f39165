"""The Celery app: `celery -A workers.app worker --beat` or `jitgate worker`.

Broker: `broker_url` (JITGATE_BROKER_URL): Redis in production; unset, Redis at
127.0.0.1:6379 when it answers, else kombu's SQLAlchemy transport over SQLite in the data
directory (about a second of polling latency; Redis is the fast path).

Installations that share one Redis keep apart by `installation` (`broker_options`): the queue
is ``jitgate.<installation>``, and every key Celery keeps in Redis (the queue's list, bindings,
unacknowledged messages, remote control) is prefixed ``jitgate:<installation>:``. A worker
therefore consumes only its installation's tasks, the beat schedule sends only to it, and a
restore of unacknowledged messages never touches another installation's. The senders
(`workers.dispatch`) build their connection from the same options.

Delivery is at least once: tasks are acknowledged after they finish
(`task_acks_late`), and a worker killed mid-task has its message redelivered
(`task_reject_on_worker_lost`, and Redis's visibility timeout for a worker that vanished).
Every task is therefore idempotent; see `workers.tasks`.

With `audit.signing_key_file` and a witness (`audit.witness`), beat also signs the audit chain's
head every `audit.witness.interval` (60 s) and, with `audit.retention_days`, prunes every
`audit.prune_interval` (24 h), both on the installation's queue.

With `worker.metrics_port`, the worker serves what its pool's processes count at
`/metrics` on that port (`workers.metrics`: prometheus_client's multiprocess mode), or does
not start at all.

Expiry runs every `approvals.expiry_check_interval` (1 s): an expired request is marked and
published on the approvals bus within about that long of its deadline, so the proxy that
parked it answers the client then. A sweep, rather than a task scheduled at each deadline:
Redis redelivers a task held past its visibility timeout, so hour-long countdowns would be
duplicated every 30 s; the sweep is one indexed query. A sweep not started within a few
intervals (a busy or stopped pool) is dropped (`expires`), so sweeps never pile up.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from broker.cli.approvals_runtime import resolve_broker_url
from broker.config import Settings, load_settings
from broker.durations import parse_duration
from workers.metrics import serve_metrics

# Redis: an unacknowledged message (its worker died) is redelivered after this long.
VISIBILITY_TIMEOUT_SECONDS = int(os.environ.get("JITGATE_TASK_VISIBILITY_TIMEOUT", "30"))


def queue_for(installation: str) -> str:
    return f"jitgate.{installation}"


def broker_options(installation: str) -> dict[str, Any]:
    """The Celery settings a worker and every sender of `installation` must share."""
    return {
        "task_default_queue": queue_for(installation),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            # Redis only (other transports ignore it): every key and pub/sub channel kombu uses.
            "global_keyprefix": f"jitgate:{installation}:",
        },
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    options = broker_options(settings.installation)
    options["broker_transport_options"].update(
        # Sweep for messages of dead workers a few times per timeout (kombu's default sweep
        # runs every 100 s).
        unacked_restore_interval=max(1, VISIBILITY_TIMEOUT_SECONDS // 3),
        unacked_restore_throttle=1,
    )
    queue = options["task_default_queue"]
    on_queue = {"queue": queue}
    expiry = parse_duration(settings.approvals.expiry_check_interval).total_seconds()
    app = Celery("jitgate", broker=resolve_broker_url(settings), include=["workers.tasks"])
    app.conf.update(
        **options,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule={
            "expire-pending-approvals": {
                "task": "jitgate.expire_pending", "schedule": expiry,
                "options": {"queue": queue, "expires": max(10.0, 5 * expiry)},
            },
            "remind-and-escalate": {"task": "jitgate.nudge_pending", "schedule": 30.0, "options": on_queue},
            "revoke-ended-leases": {"task": "jitgate.reap_leases", "schedule": 60.0, "options": on_queue},
            "nightly-audit-export": {"task": "jitgate.export_audit", "schedule": _nightly(), "options": on_queue},
            **_audit_schedule(settings, queue),
        },
    )
    serve_metrics(app, settings)
    return app


def _audit_schedule(settings: Settings, queue: str) -> dict[str, Any]:
    """Witnessed checkpoints with a signing key and a witness; prunes with a retention too.
    Runs not started within a few intervals are dropped: the next one covers them."""
    audit = settings.audit
    if audit.signing_key_file is None or not audit.witness.configured:
        return {}
    every = parse_duration(audit.witness.interval).total_seconds()
    schedule: dict[str, Any] = {
        "witness-audit-checkpoint": {
            "task": "jitgate.witness_checkpoint", "schedule": every,
            "options": {"queue": queue, "expires": max(10.0, 3 * every)},
        },
    }
    if audit.retention_days is not None:
        prune_every = parse_duration(audit.prune_interval).total_seconds()
        schedule["prune-audit"] = {
            "task": "jitgate.prune_audit", "schedule": prune_every,
            "options": {"queue": queue, "expires": prune_every},
        }
    return schedule


def _nightly() -> object:
    from celery.schedules import crontab

    return crontab(hour=2, minute=0)


_app: Celery | None = None


def __getattr__(name: str) -> Celery:
    """`celery -A workers.app` looks up `app`; it is built (reading the config) on that use."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = make_app()
    return _app
