"""Failed logins as audit records, written off the connection's path and bounded.

    logins = FailedLogins(store)
    logins.record(user="agent:ci", resource="demo", client_addr="10.0.0.7:51234", reason="revoked")

`record` never awaits and never raises: it counts the failure in `jitgate_auth_failures_total`
(label: the check that failed) and queues an `auth.login_failed` event; a task of its own
(started on the first failure, ending when the queue is empty) appends what is queued to the
chain in batches, one transaction each. Anyone can make a login fail, as fast as they can
connect, so:

- the queue holds at most `limit` events; past that, failures are still counted (metric) but
  not queued one by one: the next event queued carries `suppressed: N` (or, once the queue
  is written out, an event of reason `suppressed` does), so the chain says how many were left
  out, and `jitgate_recorder_dropped_total{cause="login_flood"}` moves.
  Statement records have their own buffer (`broker.recorder`): a flood of failed logins can
  neither evict nor delay them beyond sharing the store's audit lock one batch at a time;
- a store that fails is retried with backoff while the queue keeps to its limit, and the
  events are dropped (counted, logged) only at `aclose()`.

What is recorded is what the client claimed and which check failed, never the token or a
password, nor part of one: a claimed user name that looks like a gateway token is replaced.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

import structlog

from broker import metrics
from broker.audit import events
from broker.backoff import Backoff
from broker.exceptions import StoreError

log = structlog.get_logger("jitgate.audit")

#: Longest claimed user name or database name kept (they are whatever the client sent).
MAX_CLAIM = 256
_TOKEN_PREFIX = "jgt_"  # noqa: S105 - broker.store.tokens.TOKEN_PREFIX, a prefix, not a secret


class AuditAppender(Protocol):
    async def append_audit(self, *events: events.AuditEvent) -> object: ...


def _claim(value: str | None) -> str | None:
    if not value:
        return None
    if _TOKEN_PREFIX in value:
        return "(not recorded: looks like a gateway token)"
    return value[:MAX_CLAIM]


class FailedLogins:
    def __init__(self, store: AuditAppender, *, limit: int = 1_000, batch_size: int = 200,
                 max_backoff: float = 5.0) -> None:
        self._store = store
        self.limit = limit
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self._queue: deque[events.AuditEvent] = deque()
        self._suppressed = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    def record(self, *, user: str | None, resource: str | None, client_addr: str | None, reason: str,
               via: str = "proxy", token_id: str | None = None) -> None:
        """Count and queue one refused login. Never blocks, never raises."""
        metrics.AUTH_FAILURES.labels(reason=reason).inc()
        if self._closed:
            return
        if len(self._queue) >= self.limit:
            self._suppressed += 1
            metrics.RECORDER_DROPPED.labels(cause="login_flood").inc()
            if self._suppressed == 1 or self._suppressed % 1000 == 0:
                log.warning("failed logins faster than they can be recorded; counting them",
                            suppressed=self._suppressed)
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._queue.append(
            events.login_failed(user=_claim(user), resource=_claim(resource), client_addr=client_addr,
                                reason=reason, via=via, token_id=token_id, suppressed=suppressed)
        )
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jitgate-failed-logins")

    async def _run(self) -> None:
        backoff = Backoff(0.05, self.max_backoff)
        while self._queue:
            batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            try:
                await self._store.append_audit(*batch)
            except (StoreError, OSError, TimeoutError) as exc:
                log.warning("could not record failed logins; retrying", error=str(exc) or type(exc).__name__,
                            pending=len(self._queue))
                await backoff.wait()
                continue
            for _ in batch:
                self._queue.popleft()
            backoff.reset()
            if not self._queue and self._suppressed:
                # The flood is over (or paused): say how many went unrecorded since the last event.
                suppressed, self._suppressed = self._suppressed, 0
                self._queue.append(events.login_failed(user=None, resource=None, client_addr=None,
                                                       reason="suppressed", suppressed=suppressed))

    async def flush(self) -> None:
        """Return once everything queued so far is written (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def aclose(self, wait: float = 5.0) -> None:
        """Write what is queued (waiting at most `wait` seconds), then drop and count the rest."""
        self._closed = True
        try:
            await asyncio.wait_for(self.flush(), wait)
        except TimeoutError:
            pass
        if self._task is not None and not self._task.done():
            self._task.cancel()
        lost = len(self._queue) + self._suppressed
        if lost:
            metrics.RECORDER_DROPPED.labels(cause="shutdown").inc(lost)
            log.error("failed logins not recorded at shutdown", lost=lost)
            self._queue.clear()
            self._suppressed = 0
