"""The proxy's metrics through real sessions: bytes relayed per direction, sessions open,
statements by decision and their durations move when a client does something, and only then;
and `jitgate proxy --workers 2` serves them on `proxy.metrics_port` + worker index, which is
what infra/ scrapes (tests/infra/test_metrics_scrape.py)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import prometheus_client
import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from broker import metrics
from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from tests.conftest import free_port
from tests.e2e.conftest import Gateway
from tests.processes import issue_token, start, stop, wait_port

pytestmark = pytest.mark.e2e

C2S, S2C = {"direction": "client_to_server"}, {"direction": "server_to_client"}
PAYLOAD = "x" * 20_000


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def relayed() -> tuple[float, float]:
    return sample("jitgate_proxy_bytes_total", C2S), sample("jitgate_proxy_bytes_total", S2C)


def wait_until_closed(active: float) -> None:
    """Until the sessions gauge is back to `active` (the relay has ended: its bytes are in)."""
    deadline = time.monotonic() + 10
    while sample("jitgate_sessions_active") != active:
        assert time.monotonic() < deadline, "the session's end was never counted"
        time.sleep(0.02)


def no_session_left() -> float:
    """Until no earlier test's session is still ending, then the sessions gauge. A client
    that closed its connection leaves its relay to end on the gateway's loop a moment later
    (its Terminate counted, then the gauge moved once its end is recorded); a test that read
    the gauge meanwhile would take that end for its own session's. Settled: the live relays,
    the gauge and the byte counts unchanged for 0.2 s. (The gauge and the relays are this
    process's: unit tests' recorders count in it too, so it need not be 0.)"""
    def now() -> tuple[frozenset[int], float, tuple[float, float]]:
        return frozenset(map(id, metrics.PROXY_BYTES._live)), sample("jitgate_sessions_active"), relayed()

    deadline = time.monotonic() + 10
    last = now()
    while True:
        time.sleep(0.2)
        seen = now()
        if seen == last:
            return seen[1]
        assert time.monotonic() < deadline, "the sessions of earlier tests never settled"
        last = seen


def test_proxy_bytes_move_per_direction_with_what_is_relayed(gateway: Gateway) -> None:
    active = no_session_left()
    with psycopg.connect(gateway.dsn(application_name="metrics-bytes"), autocommit=True) as conn:
        sent, received = relayed()
        # A large statement one way and a large result the other: each direction moves by at
        # least its own payload, and the small answer to the big statement hardly moves the other.
        conn.execute(f"select length('{PAYLOAD}')").fetchone()
        mid_sent, mid_received = relayed()
        assert mid_sent - sent >= len(PAYLOAD)
        assert 0 < mid_received - received < 1_000
        # A live session is counted as it goes, not only when it ends.
        (text,) = conn.execute("select repeat('y', 50000)").fetchone()
        assert len(text) == 50_000
        now_sent, now_received = relayed()
        assert now_received - mid_received >= 50_000
        assert 0 < now_sent - mid_sent < 1_000
    wait_until_closed(active)
    # The end of the session neither loses nor counts again what it relayed (Terminate: 5 bytes).
    ended_sent, ended_received = relayed()
    assert now_sent <= ended_sent <= now_sent + 5 and ended_received == now_received
    time.sleep(0.1)
    assert relayed() == (ended_sent, ended_received)


def test_a_refused_login_relays_no_bytes(gateway: Gateway) -> None:
    before = relayed()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gateway.dsn(token="jgt_not-a-token", application_name="metrics-refused")).close()
    assert relayed() == before


def test_sessions_statements_and_durations_move_with_a_session(gateway: Gateway) -> None:
    active = no_session_left()
    allowed = sample("jitgate_statements_total", {"decision": "allow"})
    blocked = sample("jitgate_statements_total", {"decision": "block"})
    timed = sample("jitgate_statement_seconds_count")
    with psycopg.connect(gateway.dsn(application_name="metrics-session"), autocommit=True) as conn:
        assert sample("jitgate_sessions_active") == active + 1
        assert sample("jitgate_statements_total", {"decision": "allow"}) == allowed
        conn.execute("select 1").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select pg_read_file('/etc/passwd')")
        assert sample("jitgate_statements_total", {"decision": "allow"}) == allowed + 1
        assert sample("jitgate_statements_total", {"decision": "block"}) == blocked + 1
        assert sample("jitgate_statement_seconds_count") >= timed + 1
    wait_until_closed(active)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def two_free_ports() -> int:
    """A port p with p + 1 free too (worker i of `--workers 2` serves metrics on p + i)."""
    for _ in range(50):
        first = free_port()
        with contextlib.suppress(OSError), socket.socket() as probe:
            probe.bind(("127.0.0.1", first + 1))
            return first
    raise AssertionError("no two adjacent free ports")


@pytest.fixture
def proxy_process(
    tmp_path: Path, upstream: Upstream, demo_roles: DemoRoles, local_pg_dsn: str
) -> Iterator[dict[str, object]]:
    """`jitgate proxy --workers 2` as deployed: its own process, metrics on metrics_port + i."""
    from tests.broker.store.store_backends import sqlalchemy_url

    name = f"jitgate_metrics_{secrets.token_hex(4)}"
    with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    port, metrics_port = free_port(), two_free_ports()
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "store_url": sqlalchemy_url(local_pg_dsn, name),
        "proxy": {"listen_port": port, "metrics_port": metrics_port},
        "resources": {"demo": {"upstream": {
            "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
            "username": demo_roles.rw_user, "password": demo_roles.rw_password,
        }}},
    }))
    log = tmp_path / "proxy.log"
    proc = start(["proxy", "--config", str(config), "--workers", "2"], log=log)
    try:
        for p in (port, metrics_port, metrics_port + 1):
            wait_port(p, proc, log)
        yield {"port": port, "metrics": [metrics_port, metrics_port + 1], "token": issue_token(config)}
    finally:
        stop(proc)
        with contextlib.suppress(psycopg.Error), psycopg.connect(local_pg_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def test_every_proxy_worker_serves_its_metrics_on_its_port(proxy_process: dict[str, object]) -> None:
    ports: list[int] = proxy_process["metrics"]  # type: ignore[assignment]
    key_c2s = ("jitgate_proxy_bytes_total", (("direction", "client_to_server"),))
    key_s2c = ("jitgate_proxy_bytes_total", (("direction", "server_to_client"),))
    key_allow = ("jitgate_statements_total", (("decision", "allow"),))
    before = [scrape(p) for p in ports]
    assert all(b[key_c2s] == 0 and b[key_s2c] == 0 and b.get(key_allow, 0) == 0 for b in before)
    dsn = f"postgresql://agent:{proxy_process['token']}@127.0.0.1:{proxy_process['port']}/demo"
    # SO_REUSEPORT spreads connections over the workers: open sessions until both served one.
    for _ in range(40):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("select repeat('z', 10000)").fetchone()
        after = [scrape(p) for p in ports]
        if all(a.get(key_allow, 0) >= 1 for a in after):
            break
    for a in after:
        assert a.get(key_allow, 0) >= 1, "a worker served no session (or does not count it)"
        assert a[key_s2c] >= 10_000 * a[key_allow]
        assert a[key_c2s] > 0
        assert a[("jitgate_statement_seconds_count", ())] >= a[key_allow]


async def test_mcp_queries_rows_bytes_and_egress_limits_move(gateway: Gateway) -> None:
    # The MCP server's counters live in its own process's default registry (served at its
    # /metrics with --http, checked in tests/e2e/test_mcp.py); here its client runs in-process.
    import asyncio

    from broker.mcp.gateway import GatewayClient
    from broker.mcp.settings import McpSettings

    def value(name: str, **labels: str) -> float:
        return prometheus_client.REGISTRY.get_sample_value(name, labels) or 0.0

    token = await asyncio.to_thread(gateway.token)
    settings = McpSettings(gateway_port=gateway.port, sslmode="disable", max_rows=5, max_session_rows=7)
    client = GatewayClient(settings, host="127.0.0.1", port=gateway.port, resources={"demo": ""},
                           tokens={"demo": token})
    ok = value("jitgate_mcp_queries_total", resource="demo", status="ok")
    rows, size = value("jitgate_mcp_rows_returned_total", resource="demo"), value(
        "jitgate_mcp_bytes_returned_total", resource="demo")
    limited = value("jitgate_mcp_egress_limit_total", limit="session")
    try:
        first = await client.query("demo", "select g from generate_series(1, 5) g")
        assert first["status"] == "ok" and len(first["rows"]) == 5
        assert value("jitgate_mcp_queries_total", resource="demo", status="ok") == ok + 1
        assert value("jitgate_mcp_rows_returned_total", resource="demo") == rows + 5
        assert value("jitgate_mcp_bytes_returned_total", resource="demo") == size + len("[1][2][3][4][5]")
        assert value("jitgate_mcp_egress_limit_total", limit="session") == limited  # within its limits
        cut = await client.query("demo", "select g from generate_series(1, 50) g")  # 2 left of 7: cut
        assert cut["egress_limit"] and len(cut["rows"]) == 2
        assert value("jitgate_mcp_egress_limit_total", limit="session") == limited + 1
        refused = await client.query("demo", "select 1")  # nothing left: refused
        assert refused["status"] == "error" and refused["egress_limit"]
        assert value("jitgate_mcp_egress_limit_total", limit="session") == limited + 2
        assert value("jitgate_mcp_rows_returned_total", resource="demo") == rows + 7
    finally:
        await client.aclose()
