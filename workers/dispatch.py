"""The broker side of the queue: enqueue prompt tasks when approvals are created or change.

Used by the proxy and the API (through `broker.cli.approvals_runtime`). Sending is by task
name over the broker connection, so the sender needs neither the worker code nor its
configuration beyond the installation: tasks go to that installation's queue, with its key
prefix (`workers.app.broker_options`), and only its workers take them. Sending happens off
the event loop (a broker round trip must not stall the relay), and a failure to enqueue is
logged, never raised: the decision itself is committed, and the worker's periodic tasks and
the next change bring the prompt up to date.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from celery import Celery

from broker.approvals.model import Approval
from workers.app import broker_options

log = structlog.get_logger("jitgate.workers")


class CeleryDispatcher:
    def __init__(self, broker_url: str, *, installation: str) -> None:
        self.app = Celery("jitgate-dispatch", broker=broker_url)
        self.app.conf.update(**broker_options(installation))
        self.queue: str = self.app.conf.task_default_queue

    def _send(self, name: str, approval_id: str) -> None:
        try:
            self.app.send_task(name, args=[approval_id], queue=self.queue, retry=True,
                               retry_policy={"max_retries": 3, "interval_start": 0.1, "interval_step": 0.5})
        except Exception as exc:
            log.warning("enqueue_failed", task=name, approval_id=approval_id, error=type(exc).__name__)

    def _enqueue(self, name: str, approval_id: str) -> None:
        loop = None
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
        if loop is None:
            self._send(name, approval_id)
        else:
            loop.run_in_executor(None, self._send, name, approval_id)

    def created(self, approval: Approval) -> None:
        self._enqueue("jitgate.post_prompt", approval.id)

    def changed(self, approval: Approval) -> None:
        self._enqueue("jitgate.update_prompt", approval.id)
