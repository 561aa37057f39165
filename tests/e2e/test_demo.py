"""`jitgate demo` as a newcomer runs it: start, use the info files, Ctrl-C; and what an agent
that reads only its own file cannot do (log in upstream, approve its own requests)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import httpx
import jwt
import psutil
import psycopg
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import REDIS_HOST, REDIS_PORT
from tests.demo.test_private import shared_bits

pytestmark = pytest.mark.e2e

JITGATE = str(Path(sys.executable).parent / "jitgate")
OPERATOR_KEYS = {"proxy_host", "proxy_port", "agent_dsn", "api_url", "approver_token", "upstream_admin_dsn",
                 "demo_password"}
AGENT_KEYS = {"proxy_host", "proxy_port", "agent_dsn", "mcp"}


def _redis_answers() -> bool:
    import socket

    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1):
            return True
    except OSError:
        return False


def _upstream_logins_fail(host: str, port: int, users: list[str], passwords: list[str | None]) -> None:
    """An attacker on 127.0.0.1 who knows the upstream port tries every name with every guess."""

    async def attempt() -> None:
        for user in users:
            for password in passwords:
                with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
                    await asyncpg.connect(host=host, port=port, user=user, password=password,
                                          database="demo", timeout=10)

    asyncio.run(attempt())


def _mcp_query(agent: dict, sql: str) -> dict:
    """Run `sql` through the MCP server exactly as the agent file configures it."""
    mcp = agent["mcp"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}

    async def run() -> dict:
        params = StdioServerParameters(command=mcp["command"], args=mcp["args"], env={**env, **mcp["env"]})
        async with Client(params, read_timeout_seconds=60) as client:
            result = await client.call_tool("query", {"resource": "demo", "sql": sql, "intent": "demo test"})
            assert not result.is_error, result
            assert result.structured_content is not None
            return result.structured_content

    return asyncio.run(run())


def _console_login(api_url: str, password: str | None) -> httpx.Client:
    """The console's login through the demo's dev issuer, as a browser does it."""
    client = httpx.Client(base_url=api_url, timeout=10)
    r = client.get("/console/login")
    assert r.status_code == 303
    authorize = r.headers["location"]
    params = dict(parse_qsl(urlsplit(authorize).query))
    page = client.get(authorize)
    assert page.status_code == 200 and 'type="password"' in page.text
    form = {k: v for k, v in params.items() if k not in ("response_type", "scope")}
    r = client.post(authorize.split("?")[0], data={**form, "user": "demo-dba",
                                                   **({"password": password} if password is not None else {})})
    if password is None:
        assert r.status_code == 401 and "location" not in r.headers
        return client
    assert r.status_code == 303, r.text
    r = client.get(r.headers["location"])
    assert r.status_code == 303 and r.headers["location"] == "/console/", r.text
    return client


def test_demo_end_to_end(tmp_path):
    # Where a newcomer's files go: .jitgate/ under the directory they run the demo from.
    info_file = tmp_path / ".jitgate" / "demo.json"
    agent_file = tmp_path / ".jitgate" / "agent.json"
    data_dir = Path("/tmp") / f"jitgate-demo-test-{os.getpid()}"
    proc = subprocess.Popen(
        [
            JITGATE,
            "demo",
            "--info-file",
            str(info_file),
            "--data-dir",
            str(data_dir),
            "--proxy-port",
            "0",
            "--api-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not info_file.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "demo did not start in 90 s"
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        assert oct(info_file.stat().st_mode & 0o777) == "0o600"
        assert set(info) == OPERATOR_KEYS

        # The agent's file: what an agent needs, nothing an approver or operator holds.
        agent = json.loads(agent_file.read_text())
        assert oct(agent_file.stat().st_mode & 0o777) == "0o600"
        assert set(agent) == AGENT_KEYS
        assert set(agent["mcp"]) == {"command", "args", "env"} and set(agent["mcp"]["env"]) == {"JITGATE_GATEWAY_TOKEN"}
        assert (agent["agent_dsn"], agent["proxy_host"], agent["proxy_port"]) == (
            info["agent_dsn"], info["proxy_host"], info["proxy_port"])
        agent_text = agent_file.read_text()
        admin_password = info["upstream_admin_dsn"].split(":")[2].split("@")[0]
        for secret in (info["approver_token"], info["demo_password"], admin_password, info["upstream_admin_dsn"]):
            assert secret not in agent_text
        masked = _mcp_query(agent, "select email from customers where id = 1")
        assert masked["status"] == "ok" and "***@" in masked["rows"][0][0]

        with psycopg.connect(agent["agent_dsn"], autocommit=True) as conn:
            # OpenBao issued this session's login: a generated role, not a standing one.
            # (session_user: the login; current_user may be its group, which owns what it creates)
            vault_user = conn.execute("select session_user").fetchone()[0]
            assert vault_user.startswith("v-"), vault_user
            # The upstream's port is no secret (the proxy's answers show it), but with it and
            # the agent file nobody logs in upstream: every role needs its password (SCRAM).
            upstream_port = conn.execute("select inet_server_port()").fetchone()[0]
            row = conn.execute("select email, card_number from customers where id = 1").fetchone()
            assert "***@" in row[0] and row[1].endswith("4242") and "*" in row[1]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select pg_read_file('/etc/passwd')")
        with psycopg.connect(info["upstream_admin_dsn"]) as admin:
            assert admin.execute("select count(*) from customers").fetchone()[0] == 200
            deadline = time.monotonic() + 10
            while admin.execute("select count(*) from pg_roles where rolname = %s", (vault_user,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the Vault role outlived its session"
                time.sleep(0.1)
        assert vault_user not in info_file.read_text()
        gateway_token = agent["mcp"]["env"]["JITGATE_GATEWAY_TOKEN"]
        _upstream_logins_fail(
            "127.0.0.1", upstream_port,
            ["trustuser", "md5user", "postgres", "demo_rw", "demo_ro", "demo-agent", "agent", vault_user],
            [None, "", gateway_token],
        )
        # The group roles sessions run as log nobody in, not even with the passwords an older
        # demo kept in state.json, nor with one a session (or anyone) set since.
        state = json.loads((data_dir / "upstream" / "state.json").read_text())
        _upstream_logins_fail("127.0.0.1", upstream_port, ["demo_rw", "demo_ro"],
                              [*state.get("passwords", {}).values(), "set-by-a-session"])
        with psycopg.connect(info["upstream_admin_dsn"], autocommit=True) as admin:
            admin.execute("alter role demo_rw password 'set-by-a-session'")  # the red team's bypass
        _upstream_logins_fail("127.0.0.1", upstream_port, ["demo_rw"], ["set-by-a-session"])
        with psycopg.connect(info["upstream_admin_dsn"], autocommit=True) as admin:
            admin.execute("alter role demo_rw password null")
            assert admin.execute("select bool_or(rolcanlogin) from pg_roles where rolname in ('demo_rw', "
                                 "'demo_ro')").fetchone() == (False,)
        bao = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "bao"]
        assert bao, "the demo runs no OpenBao server"
        # The root token is in the server's environment, not on its (world-readable) command line,
        # and not on disk: no `.vault-token` in the server's HOME, a private directory.
        root_token = bao[0].environ()["BAO_DEV_ROOT_TOKEN_ID"]
        assert not [part for p in bao for part in p.cmdline() if root_token in part or "root-token" in part]
        bao_home = Path(bao[0].environ()["HOME"])
        assert oct(bao_home.stat().st_mode & 0o777) == "0o700"
        assert not [p for p in bao_home.rglob("*") if "vault-token" in p.name]
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "worker" in p.cmdline() and "broker.cli.main" in p.cmdline()]
        assert workers, "the demo runs no Celery worker"
        # The store (statements with their literals, the audit chain, token hashes), the logs and
        # keys: nothing under the data dir grants anything to other users.
        assert {"jitgate.db", "worker.log", "worker.yaml", "keys", "upstream"} <= {p.name for p in data_dir.iterdir()}
        assert shared_bits(data_dir) == {}
        assert shared_bits(info_file.parent) == {}

        api = httpx.Client(base_url=info["api_url"], timeout=10)
        assert api.get("/healthz").status_code == 200
        # The worker runs on Redis when it answers, and the health checks say so too.
        if _redis_answers():
            assert api.get("/readyz").json()["checks"].get("redis") == "ok"
            console = _console_login(info["api_url"], info["demo_password"])
            health = console.get("/console/health")
            assert health.status_code == 200
            assert 'id="check-redis"' in health.text and "not configured" not in health.text.split(
                'id="check-redis"')[1].split("</tr>")[0]
        # Without the demo password, the dev issuer signs nobody in: an agent that reaches the
        # API cannot become an approver.
        _console_login(info["api_url"], None)
        issuer = f"{info['api_url']}/dev-issuer"
        device = api.post(f"{issuer}/device/code").json()
        refused = api.post(f"{issuer}/device/approve", data={"user_code": device["user_code"], "user": "demo-dba"})
        assert refused.status_code == 401
        poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code", "device_code": device["device_code"]}
        assert api.post(f"{issuer}/token", data=poll).json() == {"error": "authorization_pending"}
        assert api.get("/v1/sessions").status_code == 401
        sessions = api.get("/v1/sessions", headers={"Authorization": f"Bearer {info['approver_token']}"})
        assert sessions.status_code == 200 and len(sessions.json()) >= 1
        # The approver's bearer is an OIDC token from the demo's built-in issuer, group dba,
        # and the issuer it names is served by the demo's API.
        claims = jwt.decode(info["approver_token"], options={"verify_signature": False})
        assert "dba" in claims["groups"]
        assert claims["iss"].startswith(info["api_url"])
        assert api.get(claims["iss"] + "/.well-known/openid-configuration").json()["issuer"] == claims["iss"]
        # The agent's gateway token is not the upstream password, and neither leaks.
        token = info["agent_dsn"].split(":")[2].split("@")[0]
        assert token not in sessions.text
        assert "openapi" in api.get("/openapi.json").text

        # A parked DELETE, approved from the CLI with the approver's token, runs in psql. No
        # JITGATE_API_URL: run from the directory that holds .jitgate/demo.json, the CLI finds
        # the demo's API (on whatever free port it took) there.
        env = {k: v for k, v in os.environ.items() if not k.startswith("JITGATE_")}
        env["JITGATE_TOKEN"] = info["approver_token"]
        with psycopg.connect(info["upstream_admin_dsn"], autocommit=True) as admin:
            orders = admin.execute("select count(*) from orders").fetchone()[0]
        psql = subprocess.Popen(
            ["psql", "-X", "-c", "delete from orders", info["agent_dsn"]],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        pending = []
        deadline = time.monotonic() + 20
        while not pending:
            assert time.monotonic() < deadline, "the DELETE was not parked"
            listed = subprocess.run([JITGATE, "approvals", "list", "--json"], env=env, capture_output=True, text=True,
                                    cwd=tmp_path)
            assert listed.returncode == 0, listed.stderr
            pending = [a for a in json.loads(listed.stdout) if a["sql"] == "delete from orders"]
            time.sleep(0.2)
        (parked,) = pending
        assert parked["requester"] == "agent:demo-agent" and parked["rule"] == "agent-safe/write-without-where"
        approved = subprocess.run(
            [JITGATE, "approvals", "approve", parked["id"]], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
        out, err = psql.communicate(timeout=30)
        assert out.strip() == f"DELETE {orders}", err
        assert f"awaiting approval {parked['id']}" in err
        # Denied through the API: the client gets 42501 with the approver's reason.
        with psycopg.connect(info["agent_dsn"], autocommit=True) as conn:
            import threading

            denied: list[BaseException] = []

            def run() -> None:
                try:
                    conn.execute("truncate customers")
                except psycopg.Error as exc:
                    denied.append(exc)

            thread = threading.Thread(target=run)
            thread.start()
            auth = {"Authorization": f"Bearer {info['approver_token']}"}
            deadline = time.monotonic() + 20
            while True:
                found = [a for a in api.get("/v1/approvals?status=pending", headers=auth).json()
                         if a["sql"] == "truncate customers"]
                if found:
                    break
                assert time.monotonic() < deadline
                time.sleep(0.1)
            answer = api.post(f"/v1/approvals/{found[0]['id']}/deny", headers=auth, json={"reason": "keep the data"})
            assert answer.status_code == 200, answer.text
            thread.join(20)
            assert isinstance(denied[0], psycopg.errors.InsufficientPrivilege) and "keep the data" in str(denied[0])
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, out
    assert info["demo_password"] in out  # printed on the operator's terminal
    if _redis_answers():
        assert "Celery on Redis" in out
    # The info files describe a running demo: once it stops they are gone.
    assert not info_file.exists() and not agent_file.exists()
    # Ctrl-C leaves no PostgreSQL behind.
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and any(str(data_dir) in part for part in p.info["cmdline"])
    ]
    assert leftovers == []
    assert not [p for p in bao if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "OpenBao left running"
    subprocess.run(["rm", "-rf", str(data_dir)], check=False)
