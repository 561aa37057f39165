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
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("delete from customers")
        with psycopg.connect(info["upstream_admin_dsn"]) as admin:
            assert admin.execute("select count(*) from customers").fetchone()[0] == 200
            deadline = time.monotonic() + 10
            while admin.execute("select count(*) from pg_roles where rolname = %s", (vault_user,)).fetchone()[0]:
                assert time.monotonic() < deadline, "the Vault role outlived its session"
                time.sleep(0.1)
        assert vault_user not in info_file.read_text()
        bao = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.name() == "bao"]
        assert bao, "the demo runs no OpenBao server"

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
