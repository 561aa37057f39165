"""Approval round trip through the real processes, against the Slack double.

    .venv/bin/python bench/approval_roundtrip.py [-n 50]

Starts `jitgate proxy`, `jitgate api` (Slack app mounted at /slack/events) and `jitgate worker`
(Celery on Redis) as separate processes on one SQLite store, with the local Slack Web API
double from the test suite, in front of the local PostgreSQL (127.0.0.1:5432, user postgres).
Then, `-n` times, a client sends a statement that policy parks and an approver clicks
Approve in the posted prompt, and it prints p50/p95 (ms) of both legs:

    park -> prompt posted    the client sends the statement ... the worker's chat.postMessage
                             reaches Slack (proxy parks, stores the request, enqueues on
                             Redis, the worker loads it and posts)
    click -> running         the signed click is sent to /slack/events ... the client has the
                             statement's result (ack, users.info, vote in the store, Redis
                             pub/sub to the proxy, the statement runs upstream)

The design target is 300 ms p95 each way. Needs Redis at 127.0.0.1:6379 (db 14 is flushed).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from broker.identity.oidc import Principal  # noqa: E402
from broker.store import Store  # noqa: E402
from tests.processes import issue_token, start, stop, wait_port  # noqa: E402
from tests.slack_double import SlackDouble  # noqa: E402
from tests.slack_signing import SIGNING_SECRET, SlackSigner  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/14"


class TimedSlack(SlackDouble):
    """Notes when each approval's prompt arrived."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.posted: dict[str, float] = {}

    def handle(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        answer = super().handle(method, args, headers)
        if method == "chat.postMessage":
            metadata = args.get("metadata") or {}
            approval_id = (metadata.get("event_payload") or {}).get("approval_id")
            if approval_id:
                self.posted.setdefault(approval_id, time.perf_counter())
        return answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).flushdb()
    except redis.RedisError:
        print("approval round trip: skipped (no Redis at 127.0.0.1:6379)")
        return
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        if not admin.execute("select 1 from pg_roles where rolname = 'jitgate_bench'").fetchone():
            admin.execute("create role jitgate_bench login password 'bench'")
        admin.execute("drop table if exists approval_rt")
        admin.execute("create table approval_rt (id int)")
        admin.execute("grant all on approval_rt to jitgate_bench")
    host, port, dbname = "127.0.0.1", 5432, args.dsn.rsplit("/", 1)[1]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="jitgate-approval-bench-") as tmp, TimedSlack(
        users={"U_DANA": "dana@example.com"}
    ) as slack:
        proxy_port, api_port = free_port(), free_port()
        config = Path(tmp) / "jitgate.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": tmp,
            "store_url": f"sqlite+aiosqlite:///{tmp}/jitgate.db",
            "broker_url": REDIS_URL,
            "log_level": "warning",
            "proxy": {"listen_port": proxy_port, "review_wait_seconds": 30},
            "api": {"host": "127.0.0.1", "port": api_port},
            "approvals": {"reminder_after": None, "escalate_after": None},
            "slack": {"bot_token": slack.bot_token, "signing_secret": SIGNING_SECRET, "channel": "C_APPROVALS",
                      "api_url": slack.base_url},
            "resources": {dbname: {"upstream": {"host": host, "port": port, "dbname": dbname, "sslmode": "disable",
                                                "username": "jitgate_bench", "password": "bench"}}},
        }))
        env = {"JITGATE_CONFIG": str(config)}
        try:
            for command, extra, wait in (
                ("proxy", [], proxy_port), ("api", [], api_port), ("worker", ["--concurrency", "2", "--no-beat"], None)
            ):
                log = Path(tmp) / f"{command}.log"
                procs.append(start([command, "--config", str(config), *extra], log=log, env=env))
                if wait:
                    wait_port(wait, procs[-1], log)
            token = issue_token(config, resource=dbname, principal="agent:bench")

            async def remember() -> None:
                store = await Store.open(f"sqlite+aiosqlite:///{tmp}/jitgate.db")
                await store.approvals.remember_principal(
                    Principal(subject="dana", issuer="https://idp", email="dana@example.com", groups=("dba",))
                )
                await store.close()

            asyncio.run(remember())
            try:
                park_ms, click_ms = run(args.n, slack, token, proxy_port, api_port, dbname)
            except (SystemExit, AssertionError):
                for log in sorted(Path(tmp).glob("*.log")):
                    print(f"--- {log.name}\n" + log.read_text()[-2000:], file=sys.stderr)
                raise
        finally:
            stop(procs, timeout=20)
            with psycopg.connect(args.dsn, autocommit=True) as admin:
                admin.execute("drop table if exists approval_rt")
    print(f"approval round trip over {len(park_ms)} approvals (real proxy, API, Celery worker on Redis, Slack double)")
    print(f"{'leg':<24}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for name, values in (("park -> prompt posted", park_ms), ("click -> running", click_ms)):
        print(f"{name:<24}{statistics.median(values):>10.1f}{pct(values, 0.95):>10.1f}{max(values):>10.1f}")


def run(n: int, slack: TimedSlack, token: str, proxy_port: int, api_port: int, dbname: str) -> tuple[list, list]:
    signer = SlackSigner(SIGNING_SECRET)
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    dsn = f"postgresql://bench:{token}@127.0.0.1:{proxy_port}/{dbname}"
    park_ms: list[float] = []
    click_ms: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(n + 3):  # the first three warm up the processes, and are not counted
            done = threading.Event()
            finished: list[float] = []

            def execute(finished: list[float] = finished, done: threading.Event = done) -> None:
                conn.execute("delete from approval_rt")
                finished.append(time.perf_counter())
                done.set()

            before = set(slack.posted)
            sent = time.perf_counter()
            thread = threading.Thread(target=execute)
            thread.start()
            deadline = time.monotonic() + 30
            while not set(slack.posted) - before:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no prompt posted within 30 s (round {i}, statement finished: {done.is_set()})")
                time.sleep(0.001)
            (approval_id,) = set(slack.posted) - before
            posted = slack.posted[approval_id]
            ts = slack.prompts_for(approval_id)[0]["ts"]
            click = signer.block_actions(user_id="U_DANA", action_id="jitgate_approve", value=approval_id,
                                         channel="C_APPROVALS", message_ts=ts, response_url=slack.response_url())
            clicked = time.perf_counter()
            http.post("/slack/events", content=click.body, headers=click.headers).raise_for_status()
            if not done.wait(30):
                raise SystemExit("the approved statement did not run within 30 s")
            thread.join()
            if i >= 3:
                park_ms.append((posted - sent) * 1000)
                click_ms.append((finished[0] - clicked) * 1000)
    return park_ms, click_ms


if __name__ == "__main__":
    main()
