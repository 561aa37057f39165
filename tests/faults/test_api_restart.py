"""The broker API process dies with approvals pending and is started again.

`jitgate proxy` and `jitgate api` run as processes on one PostgreSQL store and Redis, as in
tests/e2e/test_scale_out.py. A statement parked in the proxy survives the API's SIGKILL:
the restarted API lists it as pending, a vote through it releases the statement once, and
the proxy kept serving other sessions meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from broker.config import hash_api_token
from tests.broker.store.store_backends import sqlalchemy_url
from tests.conftest import free_port, require_binary
from tests.e2e.test_scale_out import served_issuer
from tests.processes import JITGATE, issue_token, wait_port

pytestmark = pytest.mark.e2e

ADMIN = "jga_fault-api-admin"


class Node:
    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.tmp_path, self.config = tmp_path, config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, command: str, port: int) -> None:
        log = self.tmp_path / f"{command}.log"
        proc = subprocess.Popen(
            [JITGATE, command, "--config", str(self.config)], stdout=log.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs[command] = proc
        wait_port(port, proc, log)

    def kill(self, command: str) -> None:
        proc = self.procs.pop(command)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def node(tmp_path, upstream, demo_roles, redis_url, local_pg_dsn) -> Iterator[dict[str, object]]:
    name = f"jitgate_fault_{secrets.token_hex(4)}"
    with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    try:
        with served_issuer() as idp:
            proxy_port, api_port = free_port(), free_port()
            config = tmp_path / "node.yaml"
            config.write_text(yaml.safe_dump({
                "data_dir": str(tmp_path / "data"),
                "store_url": sqlalchemy_url(local_pg_dsn, name),
                "broker_url": redis_url,
                "proxy": {"listen_port": proxy_port, "review_wait_seconds": 30},
                "api": {"host": "127.0.0.1", "port": api_port, "tokens": [hash_api_token(ADMIN)]},
                "oidc": {"issuers": [idp.settings().model_dump(mode="json")]},
                "resources": {"demo": {"upstream": {
                    "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
                    "username": demo_roles.rw_user, "password": demo_roles.rw_password,
                }}},
            }))
            n = Node(tmp_path, config)
            try:
                n.start("proxy", proxy_port)
                n.start("api", api_port)
                token = issue_token(config, principal="agent:fault")
                yield {"node": n, "proxy": proxy_port, "api": api_port, "token": token, "idp": idp}
            finally:
                n.stop_all()
    finally:
        with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def _pending(api: httpx.Client, sql: str) -> list[dict[str, object]]:
    return [a for a in api.get("/v1/approvals?status=pending").json() if a["sql"] == sql]


def test_pending_approval_survives_an_api_restart_and_runs_once(node, upstream):
    require_binary("psql")
    n: Node = node["node"]  # type: ignore[assignment]
    dsn = f"postgresql://agent:{node['token']}@127.0.0.1:{node['proxy']}/demo"
    table = f"t_fault_api_{node['proxy']}"
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(f"create table {table} (id int)")
        admin.execute(f"insert into {table} values (1), (2), (3)")
        admin.execute(f"grant all on {table} to public")
    try:
        sql = f"delete from {table}"
        psql = subprocess.Popen(["psql", "-X", "-c", sql, dsn], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        dana = {"Authorization": f"Bearer {node['idp'].mint(sub='dana', email='dana@example.com', groups=['dba'])}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{node['api']}", headers=dana, timeout=10) as api:
            deadline = time.monotonic() + 20
            while not (pending := _pending(api, sql)):
                assert time.monotonic() < deadline, "not parked"
                time.sleep(0.1)
        n.kill("api")
        # The proxy keeps serving while the API is down; the parked client keeps waiting.
        with psycopg.connect(dsn, autocommit=True) as other:
            assert other.execute(f"select count(*) from {table}").fetchone() == (3,)
        assert psql.poll() is None
        n.start("api", node["api"])  # type: ignore[arg-type]
        with httpx.Client(base_url=f"http://127.0.0.1:{node['api']}", headers=dana, timeout=10) as api:
            assert [a["id"] for a in _pending(api, sql)] == [pending[0]["id"]]
            assert api.post(f"/v1/approvals/{pending[0]['id']}/approve").json()["status"] == "approved"
            # A second vote is a duplicate: the statement cannot be released twice.
            again = api.post(f"/v1/approvals/{pending[0]['id']}/approve")
            assert again.status_code in (200, 409), again.text
        out, err = psql.communicate(timeout=20)
        assert out.strip() == "DELETE 3", err
        with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
            assert admin.execute(f"select count(*) from {table}").fetchone() == (0,)
    finally:
        with contextlib.suppress(Exception), psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
            admin.execute(f"drop table if exists {table}")
