"""A session the gateway ends mid-result says why: the client gets an ErrorResponse, and the
end is recorded with its reason.

A proxy stopped with SIGTERM during a large transfer (`ProxyServer.close`, which cancels
every session task) used to close both sockets without a word: the client saw only "server
closed the connection unexpectedly", PostgreSQL "could not send data to client: Connection
reset by peer", the proxy's log at warning level (the benches' level) only
`statements_unanswered count=1`, and the session's recorded end reason was "error", the
default for an exception. Those are exactly the symptoms of two drops seen while running
bench/stream_rows.py on a shared machine. PostgreSQL's own shutdown tells every client,
FATAL 57P01, before its connection closes; so does the gateway now.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

#: Rows that stream from the first one (generate_series over generate_series is not
#: materialized first), far more than the test reads: the result is mid-stream throughout.
ROWS = "select a * 1000000 + b, repeat('x', 20) from generate_series(1, 200) a, generate_series(1, 100000) b"


@pytest.fixture
def gw(upstream, demo_roles) -> Iterator[Gateway]:
    """A gateway of its own: the test shuts it down."""
    with tempfile.TemporaryDirectory(prefix="jitgate-drop-") as tmp:
        gateway = start_gateway(upstream, demo_roles, Path(tmp))
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _end_reasons(gw: Gateway) -> dict[str, str]:
    gw.flush()

    async def reasons() -> dict[str, str]:
        return {r.session_id: r.data["reason"] async for r in gw.store.audit.iter_audit() if r.type == "session.end"}

    return gw.call(reasons())


def test_a_shutdown_mid_result_tells_the_client_and_records_why(gw: Gateway) -> None:
    conn = psycopg.connect(gw.dsn("demo_observe"), autocommit=True, application_name="drop-shutdown")
    [session] = gw.call(gw.store.sessions.list_sessions(active_only=True))
    streaming = threading.Event()
    outcome: list[BaseException | int] = []

    def read() -> None:
        rows = 0
        try:
            for _ in conn.cursor().stream(ROWS):
                rows += 1
                if rows == 1000:
                    streaming.set()
        except BaseException as exc:  # what the client is told, checked below
            outcome.append(exc)
        else:
            outcome.append(rows)
        finally:
            streaming.set()

    reader = threading.Thread(target=read, name="client", daemon=True)
    reader.start()
    try:
        assert streaming.wait(30), "no rows came"
        gw.call(gw.server.close())  # what SIGTERM does in `jitgate proxy` (broker/cli/proxy_cmd.py)
        reader.join(30)
        assert not reader.is_alive(), "the client was left waiting"
    finally:
        conn.close()
    [error] = outcome
    # Before: psycopg.OperationalError "consuming input failed: server closed the connection
    # unexpectedly", nothing from the gateway.
    assert isinstance(error, psycopg.errors.AdminShutdown), repr(error)
    assert "shutting down" in str(error)
    assert _end_reasons(gw).get(str(session.id)) == "gateway shutdown"


def test_an_idle_session_at_shutdown_is_told_too(gw: Gateway) -> None:
    conn = psycopg.connect(gw.dsn("demo_observe"), autocommit=True, application_name="drop-idle")
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        [session] = gw.call(gw.store.sessions.list_sessions(active_only=True))
        gw.call(gw.server.close())
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("select 1")
    finally:
        conn.close()
    assert _end_reasons(gw).get(str(session.id)) == "gateway shutdown"
