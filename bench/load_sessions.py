"""Many concurrent sessions through one `jitgate proxy` process, checking every decision.

    .venv/bin/python bench/load_sessions.py [--sessions 1000] [--seconds 20]

Starts its own embedded PostgreSQL (max_connections raised to fit one backend per session:
the proxy opens one upstream connection per client session, there is no pooling), seeds the
`demo` database, and runs `jitgate proxy` (agent-safe policy, default masking, recording to
SQLite) as a separate process. Then `--sessions` asyncpg clients connect over loopback at
once and, until `--seconds` have passed, each sends a mix of

    read     select from orders                      must succeed
    masked   select the PII columns of customers     must never show a seeded raw value
    blocked  select pg_read_file(...)                must fail with 42501, session usable

and closes. It reports wrong decisions (must be 0), p50/p99 statement latency, the proxy's
RSS and open fds before, at peak and after, `jitgate_sessions_active` after (must be 0) and
the sessions still open in the store (must be 0). Exit status 1 if any invariant fails.
tests/load/test_load_sessions.py runs the same with 200 sessions for a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.demo.pii import generate_customers  # noqa: E402
from broker.demo.seed import seed_demo  # noqa: E402
from broker.demo.upstream import Upstream, start_upstream  # noqa: E402
from broker.store import Store  # noqa: E402

JITGATE = str(Path(sys.executable).parent / "jitgate")
READ = "select id, status, amount from orders where id = $1"
MASKED = "select email, phone, ssn, card_number, api_key from customers where id = $1"
BLOCKED = "select pg_read_file('/etc/passwd')"
RETRYABLE = {"57P03", "08006", "53300"}  # the gateway's fail-closed answers: retry later


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Rig:
    upstream: Upstream
    proxy: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    token: str
    store_url: str

    def usage(self) -> tuple[int, int]:
        """The proxy's RSS (bytes) and open file descriptors, its children included."""
        procs = [psutil.Process(self.proxy.pid)]
        procs += procs[0].children(recursive=True)
        return sum(p.memory_info().rss for p in procs), sum(p.num_fds() for p in procs)

    def sessions_active(self) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("jitgate_sessions_active "):
                return float(line.split()[1])
        raise AssertionError("jitgate_sessions_active is not exported")

    async def open_store_sessions(self) -> int:
        store = await Store.open(self.store_url)
        try:
            return len(await store.sessions.list_sessions(active_only=True, limit=100_000))
        finally:
            await store.close()


@contextlib.contextmanager
def rig(workdir: Path, *, max_connections: int, upstream: Upstream | None = None) -> Iterator[Rig]:
    """An upstream (started here unless given) and a `jitgate proxy` process in front of it."""
    own = upstream is None
    if upstream is None:
        upstream = start_upstream(workdir / "upstream", settings={"max_connections": str(max_connections)})
    proxy: subprocess.Popen[bytes] | None = None
    try:
        roles = asyncio.run(seed_demo(upstream))
        port, metrics_port = _free_port(), _free_port()
        store_url = f"sqlite+aiosqlite:///{workdir / 'jitgate.db'}"
        config = workdir / "jitgate.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(workdir / "data"), "store_url": store_url, "log_level": "warning",
            # A thousand sessions of one token: no concurrent-session caps here.
            "proxy": {"listen_port": port, "metrics_port": metrics_port,
                      "max_sessions_per_agent": None, "max_sessions_per_token": None},
            "resources": {"demo": {"upstream": {
                "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
                "username": roles.rw_user, "password": roles.rw_password,
            }}},
        }))
        token = subprocess.run(
            [JITGATE, "token", "issue", "--config", str(config), "--resource", "demo", "--role", "readwrite",
             "--principal", "agent:load", "--group", "ai-agents", "--ttl", "1h", "--reusable"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().split()[-1]
        proxy = subprocess.Popen([JITGATE, "proxy", "--config", str(config)],
                                 stdout=(workdir / "proxy.log").open("wb"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if proxy.poll() is not None:
                raise RuntimeError((workdir / "proxy.log").read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the proxy never listened") from None
                time.sleep(0.1)
        yield Rig(upstream, proxy, port, metrics_port, token, store_url)
    finally:
        if proxy is not None and proxy.poll() is None:
            os.killpg(proxy.pid, signal.SIGTERM)
            try:
                proxy.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proxy.pid, signal.SIGKILL)
                proxy.wait(5)
        if own:
            upstream.stop()


@dataclass
class Result:
    sessions: int = 0
    connect_failures: list[str] = field(default_factory=list)  # anything but a clear refusal
    refused: dict[str, int] = field(default_factory=dict)  # SQLSTATE -> clear fail-closed refusals
    refusal_reasons: set[str] = field(default_factory=set)
    refusal_reasons: set[str] = field(default_factory=set)
    wrong: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    # Of those, the statements started once every session had connected: the service latency
    # under the full number of sessions, without the connect burst's queueing.
    steady: list[float] = field(default_factory=list)
    all_connected: float | None = None
    began: float = 0.0
    connected: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"read": 0, "masked": 0, "blocked": 0})
    peak: tuple[int, int] = (0, 0)

    def pct(self, q: float, steady: bool = False) -> float:
        ordered = sorted(self.steady if steady else self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000 if ordered else float("nan")


def _raw_pii() -> set[str]:
    values: set[str] = set()
    for c in generate_customers():
        values.update(v for v in (c.email, c.phone, c.ssn, c.card_number, c.api_key) if v)
    return values


async def _session(
    rig_: Rig, i: int, until: float, start: asyncio.Event, raw: set[str], out: Result, *, think: float, expected: int
) -> None:
    rng = random.Random(i)  # a reproducible mix, not a secret
    await start.wait()
    try:
        conn = await asyncpg.connect(host="127.0.0.1", port=rig_.port, user="agent", password=rig_.token,
                                     database="demo", timeout=60, statement_cache_size=0)
    except asyncpg.PostgresError as exc:
        # Refusing a session it cannot record is the gateway failing closed, not a wrong answer.
        if exc.sqlstate in RETRYABLE:
            out.refused[exc.sqlstate] = out.refused.get(exc.sqlstate, 0) + 1
            out.refusal_reasons.add(f"{exc.sqlstate}: {exc}")
            out.refusal_reasons.add(f"{exc.sqlstate}: {exc}")
        else:
            out.connect_failures.append(f"{exc.sqlstate} {type(exc).__name__}: {exc}")
        return
    except Exception as exc:
        out.connect_failures.append(f"{type(exc).__name__}: {exc}")
        return
    out.sessions += 1
    out.connected += 1
    if out.connected == expected:
        out.all_connected = time.perf_counter()
    try:
        while time.monotonic() < until:
            kind = rng.choices(("read", "masked", "blocked"), weights=(6, 3, 1))[0]
            t0 = time.perf_counter()
            try:
                if kind == "read":
                    rows = await conn.fetch(READ, rng.randint(1, 100))
                    if not rows:
                        out.wrong.append(f"read returned nothing in session {i}")
                elif kind == "masked":
                    rows = await conn.fetch(MASKED, rng.randint(1, 100))
                    leaked = [v for row in rows for v in row.values() if isinstance(v, str) and v in raw]
                    if leaked or not rows:
                        out.wrong.append(f"masked select showed {leaked[:1]} in session {i}")
                else:
                    try:
                        await conn.fetch(BLOCKED)
                        out.wrong.append(f"blocked statement ran in session {i}")
                    except asyncpg.InsufficientPrivilegeError:
                        pass
            except Exception as exc:
                out.wrong.append(f"{kind} failed in session {i}: {type(exc).__name__}: {exc}")
                return
            took = time.perf_counter() - t0
            out.latencies.append(took)
            if out.all_connected is not None and t0 >= out.all_connected:
                out.steady.append(took)
            out.counts[kind] += 1
            # Agents think between statements: uniformly 0..2x `think` seconds.
            await asyncio.sleep(rng.uniform(0, 2 * think))
    finally:
        await conn.close(timeout=10)


async def run_load(rig_: Rig, *, sessions: int, seconds: float, think: float = 0.5) -> Result:
    """`think`: mean seconds between a session's statements; 1,000 sessions at 0.5 s offer
    about 2,000 statements a second, what this 2-core machine serves with room to spare
    (with no think time the run measures saturation: latency is then the queue length)."""
    out = Result()
    raw = _raw_pii()
    start = asyncio.Event()
    until = time.monotonic() + seconds

    async def sample_peak() -> None:
        while time.monotonic() < until:
            rss, fds = rig_.usage()
            out.peak = (max(out.peak[0], rss), max(out.peak[1], fds))
            await asyncio.sleep(0.5)

    tasks = [
        asyncio.create_task(_session(rig_, i, until, start, raw, out, think=think, expected=sessions))
        for i in range(sessions)
    ]
    sampler = asyncio.create_task(sample_peak())
    out.began = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    await sampler
    return out


async def settle(rig_: Rig, within: float = 30) -> tuple[float, int]:
    """Wait until the proxy and the store report no open session; returns what they report."""
    deadline = time.monotonic() + within
    while True:
        active = await asyncio.to_thread(rig_.sessions_active)
        open_in_store = await rig_.open_store_sessions()
        if (active == 0 and open_in_store == 0) or time.monotonic() > deadline:
            return active, open_in_store
        await asyncio.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--think", type=float, default=0.5, help="mean seconds between a session's statements")
    args = parser.parse_args()
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="jitgate-load-") as tmp, \
            rig(Path(tmp), max_connections=args.sessions + 50) as r:
        before = r.usage()
        t0 = time.monotonic()
        result = asyncio.run(run_load(r, sessions=args.sessions, seconds=args.seconds, think=args.think))
        elapsed = time.monotonic() - t0
        active, open_in_store = asyncio.run(settle(r))
        time.sleep(1)
        after = r.usage()
    total = sum(result.counts.values())
    print(f"sessions: {result.sessions} of {args.sessions} connected at once, one upstream backend each; "
          f"refused at connect with a retryable SQLSTATE (fail closed): {result.refused or 0}; "
          f"other connect failures: {len(result.connect_failures)}")
    print(f"statements: {total} in {elapsed:.1f} s ({total / elapsed:.0f}/s): {result.counts}")
    print(f"wrong decisions: {len(result.wrong)}")
    for line in result.wrong[:10] + result.connect_failures[:5] + sorted(result.refusal_reasons)[:5]:
        print(f"  {line}")
    print(f"latency, all statements: p50 {result.pct(0.5):.2f} ms, p99 {result.pct(0.99):.2f} ms, "
          f"mean {statistics.fmean(result.latencies) * 1000 if result.latencies else float('nan'):.2f} ms")
    if result.all_connected is not None:
        burst = result.all_connected - result.began
        print(f"connect burst: all {args.sessions} sessions connected within {burst:.1f} s")
    print(f"latency once all {args.sessions} sessions were connected ({len(result.steady)} statements): "
          f"p50 {result.pct(0.5, steady=True):.2f} ms, p99 {result.pct(0.99, steady=True):.2f} ms")
    print(f"proxy RSS MiB: before {before[0] / mib:.0f}, peak {result.peak[0] / mib:.0f}, after {after[0] / mib:.0f}")
    print(f"proxy open fds: before {before[1]}, peak {result.peak[1]}, after {after[1]}")
    print(f"after: jitgate_sessions_active {active:.0f}, sessions open in the store {open_in_store}")
    ok = not result.wrong and not result.connect_failures and active == 0 and open_in_store == 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
