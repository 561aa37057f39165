"""Benchmark targets: what pgbench connects to, each in front of the same upstream.

A target is a name plus a context manager that starts whatever sits in front of the upstream
and yields the `Endpoint` pgbench should use. To add one, write a `start_*` function
`(upstream, workdir) -> (endpoint, process)` and register it in `TARGETS`; `ProcessTarget`
waits for the port, and stops the process afterwards. Raise `TargetUnavailable` when the
target cannot run on this machine; the harness reports it instead of failing the run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


class TargetUnavailable(Exception):
    """The target cannot run here (binary missing, not wired yet, ...); the reason says why."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)

    def dsn(self) -> str:
        auth = self.user + (f":{self.password}" if self.password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{self.dbname}"

    def libpq_env(self) -> dict[str, str]:
        """Connection settings for pgbench/psql as environment (keeps the password off argv)."""
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
               "PGDATABASE": self.dbname, "PGSSLMODE": "disable"}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


class Target(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, upstream: Endpoint, workdir: Path) -> AbstractContextManager[Endpoint]: ...


StartFn = Callable[[Endpoint, Path], tuple[Endpoint, "subprocess.Popen[bytes]"]]


@dataclass(frozen=True)
class Direct:
    """pgbench straight to the upstream: the baseline every ratio is relative to."""

    name: str = "direct"

    @contextmanager
    def run(self, upstream: Endpoint, workdir: Path) -> Iterator[Endpoint]:
        yield upstream


@dataclass(frozen=True)
class ProcessTarget:
    """A proxy started as a child process, ready once its TCP port accepts connections."""

    name: str
    start: StartFn
    ready_timeout: float = 15.0

    @contextmanager
    def run(self, upstream: Endpoint, workdir: Path) -> Iterator[Endpoint]:
        workdir.mkdir(parents=True, exist_ok=True)
        endpoint, proc = self.start(upstream, workdir)
        try:
            _wait_for_port(endpoint, proc, self.ready_timeout, workdir)
            yield endpoint
        finally:
            _terminate(proc)


# --- pgbouncer ------------------------------------------------------------------------------

def start_pgbouncer(upstream: Endpoint, workdir: Path) -> tuple[Endpoint, subprocess.Popen[bytes]]:
    """PgBouncer 1.18 in session mode, trust auth towards pgbench, on a free port."""
    binary = shutil.which("pgbouncer")
    if binary is None:
        raise TargetUnavailable("pgbouncer is not installed (apt-get install -y pgbouncer)")
    port = free_port()
    server_password = f" password={upstream.password}" if upstream.password else ""
    (workdir / "userlist.txt").write_text(f'"{upstream.user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(f"""\
[databases]
{upstream.dbname} = host={upstream.host} port={upstream.port} dbname={upstream.dbname} \
user={upstream.user}{server_password}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
; no unix socket: it would land in /tmp and could clash with another instance
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = session
max_client_conn = 200
default_pool_size = 32
ignore_startup_parameters = extra_float_digits,options
""")
    # PgBouncer refuses to run as root ("PgBouncer should not run as root").
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        kwargs = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        for path in (workdir, workdir / "userlist.txt", workdir / "pgbouncer.ini"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
    log = (workdir / "pgbouncer.log").open("wb")
    proc = subprocess.Popen(  # type: ignore[call-overload]
        [binary, str(workdir / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, cwd=workdir, **kwargs)
    log.close()  # the child holds its own copy
    return replace(upstream, host=HOST, port=port, password=None), proc


# --- jitgate --------------------------------------------------------------------------------

def start_jitgate(upstream: Endpoint, workdir: Path, workers: int = 1) -> tuple[Endpoint, subprocess.Popen[bytes]]:
    """jitgate with full inspection (classification + masking + recording) in front of
    `upstream`: agent-safe policy, default masking, every statement recorded in SQLite."""
    import yaml

    port = free_port()
    config = workdir / "jitgate.yaml"
    config.write_text(yaml.safe_dump({
        "data_dir": str(workdir / "data"),
        "log_level": "warning",
        # pgbench's clients share one token: no concurrent-session caps here.
        "proxy": {"listen_port": port, "max_sessions_per_agent": None, "max_sessions_per_token": None},
        "resources": {upstream.dbname: {
            "upstream": {"host": upstream.host, "port": upstream.port, "dbname": upstream.dbname,
                         "sslmode": "disable", "username": upstream.user,
                         "password": upstream.password},
            "policy": "agent-safe",
        }},
    }))
    jitgate = str(Path(sys.executable).parent / "jitgate")
    token = subprocess.run(
        [jitgate, "token", "issue", "--config", str(config), "--resource", upstream.dbname,
         "--role", "readwrite", "--principal", "agent:bench", "--group", "ai-agents",
         "--ttl", "2h", "--reusable"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    log = (workdir / "jitgate.log").open("wb")
    proc = subprocess.Popen([jitgate, "proxy", "--config", str(config), "--workers", str(workers)],
                            stdout=log, stderr=subprocess.STDOUT)
    return replace(upstream, host=HOST, port=port, user="bench-agent", password=token), proc


def start_python_copy(upstream: Endpoint, workdir: Path) -> tuple[Endpoint, subprocess.Popen[bytes]]:
    """bench/copy_relay.py: bytes copied both ways by uvloop, nothing inspected."""
    port = free_port()
    log = (workdir / "copy_relay.log").open("wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "copy_relay.py"), str(port), upstream.host,
                             str(upstream.port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return replace(upstream, host=HOST, port=port), proc


TARGETS: dict[str, Target] = {
    "direct": Direct(),
    "jitgate": ProcessTarget("jitgate", start_jitgate),
    # Two processes on one port (SO_REUSEPORT), as `jitgate proxy --workers 2` deploys.
    "jitgate-2w": ProcessTarget("jitgate-2w", lambda up, wd: start_jitgate(up, wd, workers=2)),
    "pgbouncer": ProcessTarget("pgbouncer", start_pgbouncer),
    # The ceiling for any Python proxy here: a uvloop byte copier that inspects nothing.
    "python-copy": ProcessTarget("python-copy", start_python_copy),
}


# --- helpers --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(endpoint: Endpoint, proc: subprocess.Popen[bytes], timeout: float,
                   workdir: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetUnavailable(f"exited with {proc.returncode} before listening; "
                                    f"see logs in {workdir}")
        try:
            with socket.create_connection((endpoint.host, endpoint.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    _terminate(proc)
    raise TargetUnavailable(f"not listening on {endpoint.host}:{endpoint.port} "
                            f"after {timeout}s; see logs in {workdir}")


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
