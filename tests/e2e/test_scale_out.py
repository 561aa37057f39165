"""Scale-out: two proxy processes and two API processes on one PostgreSQL store and Redis.

An approval given through either API instance releases the statement parked in either
proxy: the decision travels over Redis pub/sub, the state lives in the shared store.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import yaml

from broker.config import hash_api_token
from tests.broker.identity.issuer import FakeIssuer
from tests.conftest import free_port, require_binary
from tests.processes import issue_token, start, stop, wait_port

pytestmark = pytest.mark.e2e

ADMIN = "jga_scale-out-admin"


@contextlib.contextmanager
def served_issuer() -> Iterator[FakeIssuer]:
    """The test issuer's discovery and JWKS over real HTTP, for API processes to fetch."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    port = free_port()
    idp = FakeIssuer(issuer=f"http://127.0.0.1:{port}/realms/acme")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            answer = idp.handler(httpx.Request("GET", f"http://127.0.0.1:{port}{self.path}"))
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cluster(tmp_path, upstream, demo_roles, redis_url, local_pg_dsn) -> Iterator[dict[str, object]]:
    with contextlib.ExitStack() as stack:
        yield from _cluster(stack, tmp_path, upstream, demo_roles, redis_url, local_pg_dsn)


def _cluster(stack, tmp_path, upstream, demo_roles, redis_url, local_pg_dsn) -> Iterator[dict[str, object]]:
    import secrets

    from tests.broker.store.store_backends import sqlalchemy_url

    idp = stack.enter_context(served_issuer())
    name = f"jitgate_scale_{secrets.token_hex(4)}"
    with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
        admin.execute(f'create database "{name}"')
    store_url = sqlalchemy_url(local_pg_dsn, name)
    try:
        procs: list[subprocess.Popen[bytes]] = []
        proxies, apis = [free_port(), free_port()], [free_port(), free_port()]
        try:
            for i, (proxy_port, api_port) in enumerate(zip(proxies, apis, strict=True)):
                config = tmp_path / f"node{i}.yaml"
                config.write_text(yaml.safe_dump({
                    "data_dir": str(tmp_path / f"node{i}"),
                    "store_url": store_url,
                    "broker_url": redis_url,
                    "proxy": {"listen_port": proxy_port, "review_wait_seconds": 30},
                    "api": {"host": "127.0.0.1", "port": api_port, "tokens": [hash_api_token(ADMIN)]},
                    "oidc": {"issuers": [idp.settings().model_dump(mode="json")]},
                    "resources": {"demo": {"upstream": {
                        "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
                        "username": demo_roles.rw_user, "password": demo_roles.rw_password,
                    }}},
                }))
                for command, port in (("proxy", proxy_port), ("api", api_port)):
                    log = tmp_path / f"{command}{i}.log"
                    procs.append(start([command, "--config", str(config)], log=log))
                    wait_port(port, procs[-1], log)
            token = issue_token(tmp_path / "node0.yaml", principal="agent:scale")
            yield {"proxies": proxies, "apis": apis, "token": token, "idp": idp, "admin_dsn": upstream.dsn("demo")}
        finally:
            stop(procs)
    finally:
        with psycopg.connect(local_pg_dsn, autocommit=True) as admin:
            admin.execute(f'drop database if exists "{name}" with (force)')


def test_approval_through_either_api_releases_either_proxy(cluster):
    require_binary("psql")
    token, idp = cluster["token"], cluster["idp"]
    dana = {"Authorization": f"Bearer {idp.mint(sub='dana', email='dana@example.com', groups=['dba'])}"}
    proxies, apis = cluster["proxies"], cluster["apis"]
    for proxy_port, api_port in ((proxies[0], apis[1]), (proxies[1], apis[0])):
        dsn = f"postgresql://agent:{token}@127.0.0.1:{proxy_port}/demo"
        table = f"t_scale_{proxy_port}"
        with psycopg.connect(cluster["admin_dsn"], autocommit=True) as admin:
            admin.execute(f"create table {table} (id int)")
            admin.execute(f"insert into {table} values (1), (2)")
            admin.execute(f"grant all on {table} to public")
        psql = subprocess.Popen(["psql", "-X", "-c", f"delete from {table}", dsn], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", headers=dana, timeout=10)
        deadline = time.monotonic() + 20
        while True:
            pending = [a for a in api.get("/v1/approvals?status=pending").json() if a["sql"] == f"delete from {table}"]
            if pending:
                break
            assert time.monotonic() < deadline, "not parked"
            time.sleep(0.1)
        t0 = time.monotonic()
        assert api.post(f"/v1/approvals/{pending[0]['id']}/approve").json()["status"] == "approved"
        out, err = psql.communicate(timeout=20)
        assert out.strip() == "DELETE 2", err
        # Pushed, not found at the 30 s wait's end.
        assert time.monotonic() - t0 < 5
        with psycopg.connect(cluster["admin_dsn"], autocommit=True) as admin:
            admin.execute(f"drop table {table}")
