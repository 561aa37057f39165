"""The SIEM sink: audit records reach a real local HTTP collector and a real UDP syslog
socket after their transaction commits; a sink that fails is retried and never blocks."""

# Fixtures imported from store_backends are redefined as test arguments, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from broker.audit import events
from broker.audit.chain import AuditRecord
from broker.audit.forward import AuditForwarder, SyslogTransport, WebhookTransport, attach_forwarder
from broker.config import Settings
from broker.store import Grant, SessionStart, Store
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401


class Collector:
    """A real HTTP collector: records JSON bodies and headers; fails the first `fail` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.headers: list[dict[str, str]] = []
        self.fail = fail
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests += 1
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(503)
                else:
                    outer.batches.append(json.loads(body))
                    outer.headers.append(dict(self.headers))
                    self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for b in self.batches for r in b]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


def grant() -> Grant:
    return Grant(None, "agent:demo", ("ai-agents",), "demo", "readwrite", datetime(2031, 1, 1, tzinfo=UTC), True)


def record(seq: int) -> AuditRecord:
    return AuditRecord(seq, f"id-{seq}", datetime(2030, 1, 1, tzinfo=UTC), "login", "person:a", None, {}, "0" * 64,
                       "1" * 64)


async def test_committed_records_reach_the_webhook_in_order(store: Store, collector: Collector) -> None:
    settings = Settings.model_validate({"audit": {"sink": {
        "kind": "webhook", "url": collector.url, "headers": {"Authorization": "Bearer s3cret"}, "batch_size": 2,
    }}})
    forwarder = attach_forwarder(store, settings.audit.sink)
    assert forwarder is not None
    try:
        sid = await store.sessions.start_session(
            SessionStart(grant(), client_addr="10.0.0.1:1", application_name="psql", intent=None)
        )
        await store.audit.append_audit(events.config_changed(actor="person:ops", what="policy"))
        with pytest.raises(RuntimeError):
            async with store.transaction("doomed") as session:
                await store.audit.lock(session)
                await store.audit.append(session, [events.config_changed(actor="person:x", what="never")])
                raise RuntimeError("rolled back")
        await forwarder.flush()
    finally:
        store.audit_listeners.clear()
        await forwarder.aclose()
    stored = [r.to_json() async for r in store.audit.iter_audit()]
    # Exactly the committed records, as the store has them (chain hashes included).
    assert collector.records == stored
    assert [r["type"] for r in stored] == ["session.start", "config.change"] and stored[0]["session_id"] == sid
    assert all(h["Authorization"] == "Bearer s3cret" for h in collector.headers)
    assert forwarder.sent == 2 and forwarder.failures == 0


async def test_failed_batches_are_retried_with_backoff(collector: Collector) -> None:
    collector.fail = 2
    forwarder = AuditForwarder(WebhookTransport(collector.url), batch_size=10, flush_interval=0.01)
    forwarder.start()
    forwarder.submit([record(1), record(2), record(3)])
    await forwarder.flush()
    await forwarder.aclose()
    assert collector.requests == 3 and forwarder.failures == 2
    assert [r["seq"] for r in collector.records] == [1, 2, 3]  # once each, in order


async def test_a_dead_sink_never_blocks_and_overflow_is_counted() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/"
    forwarder = AuditForwarder(WebhookTransport(dead, timeout=0.5), batch_size=5, max_queue=10, flush_interval=0.01,
                               close_timeout=1)
    forwarder.start()
    t = time.perf_counter()
    for i in range(30):
        forwarder.submit([record(i)])
    assert time.perf_counter() - t < 0.05  # submit only queues
    await asyncio.sleep(0.3)
    assert forwarder.pending == 10 and forwarder.dropped == 20 and forwarder.failures >= 1
    await forwarder.aclose()


async def test_syslog_datagrams_reach_a_udp_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    try:
        settings = Settings.model_validate({"audit": {"sink": {
            "kind": "syslog", "address": f"127.0.0.1:{sock.getsockname()[1]}", "facility": "local3",
        }}})
        sink = settings.audit.sink
        assert sink is not None and sink.kind == "syslog"
        forwarder = AuditForwarder(SyslogTransport(sink.address, facility=sink.facility), flush_interval=0.01)
        forwarder.start()
        forwarder.submit([record(1), record(2)])
        await forwarder.flush()
        got = [sock.recv(65535).decode() for _ in range(2)]
        await forwarder.aclose()
    finally:
        sock.close()
    for seq, msg in zip((1, 2), got, strict=True):
        # <PRI> = local3 (19) * 8 + info (6); RFC 5424 version 1; MSGID is the record type.
        assert msg.startswith("<158>1 2030-01-01T00:00:00Z ")
        head, _, payload = msg.partition(" - login - ")
        assert head.split(" ")[3] == "jitgate"
        assert json.loads(payload)["seq"] == seq


def test_sink_config_is_validated() -> None:
    with pytest.raises(Exception, match="url"):
        Settings.model_validate({"audit": {"sink": {"kind": "webhook", "url": "ftp://x"}}})
    with pytest.raises(Exception, match="kind"):
        Settings.model_validate({"audit": {"sink": {"kind": "kafka"}}})
    s = Settings.model_validate({"audit": {"sink": {"kind": "webhook", "url": "https://siem/x",
                                                    "headers": {"Authorization": "Bearer t"}}}})
    assert "Bearer t" not in repr(s.audit)  # header values are secrets


