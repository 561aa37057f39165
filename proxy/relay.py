"""The asyncio layer of a session: move bytes between the two sockets through the machine.

Protocols (``buffer_updated``) instead of StreamReaders: one callback per TCP read, one
``writelines`` per direction per read, no task switch per message. Backpressure: when one
side's write buffer passes its high-water mark, reading from the other side pauses, so a
client that stops reading cannot make the proxy buffer an unbounded result set.

What the gateway holds for a session is bounded in the kernel too: both sockets get fixed
SO_SNDBUF/SO_RCVBUF (SOCKET_BUFFER) instead of Linux's autotuning, which sizes them up to
tcp_wmem/tcp_rmem's maximum (MiBs each). Autotuned, a result that the client reads slower
than the upstream writes piled up in the gateway's sockets by the megabyte, and all of it
still reached the client after a cancel (the cancel stops the backend, not the bytes it
already sent): a cancel one row into a large COPY took seconds and hundreds of thousands
of rows instead of milliseconds. The work per turn of the event loop is bounded as well
(READ_CHUNK per read, one read per socket per turn), so a cancel request, which needs a
few turns to be accepted and forwarded, does not wait behind megabytes of results.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from proxy.exceptions import ModeSwitched, ProxyError, to_error_response
from proxy.machine import SessionMachine
from proxy.protocol import messages
from proxy.protocol.frames import ProtocolViolation
from proxy.side_channel import Lookup

log = structlog.get_logger("jitgate.proxy")

#: Bytes waiting in the relay's write buffer toward one side before it stops reading the
#: other side (resumes at a quarter of it). One read's output may pass it once.
WRITE_HIGH_WATER = 64 * 1024
#: SO_SNDBUF and SO_RCVBUF of both sockets (Linux allocates twice this, for its overhead).
#: Per direction the gateway then holds at most about 2 * (2 * SOCKET_BUFFER) +
#: WRITE_HIGH_WATER + one read. A window of that size carries ~25 MB/s at 10 ms round trip,
#: more than the relay itself moves; raise it only for far-away peers.
SOCKET_BUFFER = 128 * 1024
#: Bytes taken from a socket per read (asyncio's default is 256 KiB). The relay's work per
#: read, a turn of the event loop, is proportional: a masked result is processed at a few
#: MB/s, and everything else on the loop (a cancel request for this very statement, other
#: sessions) waits for the turn to end.
READ_CHUNK = 32 * 1024
#: PostgreSQL's own words and code for its idle_session_timeout.
IDLE_TIMEOUT = messages.error_response(
    "57P05", "terminating connection due to idle-session timeout", severity="FATAL"
)
#: The gateway is shutting down (SIGTERM/SIGINT: `ProxyServer.close` cancels every session):
#: PostgreSQL's code for its own shutdown, so that a client mid-result is told instead of
#: finding its connection closed.
SHUTDOWN = messages.error_response(
    "57P01", "terminating connection: the gateway is shutting down", severity="FATAL",
    hint="Reconnect once the gateway is back.",
)
#: Messages awaiting the server's answer before the client is read from no further (until
#: half of them are answered). Each one that runs becomes a statement record when its
#: answer comes, so this bounds what a pipelining client can have run ahead of the
#: recorder's backpressure (`Backlog`): without it a 150,000-insert pipeline, forwarded
#: while the recorder was still healthy, overflowed its hard limit and records were lost.
MAX_IN_FLIGHT = 10_000
# Bytes a client may send while its statement is parked before it is paused.
PARKED_INPUT_LIMIT = 1024 * 1024


class _Side(asyncio.BufferedProtocol):
    """One socket of the session, and whether it is read.

    Reads land in a buffer of READ_CHUNK bytes, and after a full one the socket is not read
    again before the event loop has turned (uvloop would otherwise read on while the socket
    has data): the relay's work per turn is bounded however much the socket holds. Reading
    is also held, counted, for the relay's reasons (the peer's write buffer is full, a
    statement is parked, the recorder is behind); it resumes when no reason is left.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_data: Callable[[bytes], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self.on_data = on_data
        self.on_lost = on_lost
        self.paused_peer: Callable[[bool], None] | None = None
        self.transport: asyncio.Transport | None = None
        self._loop = loop
        self._buffer = memoryview(bytearray(READ_CHUNK))
        self._holds = 0
        self._yielding = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.on_data(bytes(self._buffer[:nbytes]))
        if nbytes == READ_CHUNK and not self._yielding:
            self._yielding = True
            self.update()
            self._loop.call_soon(self._turned)

    def _turned(self) -> None:
        self._yielding = False
        self.update()

    def hold(self, held: bool) -> None:
        # (never below zero: a resume_writing for a pause that reached the protocol before
        # this one was set must not cancel a later hold)
        self._holds = self._holds + 1 if held else max(self._holds - 1, 0)
        self.update()

    def update(self) -> None:
        """Read from the socket exactly when nothing holds it and no turn is awaited."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._holds > 0 or self._yielding:
            transport.pause_reading()
        else:
            transport.resume_reading()

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
    """The session recorder's backlog (broker.store.recorder.Recorder via proxy.wiring.RecorderSink)."""

    @property
    def backlogged(self) -> bool: ...

    async def caught_up(self) -> None: ...


def _lost(reason: str, exc: Exception | None) -> str:
    """The end reason for a socket lost, naming the error when there was one (a reset, or an
    OSError raised in the relay's own callbacks, which uvloop turns into a close unlogged)."""
    return reason if exc is None else f"{reason} ({type(exc).__name__})"


def fix_socket_buffers(transport: asyncio.BaseTransport, size: int = SOCKET_BUFFER) -> None:
    """Fixed kernel buffers for this transport's socket (setting them turns autotuning off)."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
        return
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:  # pragma: no cover - a platform without the option: autotuned
            pass


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
        # Recording backpressure: while the recorder is behind, the client is not read from.
        self._backlog = backlog
        self._throttle_task: asyncio.Task[None] | None = None
        self._parked_pause = False
        self._deep = False  # the client's pipeline is MAX_IN_FLIGHT deep: not read from
        # Idle timeout: the time of the last bytes either way, checked by a timer (one clock
        # read per TCP read on the data path, no timer re-armed per message).
        self._loop = asyncio.get_running_loop()
        self._active_at = self._loop.time()
        self._idle_timeout = idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        # Bytes read from each side, one addition per read (never per message): summed into
        # jitgate_proxy_bytes_total when scraped (broker.metrics.RelayedBytes).
        self.bytes_from_client = 0
        self.bytes_from_upstream = 0
        self._client_side = _Side(
            self._loop, self._from_client, lambda exc: self._finish(_lost("client disconnected", exc))
        )
        self._upstream_side = _Side(
            self._loop, self._from_upstream, lambda exc: self._finish(_lost("upstream closed", exc))
        )
        # A side whose write buffer passed WRITE_HIGH_WATER holds the reading of the other.
        self._client_side.paused_peer = self._upstream_side.hold
        self._upstream_side.paused_peer = self._client_side.hold

    async def run(self, client_leftover: bytes, upstream_leftover: bytes) -> str:
        for transport, side in ((self.client, self._client_side), (self.upstream, self._upstream_side)):
            side.transport = transport
            transport.set_protocol(side)
            fix_socket_buffers(transport)
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        for side in (self._client_side, self._upstream_side):
            side.update()  # (the StreamReader before may have paused it)
        if upstream_leftover:
            self._from_upstream(upstream_leftover)
        if client_leftover:
            self._from_client(client_leftover)
        if self._idle_timeout is not None:
            self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)
        try:
            return await self._done
        except asyncio.CancelledError:
            # The gateway is shutting down: the client is told, as PostgreSQL tells its own,
            # and its socket closes below once what was written to it has been sent. (Not
            # `end`: the task's cancellation has cancelled `_done` as well.)
            if not self.client.is_closing():
                self.client.write(SHUTDOWN)
            raise
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

    def _pause_client(self, paused: bool) -> None:
        # The client is paused for upstream backpressure, while a statement is parked and
        # while the recorder is behind; it resumes only when none holds.
        self._client_side.hold(paused)

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
        self.bytes_from_client += len(data)
        self._active_at = self._loop.time()
        try:
            self.machine.feed_client(data)
        except ProtocolViolation as exc:
            self._client_violation(exc)
            return
        except ProxyError as exc:
            # The model broke on client input (a repeated batch that would not replay as it
            # was forwarded: proxy.fastpath), or a reload switched masking or observe on or
            # off mid-flight: the session ends as on a desync from upstream.
            self._flush()
            self.client.write(to_error_response(exc))
            self._finish(str(exc) if isinstance(exc, ModeSwitched) else f"desync: {exc}")
            return
        self._flush()
        self._after_client_step()
        if not self._deep and self.machine.in_flight > MAX_IN_FLIGHT:
            self._deep = True
            self._pause_client(True)
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
                self.machine.resume(
                    approved=False, reason="the approval service is unavailable",
                    hint="Nothing was run and no approval is pending: retry shortly; if it persists, tell the "
                    "gateway's operator.",
                )
        except ProtocolViolation as exc:
            # What the client sent while parked is processed on release, and may be malformed:
            # the session ends as it would have on arrival.
            self._review_task = None
            self._client_violation(exc)
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
            self._client_violation(exc)
            return
        self._flush()
        self._after_client_step()

    def _client_violation(self, exc: ProtocolViolation) -> None:
        """What the client sent is malformed: it is told why, and the session ends."""
        self._flush()
        self.client.write(to_error_response(exc))
        self._finish(f"protocol violation: {exc}")

    def _from_upstream(self, data: bytes) -> None:
        if self._done.done():
            return
        self.bytes_from_upstream += len(data)
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
        if self._deep and self.machine.in_flight <= MAX_IN_FLIGHT // 2:
            self._deep = False
            self._pause_client(False)

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
