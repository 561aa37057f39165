"""The asyncio layer of a session: move bytes between the two sockets through the machine.

Protocols (``data_received``) instead of StreamReaders: one callback per TCP read, one
``writelines`` per direction per read, no task switch per message. Backpressure: when one
side's write buffer passes its high-water mark, reading from the other side pauses, so a
client that stops reading cannot make the proxy buffer an unbounded result set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from proxy.exceptions import ProxyError, to_error_response
from proxy.machine import SessionMachine
from proxy.protocol import messages
from proxy.protocol.frames import ProtocolViolation
from proxy.side_channel import Lookup

log = structlog.get_logger("jitgate.proxy")

WRITE_HIGH_WATER = 512 * 1024
#: PostgreSQL's own words and code for its idle_session_timeout.
IDLE_TIMEOUT = messages.error_response(
    "57P05", "terminating connection due to idle-session timeout", severity="FATAL"
)
# Bytes a client may send while its statement is parked before it is paused.
PARKED_INPUT_LIMIT = 1024 * 1024


class _Side(asyncio.Protocol):
    def __init__(self, on_data: Callable[[bytes], None], on_lost: Callable[[Exception | None], None]) -> None:
        self.on_data = on_data
        self.on_lost = on_lost
        self.paused_peer: Callable[[bool], None] | None = None

    def data_received(self, data: bytes) -> None:
        self.on_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost(exc)

    def pause_writing(self) -> None:
        if self.paused_peer:
            self.paused_peer(True)

    def resume_writing(self) -> None:
        if self.paused_peer:
            self.paused_peer(False)


Reviewer = Callable[[SessionMachine], Awaitable[None]]
#: Answers the machine's side-channel questions (proxy.side_channel.SideChannel.answer).
Asker = Callable[[Lookup], Awaitable[Any]]


class Backlog(Protocol):
    """The session recorder's backlog (broker.recorder.Recorder via proxy.wiring.RecorderSink)."""

    @property
    def backlogged(self) -> bool: ...

    async def caught_up(self) -> None: ...


class Relay:
    def __init__(
        self,
        machine: SessionMachine,
        client: asyncio.Transport,
        upstream: asyncio.Transport,
        *,
        review: Reviewer,
        ask: Asker | None = None,
        backlog: Backlog | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.machine = machine
        self.client = client
        self.upstream = upstream
        self._review = review
        self._review_task: asyncio.Task[None] | None = None
        self._ask = ask
        self._lookup_task: asyncio.Task[None] | None = None
        self._done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._client_paused_by = 0
        # Recording backpressure: while the recorder is behind, the client is not read from.
        self._backlog = backlog
        self._throttle_task: asyncio.Task[None] | None = None
        self._parked_pause = False
        # Idle timeout: the time of the last bytes either way, checked by a timer (one clock
        # read per TCP read on the data path, no timer re-armed per message).
        self._loop = asyncio.get_running_loop()
        self._active_at = self._loop.time()
        self._idle_timeout = idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None

    async def run(self, client_leftover: bytes, upstream_leftover: bytes) -> str:
        client_side = _Side(self._from_client, lambda exc: self._finish("client disconnected"))
        upstream_side = _Side(self._from_upstream, lambda exc: self._finish("upstream closed"))
        client_side.paused_peer = lambda paused: self._pause(self.upstream, paused)
        upstream_side.paused_peer = lambda paused: self._pause_client(paused)
        for transport, side in ((self.client, client_side), (self.upstream, upstream_side)):
            transport.set_protocol(side)
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
            transport.resume_reading()
        if upstream_leftover:
            self._from_upstream(upstream_leftover)
        if client_leftover:
            self._from_client(client_leftover)
        if self._idle_timeout is not None:
            self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)
        try:
            return await self._done
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            for task in (self._review_task, self._lookup_task):
                if task is not None:
                    task.cancel()
            if self._throttle_task is not None:
                self._throttle_task.cancel()
            for transport in (self.client, self.upstream):
                if not transport.is_closing():
                    transport.close()

    def _finish(self, reason: str) -> None:
        if not self._done.done():
            self._done.set_result(reason)

    @staticmethod
    def _pause(transport: asyncio.Transport, paused: bool) -> None:
        if transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _pause_client(self, paused: bool) -> None:
        # The client is paused both for upstream backpressure and while a statement is
        # parked; it resumes only when neither holds.
        self._client_paused_by += 1 if paused else -1
        self._pause(self.client, self._client_paused_by > 0)

    def _flush(self) -> None:
        machine = self.machine
        out = machine.out_upstream
        if out:
            # One write per direction per read: a single chunk is the common case.
            self.upstream.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()
        out = machine.out_client
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def _check_idle(self) -> None:
        assert self._idle_timeout is not None
        quiet = self._loop.time() - self._active_at
        if quiet >= self._idle_timeout and self.machine.idle:
            log.info("session_idle_timeout", idle_seconds=round(quiet, 1))
            self.end("idle timeout", IDLE_TIMEOUT)
            return
        # Busy (a statement running, a transaction open): look again a full period later.
        wait = self._idle_timeout - quiet if quiet < self._idle_timeout else self._idle_timeout
        self._idle_timer = self._loop.call_later(wait, self._check_idle)

    def _from_client(self, data: bytes) -> None:
        if self._done.done():
            return
        self._active_at = self._loop.time()
        try:
            self.machine.feed_client(data)
        except ProtocolViolation as exc:
            self._flush()
            self.client.write(to_error_response(exc))
            self._finish(f"protocol violation: {exc}")
            return
        self._flush()
        self._after_client_step()
        if self._backlog is not None and self._throttle_task is None and self._backlog.backlogged:
            self._throttle()

    def _throttle(self) -> None:
        """Stop reading from the client until the recorder has caught up: its statements are
        delayed, not refused (refusing, 57P03, is for a recorder that cannot write at all)."""
        assert self._backlog is not None
        self._pause_client(True)
        self._throttle_task = asyncio.ensure_future(self._unthrottle(self._backlog))

    async def _unthrottle(self, backlog: Backlog) -> None:
        try:
            await backlog.caught_up()
        finally:
            self._throttle_task = None
            self._pause_client(False)

    def _parked_input(self) -> None:
        """While a statement is parked the client stays readable, so that its disconnect is
        seen at once (and the pending approval cancelled); what it sends meanwhile is kept
        for after the decision, up to PARKED_INPUT_LIMIT bytes, then it is paused."""
        if self._review_task is None:
            self._review_task = asyncio.ensure_future(self._run_review())
        if not self._parked_pause and self.machine.buffered_client > PARKED_INPUT_LIMIT:
            self._parked_pause = True
            self._pause_client(True)

    async def _run_review(self) -> None:
        try:
            try:
                await self._review(self.machine)
            except asyncio.CancelledError:
                raise
            except ProtocolViolation:
                raise
            except Exception as exc:  # fail closed: the statement is refused
                log.error("review_failed", error=type(exc).__name__)
                self.machine.resume(approved=False, reason="the approval service is unavailable")
        except ProtocolViolation as exc:
            # What the client sent while parked is processed on release, and may be malformed:
            # the session ends as it would have on arrival.
            self._review_task = None
            self._flush()
            self.client.write(to_error_response(exc))
            self._finish(f"protocol violation: {exc}")
            return
        self._review_task = None
        if self._parked_pause:
            self._parked_pause = False
            self._pause_client(False)
        try:
            self._flush()
        except RuntimeError:
            return
        self._after_client_step()

    def _after_client_step(self) -> None:
        """After the machine processed client input: it may have ended, parked a statement,
        or be holding a message until the side channel answers."""
        if self.machine.terminated:
            self._finish("client terminated")
        elif self.machine.parked is not None:
            self._parked_input()
        elif self.machine.waiting is not None and self._lookup_task is None:
            self._lookup_task = asyncio.ensure_future(self._run_lookup())

    async def _run_lookup(self) -> None:
        """Ask the side channel (never the client's connection), then let the machine go on.
        Without one (or when it cannot tell) the answer is None: the machine refuses."""
        lookup = self.machine.waiting
        assert lookup is not None
        answer = await self._ask(lookup) if self._ask is not None else None
        self._lookup_task = None
        if self._done.done():
            return
        try:
            self.machine.lookup_done(answer)
        except ProtocolViolation as exc:
            self._flush()
            self.client.write(to_error_response(exc))
            self._finish(f"protocol violation: {exc}")
            return
        self._flush()
        self._after_client_step()

    def _from_upstream(self, data: bytes) -> None:
        if self._done.done():
            return
        self._active_at = self._loop.time()
        try:
            self.machine.feed_server(data)
        except (ProtocolViolation, ProxyError) as exc:
            self._flush()
            self.client.write(to_error_response(exc))
            self._finish(f"upstream protocol violation: {exc}")
            return
        self._flush()
        if self.machine.held_client:
            self._after_client_step()  # client input held for a COPY's answer went on

    def end(self, reason: str, error: bytes) -> None:
        """End the session from outside (its grant expired or was revoked): the client gets
        `error` (a FATAL ErrorResponse), then both sockets close."""
        if self._done.done():
            return
        self._flush()
        if not self.client.is_closing():
            self.client.write(error)
        self._finish(reason)

    def notify_client(self, text: str) -> None:
        if not self.client.is_closing():
            self.client.write(messages.notice_response(text))
