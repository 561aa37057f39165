"""Policy hot reload: SIGHUP to `jitgate proxy` swaps policies without dropping a session."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import free_port
from tests.processes import JITGATE, issue_token

pytestmark = pytest.mark.e2e



def write_config(path: Path, port: int, metrics_port: int, upstream, roles, policy: str | None, *,
                 name: str = "demo", masking: dict[str, object] | None = None) -> None:
    resource: dict[str, object] = {"upstream": {
        "host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable",
        "username": roles.rw_user, "password": roles.rw_password,
    }}
    if policy is not None:
        resource["policy"] = policy
    if masking is not None:
        resource["masking"] = masking
    path.write_text(yaml.safe_dump({
        "data_dir": str(path.parent / "data"),
        "broker_url": "sqla+sqlite:///" + str(path.parent / "celery.db"),
        "proxy": {"listen_port": port, "review_wait_seconds": 0.5, "metrics_port": metrics_port},
        "resources": {name: resource},
    }))


def audit_types(config: Path) -> str:
    return subprocess.run([JITGATE, "audit", "export", "--config", str(config), "--format", "jsonl"],
                          capture_output=True, text=True, check=True).stdout


def start_proxy(config: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([JITGATE, "proxy", "--config", str(config)], stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "proxy.log").open("wb"), start_new_session=True)


def first_connection(proc: subprocess.Popen[bytes], port: int, token: str, tmp_path: Path) -> psycopg.Connection:
    """A session through the proxy `proc` just started, once it listens."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg.connect(f"postgresql://agent:{token}@127.0.0.1:{port}/demo", autocommit=True)
        except psycopg.OperationalError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
            time.sleep(0.2)


def test_sighup_reloads_the_policy_for_live_sessions_and_a_bad_file_changes_nothing(tmp_path, upstream, demo_roles):
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "jitgate.yaml"
    write_config(config, port, metrics_port, upstream, demo_roles, "observe")
    proc = start_proxy(config, tmp_path)
    try:
        token = issue_token(config, principal="agent:reload")
        conn = first_connection(proc, port, token, tmp_path)
        with conn:
            conn.execute("create temp table t_reload (id int)")
            assert conn.execute("delete from t_reload").statusmessage == "DELETE 0"  # observe: forwarded

            write_config(config, port, metrics_port, upstream, demo_roles, "agent-safe")
            _sighup_and_wait(proc, config)
            # Observe turned off: the session it served ends at its next statement (what it
            # made while observing was never judged), and a new one is enforced.
            with pytest.raises(psycopg.errors.AdminShutdown, match="observe"):
                conn.execute("delete from t_reload")
        conn = psycopg.connect(f"postgresql://agent:{token}@127.0.0.1:{port}/demo", autocommit=True)
        with conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="write-without-where"):
                conn.execute("delete from t_reload")
            assert conn.execute("select 1").fetchone() == (1,)  # not dropped by a refusal

            config.write_text(config.read_text().replace("policy: agent-safe", "policy: no-such-preset"))
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while '"ok":false' not in audit_types(config).replace(" ", ""):
                assert time.monotonic() < deadline, "a failed reload was not audited"
                time.sleep(0.2)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # the good policy stayed
                conn.execute("delete from t_reload")
        # The proxy process serves its own metrics: the statements it judged are counted there.
        import httpx

        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        counts = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines() if line.startswith("jitgate_statements_total{")
        }
        assert counts.get('decision="allow"', 0) >= 2, counts  # create, delete, select, ... in this process
        assert "# TYPE jitgate_sessions_active gauge" in scraped
        exported = audit_types(config)
        assert '"type":"policy.reload"' in exported.replace(" ", "")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _reloads(config: Path) -> int:
    return audit_types(config).replace(" ", "").count('"type":"policy.reload"')


def _sighup_and_wait(proc: subprocess.Popen[bytes], config: Path) -> None:
    """SIGHUP, then until the reload is in the audit chain (it is applied before it is audited)."""
    before = _reloads(config)
    os.kill(proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _reloads(config) == before:
        assert time.monotonic() < deadline, "the reload was never audited"
        time.sleep(0.1)


def test_a_reload_reaches_a_live_sessions_masking_and_removing_the_resource_undoes_nothing(
    tmp_path, upstream, demo_roles
):
    """Found by red-teaming the fast path's policy check: (1) a reload that masks another
    column reached new sessions only: a live session, prepared statement or not, kept reading
    the column in the clear; (2) a reload that removed the resource put live sessions back on
    the policy they started with, undoing a block added by a reload in between. Now a live
    session masks by the latest masking from its next statement (masking turned off or on
    too), and keeps the last policy it had when its resource is removed."""
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute("drop table if exists rt_reload; create table rt_reload (id int, note text);"
                      " insert into rt_reload values (1, 'top-secret-note'); grant select on rt_reload to public")
    blocking = tmp_path / "blocking.yaml"
    blocking.write_text("preset: agent-safe\nrules:\n  - id: rt-reload\n    match: {tables: [rt_reload]}\n"
                        "    decision: block\n    reason: the reload took it away\n")
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "jitgate.yaml"
    write_config(config, port, metrics_port, upstream, demo_roles, "agent-safe")
    proc = start_proxy(config, tmp_path)
    try:
        token = issue_token(config, principal="agent:reload-mask")
        conn = first_connection(proc, port, token, tmp_path)
        prepared = "select note from rt_reload where id = %s"
        with conn:
            for _ in range(4):  # prepared and repeated: the fast path takes it
                assert conn.execute(prepared, (1,), prepare=True).fetchone() == ("top-secret-note",)

            # (1) note is masked by a reload: from the next statement, prepared or not.
            write_config(config, port, metrics_port, upstream, demo_roles, "agent-safe",
                         masking={"extra_columns": ["note"]})
            _sighup_and_wait(proc, config)
            for _ in range(3):
                (note,) = conn.execute(prepared, (1,), prepare=True).fetchone()
                assert "top-secret" not in note, note
            (note,) = conn.execute("select note from rt_reload").fetchone()
            assert "top-secret" not in note, note

            # (2) blocked by a reload, then the resource removed: still blocked.
            write_config(config, port, metrics_port, upstream, demo_roles, str(blocking),
                         masking={"extra_columns": ["note"]})
            _sighup_and_wait(proc, config)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(prepared, (1,), prepare=True)
            write_config(config, port, metrics_port, upstream, demo_roles, "agent-safe", name="elsewhere")
            _sighup_and_wait(proc, config)
            for _ in range(2):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(prepared, (1,), prepare=True)
            assert conn.execute("select 1").fetchone() == (1,)  # not dropped

            # (3) masking turned off, then on again, between statements: taken as it comes.
            write_config(config, port, metrics_port, upstream, demo_roles, "agent-safe",
                         masking={"enabled": False})
            _sighup_and_wait(proc, config)
            assert conn.execute(prepared, (1,), prepare=True).fetchone() == ("top-secret-note",)
            write_config(config, port, metrics_port, upstream, demo_roles, "agent-safe",
                         masking={"extra_columns": ["note"]})
            _sighup_and_wait(proc, config)
            (note,) = conn.execute(prepared, (1,), prepare=True).fetchone()
            assert "top-secret" not in note, note
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
