"""Failed logins as audit records, written off the connection's path and bounded.

    logins = FailedLogins(store.audit)
    logins.record(user="agent:ci", resource="demo", client_addr="10.0.0.7:51234", reason="revoked")

`record` never awaits and never raises: it counts the failure in `jitgate_auth_failures_total`
(label: the check that failed) and queues an `auth.login_failed` event; a task of its own
(started on the first failure, ending when the queue is empty) appends what is queued to the
chain in batches, one transaction each. Anyone can make a login fail, as fast as they can
connect, so:

- the queue holds at most `limit` events. Past that, a failure is tallied instead, under
  its kind: (via, reason, claimed user, claimed resource, token id, client network: the
  address's /24, or /64 for IPv6), with a count, the first address and the first and last
  time seen. After each batch written, each kind becomes one summary record
  (`suppressed: N`, `network`, `first_seen`, `last_seen`), so a flood from one place
  cannot fold a different attempt (a stolen token tried from elsewhere) into its number.
  Kinds are bounded: `per_network` per network (its other kinds are summed in one
  `reason: suppressed` record for that network) and `max_keys` in all (the rest in one
  `reason: suppressed` record with no network). `jitgate_recorder_dropped_total
  {cause="login_flood"}` counts the failures not recorded one by one.
  Statement records have their own buffer (`broker.store.recorder`): a flood of failed logins can
  neither evict nor delay them beyond sharing the store's audit lock one batch at a time;
- a store that fails is retried with backoff while the queue keeps to its limit, and the
  events are dropped (counted, logged) only at `aclose()`.

What is recorded is what the client claimed and which check failed, never the token or a
password, nor part of one: a claimed user or database name that looks like a gateway token
is replaced, and other secrets in it are masked (`broker.audit.redact`).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, Protocol

import structlog

from broker import metrics
from broker.audit import events
from broker.audit.redact import client_text
from broker.backoff import Backoff
from broker.exceptions import StoreError

log = structlog.get_logger("jitgate.audit")

#: Longest claimed user name or database name kept (they are whatever the client sent).
MAX_CLAIM = 256
#: The reason of a summary of failures of more kinds than are told apart.
OVERFLOW = "suppressed"


class Kind(NamedTuple):
    """What tells failures apart in a flood: all but the exact address and port."""

    via: str
    reason: str
    user: str | None
    resource: str | None
    token_id: str | None
    network: str | None


@dataclass(slots=True)
class _Tally:
    count: int
    client_addr: str | None
    first_seen: datetime
    last_seen: datetime


def network(client_addr: str | None) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) of "host:port" or "[v6]:port"; a socket path as it is."""
    if not client_addr:
        return None
    host = client_addr
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:MAX_CLAIM]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class AuditAppender(Protocol):
    async def append_audit(self, *events: events.AuditEvent) -> object: ...


def _claim(value: str | None) -> str | None:
    return client_text(value, limit=MAX_CLAIM)


class FailedLogins:
    def __init__(self, store: AuditAppender, *, limit: int = 1_000, batch_size: int = 200,
                 max_backoff: float = 5.0, max_keys: int = 1_000, per_network: int = 32) -> None:
        self._store = store
        self.limit = limit
        self.batch_size = batch_size
        self.max_backoff = max_backoff
        self.max_keys = max_keys
        self.per_network = per_network
        self._queue: deque[events.AuditEvent] = deque()
        # Failures past `limit`, by kind, until they are summarised (insertion order kept).
        self._tallies: dict[Kind, _Tally] = {}
        self._kinds_per_network: Counter[str | None] = Counter()
        self._flooded = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def tallied(self) -> int:
        """How many kinds of failure are counted, waiting to be summarised."""
        return len(self._tallies)

    def record(self, *, user: str | None, resource: str | None, client_addr: str | None, reason: str,
               via: str = "proxy", token_id: str | None = None) -> None:
        """Count and queue one refused login. Never blocks, never raises."""
        metrics.AUTH_FAILURES.labels(reason=reason).inc()
        if self._closed:
            return
        user, resource = _claim(user), _claim(resource)
        if len(self._queue) >= self.limit:
            self._tally(Kind(via, reason, user, resource, token_id, network(client_addr)), client_addr)
        else:
            self._queue.append(events.login_failed(user=user, resource=resource, client_addr=client_addr,
                                                   reason=reason, via=via, token_id=token_id))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jitgate-failed-logins")

    def _tally(self, kind: Kind, client_addr: str | None) -> None:
        metrics.RECORDER_DROPPED.labels(cause="login_flood").inc()
        self._flooded += 1
        if self._flooded == 1 or self._flooded % 1000 == 0:
            log.warning("failed logins faster than they can be recorded; summarising them",
                        tallied=self._flooded, kinds=len(self._tallies))
        now = datetime.now(UTC)
        tally = self._tallies.get(kind)
        if tally is None:
            kind = self._slot(kind)
            tally = self._tallies.get(kind)
            if tally is None:
                first = client_addr if kind.network is not None else None
                tally = self._tallies[kind] = _Tally(0, first, now, now)
        tally.count += 1
        tally.last_seen = now

    def _slot(self, kind: Kind) -> Kind:
        """The kind a new one is counted under: its own while there is room (`per_network`
        for its network, `max_keys` in all), else its network's overflow, else the overall one."""
        if len(self._tallies) >= self.max_keys:
            return Kind(kind.via, OVERFLOW, None, None, None, None)
        if self._kinds_per_network[kind.network] >= self.per_network:
            return Kind(kind.via, OVERFLOW, None, None, None, kind.network)
        self._kinds_per_network[kind.network] += 1
        return kind

    def _summaries(self) -> list[events.AuditEvent]:
        tallies, self._tallies = self._tallies, {}
        self._kinds_per_network.clear()
        self._flooded = 0
        return [
            events.login_failed(user=k.user, resource=k.resource, client_addr=t.client_addr, reason=k.reason,
                                via=k.via, token_id=k.token_id, suppressed=t.count, network=k.network,
                                first_seen=t.first_seen, last_seen=t.last_seen)
            for k, t in tallies.items()
        ]

    async def _run(self) -> None:
        backoff = Backoff(0.05, self.max_backoff)
        while True:
            # Summaries join the queue once it has room again: it never holds more than
            # `limit` events plus one summary per kind.
            if self._tallies and len(self._queue) < max(self.limit, 1):
                self._queue.extend(self._summaries())
            if not self._queue:
                return
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
        lost = len(self._queue) + sum(t.count for t in self._tallies.values())
        if lost:
            metrics.RECORDER_DROPPED.labels(cause="shutdown").inc(lost)
            log.error("failed logins not recorded at shutdown", lost=lost)
            self._queue.clear()
            self._tallies.clear()
            self._kinds_per_network.clear()
