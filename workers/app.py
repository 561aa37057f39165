"""The Celery app: `celery -A workers.app worker --beat` or `jitgate worker`.

Broker: `broker_url` (JITGATE_BROKER_URL): Redis in production; unset, Redis at
127.0.0.1:6379 when it answers, else kombu's SQLAlchemy transport over SQLite in the data
directory (about a second of polling latency; Redis is the fast path).

Delivery is at least once: tasks are acknowledged after they finish
(`task_acks_late`), and a worker killed mid-task has its message redelivered
(`task_reject_on_worker_lost`, and Redis's visibility timeout for a worker that vanished).
Every task is therefore idempotent; see `workers.tasks`.
"""

from __future__ import annotations

import os

from celery import Celery

from broker.cli.approvals_runtime import resolve_broker_url
from broker.config import load_settings

QUEUE = "jitgate"
# Redis: an unacknowledged message (its worker died) is redelivered after this long.
VISIBILITY_TIMEOUT_SECONDS = int(os.environ.get("JITGATE_TASK_VISIBILITY_TIMEOUT", "30"))


def make_app(broker_url: str | None = None) -> Celery:
    url = broker_url or resolve_broker_url(load_settings())
    app = Celery("jitgate", broker=url, include=["workers.tasks"])
    app.conf.update(
        task_default_queue=QUEUE,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            # Sweep for messages of dead workers a few times per timeout (kombu's default
            # sweep runs every 100 s).
            "unacked_restore_interval": max(1, VISIBILITY_TIMEOUT_SECONDS // 3),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        timezone="UTC",
        beat_schedule={
            "expire-pending-approvals": {"task": "jitgate.expire_pending", "schedule": 10.0},
            "remind-and-escalate": {"task": "jitgate.nudge_pending", "schedule": 30.0},
            "revoke-ended-leases": {"task": "jitgate.reap_leases", "schedule": 60.0},
            "nightly-audit-export": {"task": "jitgate.export_audit", "schedule": _nightly()},
        },
    )
    return app


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
