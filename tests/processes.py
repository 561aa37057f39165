"""Running `jitgate` commands as real processes in tests and benchmarks.

    proc = start(["proxy", "--config", str(config)], log=tmp / "proxy.log")
    wait_port(port, proc, tmp / "proxy.log")
    token = issue_token(config, principal="agent:x")
    ...
    stop(proc)

Each process gets its own session (process group), so `stop` ends it with its children (a
Celery worker's pool, uvicorn's) and nothing is left running.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

JITGATE = str(Path(sys.executable).parent / "jitgate")


def start(args: Sequence[str], *, log: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [JITGATE, *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )


def witness_worker_config(tmp_path: Path, redis_url: str, name: str, **settings: Any) -> Path:
    """A `jitgate worker` config whose beat writes signed checkpoints every second to the file
    witness `tmp_path/worm/witness.jsonl`, with the key at `tmp_path/audit.pem` (the caller
    makes it), a SQLite store and its own installation, so no other worker takes its ticks.
    `settings` are further top-level keys (e.g. `worker={"metrics_port": ...}`)."""
    path = tmp_path / "jitgate.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "store_url": f"sqlite+aiosqlite:///{tmp_path}/jitgate.db",
        "broker_url": redis_url,
        "installation": f"{name}-{secrets.token_hex(4)}",
        "audit": {
            "signing_key_file": str(tmp_path / "audit.pem"),
            "witness": {"file": str(tmp_path / "worm" / "witness.jsonl"), "interval": "1s"},
        },
        **settings,
    }))
    return path


def start_worker(config: Path, log: Path, concurrency: int = 1) -> subprocess.Popen[bytes]:
    """A real `jitgate worker` (its beat included) on `config`, logging to `log`."""
    return start(["worker", "--config", str(config), "--concurrency", str(concurrency)], log=log,
                 env={"JITGATE_CONFIG": str(config)})


@contextmanager
def running_worker(config: Path, log: Path, concurrency: int) -> Iterator[Path]:
    """`start_worker` until the block ends."""
    proc = start_worker(config, log, concurrency)
    try:
        yield log
    finally:
        stop(proc)


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """Until 127.0.0.1:port accepts; fails with the log's tail if the process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never opened:\n{log.read_text()[-3000:]}")


def stop(procs: subprocess.Popen[bytes] | Iterable[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    """SIGTERM each process group, then SIGKILL what did not end within `timeout`."""
    group = [procs] if isinstance(procs, subprocess.Popen) else list(procs)
    for proc in group:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in group:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def issue_token(
    config: Path, *, resource: str = "demo", principal: str = "agent:test", group: str = "ai-agents",
    role: str = "readwrite", ttl: str = "1h",
) -> str:
    """A reusable gateway token from `jitgate token issue` (printed once, last word)."""
    out = subprocess.run(
        [JITGATE, "token", "issue", "--config", str(config), "--resource", resource, "--role", role,
         "--principal", principal, "--group", group, "--ttl", ttl, "--reusable"],
        capture_output=True, text=True, check=True,
    ).stdout
    return out.strip().split()[-1]
