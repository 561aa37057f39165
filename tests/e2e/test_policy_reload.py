"""Policy hot reload: SIGHUP to `jitgate proxy` swaps policies without dropping a session."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


@dataclass
class ReloadedProxy:
    """A `jitgate proxy` on `config`, whose policy a test rewrites and reloads."""

    config: Path
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]
    upstream: Any
    roles: Any
    token: str

    def configure(self, policy: str | None, **kw: Any) -> None:
        write_config(self.config, self.port, self.metrics_port, self.upstream, self.roles, policy, **kw)

    def reload(self, policy: str | None, **kw: Any) -> None:
        """Rewrite the config, SIGHUP, and wait until the reload is in the audit chain."""
        self.configure(policy, **kw)
        _sighup_and_wait(self.proc, self.config)

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(f"postgresql://agent:{self.token}@127.0.0.1:{self.port}/demo", autocommit=True)


@contextmanager
def reloaded_proxy(
    tmp_path: Path, upstream: Any, roles: Any, policy: str, principal: str
) -> Iterator[tuple[ReloadedProxy, psycopg.Connection]]:
    """A proxy started on `policy` and a first session through it as `principal`; the proxy
    is stopped (SIGTERM) at the end."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "jitgate.yaml"
    write_config(config, port, metrics_port, upstream, roles, policy)
    proc = start_proxy(config, tmp_path)
    try:
        token = issue_token(config, principal=principal)
        proxy = ReloadedProxy(config, port, metrics_port, proc, upstream, roles, token)
        deadline = time.monotonic() + 30
        while True:  # until it listens
            try:
                conn = proxy.connect()
                break
            except psycopg.OperationalError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "proxy.log").read_text()
                time.sleep(0.2)
        yield proxy, conn
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_sighup_reloads_the_policy_for_live_sessions_and_a_bad_file_changes_nothing(tmp_path, upstream, demo_roles):
    with reloaded_proxy(tmp_path, upstream, demo_roles, "observe", "agent:reload") as (proxy, conn):
        config, proc = proxy.config, proxy.proc
        with conn:
            conn.execute("create temp table t_reload (id int)")
            assert conn.execute("delete from t_reload").statusmessage == "DELETE 0"  # observe: forwarded

            proxy.reload("agent-safe")
            # Observe turned off: the session it served ends at its next statement (what it
            # made while observing was never judged), and a new one is enforced.
            with pytest.raises(psycopg.errors.AdminShutdown, match="observe"):
                conn.execute("delete from t_reload")
        with proxy.connect() as conn:
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

        scraped = httpx.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=5).text
        counts = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines() if line.startswith("jitgate_statements_total{")
        }
        assert counts.get('decision="allow"', 0) >= 2, counts  # create, delete, select, ... in this process
        assert "# TYPE jitgate_sessions_active gauge" in scraped
        exported = audit_types(config)
        assert '"type":"policy.reload"' in exported.replace(" ", "")
        assert proc.poll() is None


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
    with reloaded_proxy(tmp_path, upstream, demo_roles, "agent-safe", "agent:reload-mask") as (proxy, conn):
        prepared = "select note from rt_reload where id = %s"
        with conn:
            for _ in range(4):  # prepared and repeated: the fast path takes it
                assert conn.execute(prepared, (1,), prepare=True).fetchone() == ("top-secret-note",)

            # (1) note is masked by a reload: from the next statement, prepared or not.
            proxy.reload("agent-safe", masking={"extra_columns": ["note"]})
            for _ in range(3):
                (note,) = conn.execute(prepared, (1,), prepare=True).fetchone()
                assert "top-secret" not in note, note
            (note,) = conn.execute("select note from rt_reload").fetchone()
            assert "top-secret" not in note, note

            # (2) blocked by a reload, then the resource removed: still blocked.
            proxy.reload(str(blocking), masking={"extra_columns": ["note"]})
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(prepared, (1,), prepare=True)
            proxy.reload("agent-safe", name="elsewhere")
            for _ in range(2):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(prepared, (1,), prepare=True)
            assert conn.execute("select 1").fetchone() == (1,)  # not dropped

            # (3) masking turned off, then on again, between statements: taken as it comes.
            proxy.reload("agent-safe", masking={"enabled": False})
            assert conn.execute(prepared, (1,), prepare=True).fetchone() == ("top-secret-note",)
            proxy.reload("agent-safe", masking={"extra_columns": ["note"]})
            (note,) = conn.execute(prepared, (1,), prepare=True).fetchone()
            assert "top-secret" not in note, note
        assert proxy.proc.poll() is None
