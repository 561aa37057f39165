"""`jitgate demo` as a newcomer runs it: start, use the info file, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import psutil
import psycopg
import pytest

pytestmark = pytest.mark.e2e

JITGATE = str(Path(sys.executable).parent / "jitgate")


def test_demo_end_to_end(tmp_path):
    info_file = tmp_path / "demo.json"
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
        assert set(info) >= {"proxy_host", "proxy_port", "agent_dsn", "api_url", "approver_token", "upstream_admin_dsn"}

        with psycopg.connect(info["agent_dsn"], autocommit=True) as conn:
            # OpenBao issued this session's login: a generated role, not a standing one.
            vault_user = conn.execute("select current_user").fetchone()[0]
            assert vault_user.startswith("v-"), vault_user
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
        bao = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "bao"]
        assert bao, "the demo runs no OpenBao server"
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "worker" in p.cmdline() and "broker.cli.main" in p.cmdline()]
        assert workers, "the demo runs no Celery worker"

        api = httpx.Client(base_url=info["api_url"], timeout=10)
        assert api.get("/healthz").status_code == 200
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

        # A parked DELETE, approved from the CLI with the approver's token, runs in psql.
        env = {**os.environ, "JITGATE_TOKEN": info["approver_token"], "JITGATE_API_URL": info["api_url"]}
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
            listed = subprocess.run([JITGATE, "approvals", "list", "--json"], env=env, capture_output=True, text=True)
            assert listed.returncode == 0, listed.stderr
            pending = [a for a in json.loads(listed.stdout) if a["sql"] == "delete from orders"]
            time.sleep(0.2)
        (parked,) = pending
        assert parked["requester"] == "agent:demo-agent" and parked["rule"] == "agent-safe/write-without-where"
        approved = subprocess.run(
            [JITGATE, "approvals", "approve", parked["id"]], env=env, capture_output=True, text=True
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
    # Ctrl-C leaves no PostgreSQL behind.
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and any(str(data_dir) in part for part in p.info["cmdline"])
    ]
    assert leftovers == []
    assert not [p for p in bao if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "OpenBao left running"
    subprocess.run(["rm", "-rf", str(data_dir)], check=False)
