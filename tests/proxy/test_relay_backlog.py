"""The relay stops reading from a client while the recorder is behind, and resumes after."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.relay import Relay


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeMachine:
    """Forwards client bytes unchanged (one statement per chunk, for the backlog)."""

    def __init__(self, backlog: FakeBacklog) -> None:
        self.out_upstream: list[bytes] = []
        self.out_client: list[bytes] = []
        self.terminated = False
        self.parked = None
        self.waiting = None
        self.held_client = False
        self.in_flight = 0
        self._backlog = backlog

    def feed_client(self, data: bytes) -> None:
        self.out_upstream.append(data)
        self._backlog.pending += 1
        self.in_flight += 1

    def feed_server(self, data: bytes) -> None:
        self.out_client.append(data)
        self.in_flight -= len(data)  # (here: one answer per byte)


class FakeBacklog:
    def __init__(self, soft: int) -> None:
        self.pending = 0
        self.soft = soft
        self.cleared = asyncio.Event()

    @property
    def backlogged(self) -> bool:
        return self.pending >= self.soft

    async def caught_up(self) -> None:
        await self.cleared.wait()
        self.pending = 0


async def test_client_is_not_read_while_the_recorder_is_behind() -> None:
    backlog = FakeBacklog(soft=3)
    machine = FakeMachine(backlog)
    client, upstream = FakeTransport(), FakeTransport()

    async def review(_: Any) -> None:
        raise AssertionError("no review here")

    relay = Relay(machine, client, upstream, review=review, backlog=backlog)  # type: ignore[arg-type]
    run = asyncio.ensure_future(relay.run(b"", b""))
    await asyncio.sleep(0)
    for i in range(2):
        relay._from_client(b"q%d" % i)
    assert client.reading
    relay._from_client(b"q2")  # the third statement puts the recorder behind
    assert not client.reading
    assert upstream.written == [b"q0", b"q1", b"q2"]  # what was read is still forwarded
    backlog.cleared.set()
    await asyncio.sleep(0.01)
    assert client.reading
    relay._from_client(b"q3")
    assert client.reading and upstream.written[-1] == b"q3"
    relay.end("done", b"")
    assert await run == "done"


async def test_no_backlog_no_throttling() -> None:
    backlog = FakeBacklog(soft=1)
    machine = FakeMachine(backlog)
    client, upstream = FakeTransport(), FakeTransport()

    async def review(_: Any) -> None:
        raise AssertionError("no review here")

    relay = Relay(machine, client, upstream, review=review)  # type: ignore[arg-type]
    run = asyncio.ensure_future(relay.run(b"", b""))
    await asyncio.sleep(0)
    relay._from_client(b"q0")
    relay._from_client(b"q1")
    assert client.reading
    relay.end("done", b"")
    assert await run == "done"


async def test_a_client_is_not_read_while_its_pipeline_is_too_deep(monkeypatch: Any) -> None:
    """Every statement forwarded becomes a record when answered: a client may run only so far
    ahead of the recorder's backpressure."""
    monkeypatch.setattr("proxy.relay.MAX_IN_FLIGHT", 4)
    machine = FakeMachine(FakeBacklog(soft=1000))
    client, upstream = FakeTransport(), FakeTransport()

    async def review(_: Any) -> None:
        raise AssertionError("no review here")

    relay = Relay(machine, client, upstream, review=review)  # type: ignore[arg-type]
    run = asyncio.ensure_future(relay.run(b"", b""))
    await asyncio.sleep(0)
    for i in range(5):
        relay._from_client(b"q%d" % i)
    assert not client.reading  # five in flight, over the limit of four
    relay._from_upstream(b"a")
    assert not client.reading  # four: not yet half
    relay._from_upstream(b"bb")
    assert client.reading  # two: read again
    relay.end("done", b"")
    assert await run == "done"


async def test_a_desync_on_client_input_ends_the_session_with_08P01() -> None:
    from proxy.exceptions import SessionDesync

    class Broken(FakeMachine):
        def feed_client(self, data: bytes) -> None:
            self.out_upstream.append(b"sent-before")
            raise SessionDesync("the gateway's model of a repeated batch is not what it forwarded")

    async def review(_: Any) -> None:
        return None

    client, upstream = FakeTransport(), FakeTransport()
    relay = Relay(Broken(FakeBacklog(soft=10)), client, upstream, review=review)  # type: ignore[arg-type]
    run = asyncio.ensure_future(relay.run(b"", b""))
    await asyncio.sleep(0)
    client.protocol.on_data(b"Q")
    reason = await asyncio.wait_for(run, 2)
    assert reason.startswith("desync")
    assert upstream.written == [b"sent-before"]
    assert b"C08P01\x00" in b"".join(client.written)
    assert client.closed and upstream.closed
