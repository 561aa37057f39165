"""Forwarding of audit records to a SIEM (`audit.sink`): a webhook or syslog.

Unlike the rest of `broker.audit` this module does I/O; it is the one place that does. The
store stays the source of truth: a record is forwarded only after the transaction that
appended it committed (`Store.audit_listeners`), and a sink that is down never blocks an
append, a session or a statement.

`AuditForwarder.submit` is synchronous and only appends to a bounded deque. A background
task (`start()`) sends batches of up to `batch_size` records; a failed batch stays at the
head and is retried with exponential backoff (0.1 s doubling to `max_backoff`), each
failure logged and counted. Past `max_queue` waiting records the newest are dropped and
counted (`jitgate_audit_forward_total{outcome="dropped"}`): memory stays bounded, and what
was dropped is still in the store (`jitgate audit export --since` re-sends a gap).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from datetime import UTC
from typing import Any, Protocol

import httpx
import structlog
from prometheus_client import Counter

from broker import metrics
from broker.audit.chain import AuditRecord
from broker.backoff import Backoff

log = structlog.get_logger("jitgate.audit.forward")

FORWARDED = Counter(
    "jitgate_audit_forward_total",
    "Audit records handed to the SIEM sink, by outcome (sent, failed attempts, dropped)",
    ["outcome"],
    registry=metrics.REGISTRY,
)

# RFC 5424 facility codes for the names an operator writes in the config.
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
_INFO = 6


class Transport(Protocol):
    async def send(self, records: Sequence[AuditRecord]) -> None: ...
    async def aclose(self) -> None: ...


class JsonPoster:
    """POSTs JSON bodies to one URL with fixed headers (which may hold a secret: never
    logged); the webhook transport here and the audit witness's webhook share it."""

    def __init__(
        self, url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = url
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._own = client is None

    async def _post(self, body: bytes) -> httpx.Response:
        return await self._client.post(self._url, content=body, headers=self._headers)

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()


class WebhookTransport(JsonPoster):
    """POSTs each batch as a JSON array of records (as `jitgate audit export` writes them)."""

    async def send(self, records: Sequence[AuditRecord]) -> None:
        body = json.dumps([r.to_json() for r in records], ensure_ascii=False, separators=(",", ":"))
        resp = await self._post(body.encode())
        if resp.status_code >= 300:
            raise httpx.HTTPStatusError(f"sink answered {resp.status_code}", request=resp.request, response=resp)


class SyslogTransport:
    """One RFC 5424 datagram per record over UDP; the message is the record as JSON."""

    def __init__(self, address: str, *, facility: str = "authpriv", app_name: str = "jitgate") -> None:
        host, _, port = address.rpartition(":")
        self._addr = (host.strip("[]") or "127.0.0.1", int(port or 514))
        self._pri = FACILITIES[facility] * 8 + _INFO
        self._app = app_name
        self._host = socket.gethostname() or "-"
        family = socket.AF_INET6 if ":" in self._addr[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)  # UDP sendto never waits for the receiver

    def format(self, r: AuditRecord) -> bytes:
        ts = r.ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
        msg = json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":"))
        # MSGID is the record type, so a SIEM can route without parsing the JSON.
        return f"<{self._pri}>1 {ts} {self._host} {self._app} - {r.type} - {msg}".encode()

    async def send(self, records: Sequence[AuditRecord]) -> None:
        for r in records:
            self._sock.sendto(self.format(r), self._addr)

    async def aclose(self) -> None:
        self._sock.close()


class AuditForwarder:
    """Batches, sends and retries audit records in the background (see the module docstring)."""

    def __init__(
        self,
        transport: Transport,
        *,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        max_queue: int = 100_000,
        max_backoff: float = 30.0,
        close_timeout: float = 5.0,
    ) -> None:
        self._close_timeout = close_timeout
        self._transport = transport
        self._batch_size = batch_size
        self._interval = flush_interval
        self._max_queue = max_queue
        self._max_backoff = max_backoff
        self._queue: deque[AuditRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.sent = 0
        self.failures = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, records: Sequence[AuditRecord]) -> None:
        """Queue records for sending; never blocks, never raises."""
        room = self._max_queue - len(self._queue)
        if room < len(records):
            lost = len(records) - max(room, 0)
            self.dropped += lost
            FORWARDED.labels("dropped").inc(lost)
            log.warning("audit_forward_dropped", records=lost, queue=len(self._queue))
            records = records[: max(room, 0)]
        self._queue.extend(records)
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jitgate-audit-forward")

    async def _run(self) -> None:
        backoff = Backoff(0.1, self._max_backoff)
        while not self._closing or self._queue:
            if not self._queue:
                self._wake.clear()
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._interval)
                continue
            if await self._send_batch():
                backoff.reset()
                continue
            if self._closing:
                return
            await backoff.wait()

    async def _send_batch(self) -> bool:
        batch = [self._queue[i] for i in range(min(self._batch_size, len(self._queue)))]
        try:
            await self._transport.send(batch)
        except Exception as exc:  # a sink fault of any kind must not stop forwarding
            self.failures += 1
            FORWARDED.labels("failed").inc(len(batch))
            log.warning("audit_forward_failed", records=len(batch), error=type(exc).__name__, detail=str(exc)[:200])
            return False
        for _ in batch:
            self._queue.popleft()
        self.sent += len(batch)
        FORWARDED.labels("sent").inc(len(batch))
        return True

    async def flush(self, max_wait: float = 10.0) -> None:
        """Wait until the queue is empty (for tests and shutdown), at most `max_wait` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait
        while self._queue and loop.time() < deadline:
            self._wake.set()
            await asyncio.sleep(0.02)

    async def aclose(self) -> None:
        """Send what is queued (one attempt per batch while the sink answers), then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self._close_timeout)
            except TimeoutError:
                self._task.cancel()
                with suppress(asyncio.CancelledError):
                    await self._task
        if self._queue:
            log.warning("audit_forward_unsent_at_close", records=len(self._queue))
        await self._transport.aclose()


def transport_for(sink: Any) -> WebhookTransport | SyslogTransport:
    """The transport of `settings.audit.sink` (WebhookSink or SyslogSink): the forwarder's, and
    the audit witness's when `audit.witness.to_sink` is set."""
    if sink.kind == "webhook":
        headers = {k: v.get_secret_value() for k, v in sink.headers.items()}
        return WebhookTransport(sink.url, headers=headers, timeout=sink.timeout)
    return SyslogTransport(sink.address, facility=sink.facility)


def build_forwarder(sink: Any) -> AuditForwarder:
    """An AuditForwarder for `settings.audit.sink` (WebhookSink or SyslogSink)."""
    return AuditForwarder(transport_for(sink), batch_size=sink.batch_size)


def attach_forwarder(store: Any, sink: Any) -> AuditForwarder | None:
    """Start forwarding `store`'s appended records to `sink` (None: no sink configured).

    Call from a running loop; `aclose()` the result after the last append (before the
    store closes) so what is queued gets its chance to go out.
    """
    if sink is None:
        return None
    forwarder = build_forwarder(sink)
    forwarder.start()
    store.audit_listeners.append(forwarder.submit)
    return forwarder
