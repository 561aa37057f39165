"""Decisions are pushed to the parked client, never waited out: a deployment of real processes.

`jitgate proxy`, `jitgate api` and `jitgate worker` (Celery, with beat) run as processes on one
PostgreSQL store and the real Redis, under a non-default installation name; psql parks a
statement through the proxy, whose `proxy.review_wait_seconds` is 60 s. What this proves:

- a request that expires (timeout 2 s) refuses its client within a second of the expiry, not
  when the 60 s wait runs out; the request is expired in the store, and the client is told so;
- a denial and an approval made through the API process (another process than the proxy)
  reach the parked client through Redis within a second of the API's answer.

The worker's expiry reaching a waiter through Redis on its own is in
tests/workers/test_worker_process.py; Redis failing under a parked statement in tests/faults/.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from broker.config import hash_api_token
from tests.broker.store.store_backends import sqlalchemy_url
from tests.conftest import free_port, require_binary
from tests.e2e.test_scale_out import served_issuer
from tests.faults.test_api_restart import Node
from tests.processes import issue_token

pytestmark = pytest.mark.e2e

WAIT = 60  # proxy.review_wait_seconds: what a client would sit through without a push
TIMEOUT = 2  # the approval timeout of TRUNCATE
PUSH = 1.0  # a decision reaches the parked client within this


@pytest.fixture
def deployment(tmp_path, upstream, demo_roles, redis_url, local_pg_dsn) -> Iterator[dict[str, Any]]:
    require_binary("psql")
    name = f"jitgate_push_{secrets.token_hex(4)}"
    with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        with served_issuer() as idp:
            proxy_port, api_port = free_port(), free_port()
            config = tmp_path / "jitgate.yaml"
            config.write_text(yaml.safe_dump({
                "installation": "push-e2e",
                "data_dir": str(tmp_path / "data"),
                "store_url": sqlalchemy_url(local_pg_dsn, name),
                "broker_url": redis_url,
                "proxy": {"listen_port": proxy_port, "review_wait_seconds": WAIT},
                "api": {"host": "127.0.0.1", "port": api_port, "tokens": [hash_api_token("jga_push-admin")]},
                "oidc": {"issuers": [idp.settings().model_dump(mode="json")]},
                "resources": {"demo": {"upstream": {
                    "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
                    "username": demo_roles.rw_user, "password": demo_roles.rw_password,
                }}},
                "approvals": {
                    "default_timeout": "10m", "reminder_after": None, "escalate_after": None,
                    "rules": [
                        {"rules": ["agent-safe/truncate*"], "approvers": ["dba"], "timeout": f"{TIMEOUT}s"},
                        {"approvers": ["dba"]},
                    ],
                },
            }))
            node = Node(tmp_path, config)
            try:
                node.start("proxy", proxy_port)
                node.start("api", api_port)
                _start_worker(node, tmp_path)
                token = issue_token(config, principal="agent:push")
                dana = idp.mint(sub="dana", email="dana@example.com", groups=["dba"])
                with httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10,
                                  headers={"Authorization": f"Bearer {dana}"}) as api:
                    yield {"dsn": f"postgresql://agent:{token}@127.0.0.1:{proxy_port}/demo", "api": api}
            finally:
                node.stop_all()
    finally:
        with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def _start_worker(node: Node, tmp_path: Path) -> None:
    from tests.processes import start

    log = tmp_path / "worker.log"
    node.procs["worker"] = start(["worker", "--config", str(node.config), "--concurrency", "1"], log=log)
    deadline = time.monotonic() + 30
    while " ready." not in (log.read_text(errors="replace") if log.exists() else ""):
        assert node.procs["worker"].poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the worker never became ready"
        time.sleep(0.1)


@contextlib.contextmanager
def _table(upstream, rows: int) -> Iterator[str]:
    name = f"t_push_{secrets.token_hex(4)}"
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"create table {name} (id int)")
        admin.execute(f"insert into {name} select generate_series(1, {rows})")
        admin.execute(f"grant all on {name} to public")
    try:
        yield name
    finally:
        with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
            admin.execute(f"drop table if exists {name}")


def _count(upstream, table: str) -> int:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        return admin.execute(f"select count(*) from {table}").fetchone()[0]


def _park(dsn: str, sql: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _pending(api: httpx.Client, sql: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        found = [a for a in api.get("/v1/approvals?status=pending").json() if a["sql"] == sql]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{sql!r} was never parked"
        time.sleep(0.05)


def test_an_expired_request_refuses_its_client_within_a_second_of_expiring(deployment, upstream):
    api: httpx.Client = deployment["api"]
    with _table(upstream, 4) as table:
        sql = f"truncate {table}"
        proc = _park(deployment["dsn"], sql)
        try:
            approval = _pending(api, sql, proc)
            expires_at = datetime.fromisoformat(approval["expires_at"])
            out, err = proc.communicate(timeout=WAIT + 10)
            refused_at = datetime.now(UTC)
        finally:
            if proc.poll() is None:
                proc.kill()
        late = (refused_at - expires_at).total_seconds()
        assert proc.returncode != 0
        assert f"approval {approval['id']} expired" in err, err
        assert -0.5 <= late <= PUSH, f"refused {late:.2f}s after the request expired"
        assert api.get(f"/v1/approvals/{approval['id']}").json()["status"] == "expired"
        assert _count(upstream, table) == 4


@pytest.mark.parametrize("choice", ["deny", "approve"])
def test_a_decision_through_the_api_process_reaches_the_parked_client_within_a_second(
    deployment, upstream, choice
):
    api: httpx.Client = deployment["api"]
    with _table(upstream, 3) as table:
        sql = f"delete from {table}"
        proc = _park(deployment["dsn"], sql)
        try:
            approval = _pending(api, sql, proc)
            time.sleep(0.5)  # parked and waiting, not still being set up
            assert proc.poll() is None
            body = {"reason": "not during the freeze"} if choice == "deny" else {}
            decided = api.post(f"/v1/approvals/{approval['id']}/{choice}", json=body)
            t0 = time.monotonic()
            assert decided.status_code == 200, decided.text
            out, err = proc.communicate(timeout=WAIT + 10)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
        assert took <= PUSH, f"the {choice} reached the client after {took:.2f}s"
        if choice == "deny":
            assert proc.returncode != 0 and "not during the freeze" in err, err
            assert _count(upstream, table) == 3
        else:
            assert proc.returncode == 0 and out.strip() == "DELETE 3", err
            assert _count(upstream, table) == 0
