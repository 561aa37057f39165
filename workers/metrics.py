"""The worker's Prometheus endpoint (`worker.metrics_port`).

What the worker counts (witness deliveries, approvals it expires, Slack and Vault errors) moves
in the prefork pool's child processes, where the tasks run; the main process only consumes
and hands out messages. A child is forked, numbered and replaced by the pool, so an endpoint
per child would be N ports that come and go. So prometheus_client's multiprocess mode: each
process keeps its values in an mmap'd file of its own in one directory, and the main process
serves their sum on the one port. A child that exits leaves its counters' file, so a total
never goes back when the pool replaces a child; its gauges' series go (`_forget_dead`).

The mode is fixed when prometheus_client is imported (by `PROMETHEUS_MULTIPROC_DIR`), which in
`jitgate worker` is long before the configuration is read. So a worker with a metrics port
that started without that variable re-executes itself once, before its pool starts, with the
same command line and the variable naming a directory of its own, private (0700), under
`<data_dir>/worker-metrics/`: workers that share a data dir never read or remove each other's
files. The directory holds a `lock` file the worker keeps locked (flock, inherited by its pool)
while it runs; it is removed when the worker exits, and one whose lock is free (its worker was
killed) is removed by the next worker to start. A directory the environment already names is
used as it is (empty it before each start, as prometheus_client requires).

Configured monitoring fails loudly: a port that cannot be bound, or a directory or re-exec that
fails, stops the worker before its pool starts (SystemExit naming `worker.metrics_port` and the
cause). A Celery signal handler's exceptions are only logged, but SystemExit is not one of them.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
from celery import Celery
from celery.signals import celeryd_init, worker_process_shutdown
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from broker.config import Settings

log = structlog.get_logger("jitgate.workers")

ENV = "PROMETHEUS_MULTIPROC_DIR"
OWNER_ENV = "JITGATE_WORKER_METRICS_OWNER"  # the pid of the worker that made the directory
LOCK = "lock"
# Gauges whose series are per process: a dead process's are stale (live*: mark_process_dead;
# "all": one series per pid). Counters, histograms and summing gauges keep a dead one's values.
_PER_PROCESS = re.compile(r"gauge_(all|liveall|livesum|livemax|livemin|livemostrecent)_(\d+)\.db")


def serve_metrics(app: Celery, settings: Settings) -> None:
    """Serve the worker's metrics on `worker.metrics_port` when `app` runs as a worker."""
    port = settings.worker.metrics_port
    if port is None:
        return
    host = settings.worker.metrics_host
    base = Path(settings.data_dir) / "worker-metrics"

    def on_start(*, instance: Any, **_: Any) -> None:
        if instance.app is not app:
            return
        try:
            where = os.environ.get(ENV)
            if not where:
                _restart_in_multiprocess_mode(base)  # only returns by raising
            assert where is not None
            if os.environ.get(OWNER_ENV) == str(os.getpid()):
                atexit.register(_remove_own, Path(where))
            registry = CollectorRegistry()
            registry.register(_Collector(Path(where)))
            start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            _refuse(host, port, exc)
        log.info("worker_metrics_serving", host=host, port=port, directory=where)

    def on_child_exit(*, pid: int, **_: Any) -> None:
        where = os.environ.get(ENV)
        if where:
            mark_process_dead(pid, where)  # live gauges; the "all" ones go at the next scrape

    uid = f"jitgate-worker-metrics-{id(app)}"
    celeryd_init.connect(on_start, weak=False, dispatch_uid=uid)
    worker_process_shutdown.connect(on_child_exit, weak=False, dispatch_uid=uid)


def _refuse(host: str, port: int, exc: OSError) -> None:
    why = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename else ""
    message = (
        f"worker.metrics_port {port}: cannot serve the worker's metrics on {host}:{port}: {why}{where}. "
        f"Not starting without the monitoring it is configured with: free the port, or change or unset "
        f"worker.metrics_port"
    )
    log.error("worker_metrics_failed", host=host, port=port, error=why)
    raise SystemExit(message)


class _Collector:
    """The sum over the directory's files, after dropping the gauge series of processes that
    are gone (a child the pool replaced, even one killed before it could clean up). One scrape
    at a time: a file removed while another scrape reads the directory would fail that one."""

    def __init__(self, where: Path) -> None:
        self._where = where
        self._inner = MultiProcessCollector(None, path=str(where))
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            _forget_dead(self._where)
            return list(self._inner.collect())


def _forget_dead(where: Path) -> None:
    """Remove the per-process gauge files of pids that are not running. The directory is this
    worker's own, so its pids are of this worker's processes, in this pid namespace."""
    for entry in os.scandir(where):
        match = _PER_PROCESS.fullmatch(entry.name)
        if match is None or _alive(int(match[2])):
            continue
        mark_process_dead(int(match[2]), str(where))
        Path(entry.path).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _restart_in_multiprocess_mode(base: Path) -> None:
    """Exec this process again, same interpreter, options and arguments, in multiprocess mode
    with a new, empty directory of its own under `base`, locked for as long as it runs."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    _remove_stale(base)
    directory = _claim(base)
    log.info("worker_metrics_restart", directory=str(directory))
    sys.stdout.flush()
    sys.stderr.flush()
    env = {**os.environ, ENV: str(directory), OWNER_ENV: str(os.getpid())}  # execve keeps the pid
    # The same program, arguments and interpreter options: no shell, nothing from outside.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # noqa: S606


def _claim(base: Path) -> Path:
    """A new directory under `base` (0700), locked before it appears under its name: another
    worker's `_remove_stale` never sees it without its lock held. The lock's descriptor stays
    open across the exec and is inherited by the pool: the lock lasts as long as any of them."""
    building = Path(tempfile.mkdtemp(prefix=".new-", dir=base))
    fd = os.open(building / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.set_inheritable(fd, True)
    directory = base / f"{os.getpid()}-{building.name.removeprefix('.new-')}"
    os.rename(building, directory)
    return directory


def _remove_stale(base: Path) -> None:
    """Remove the directories of workers that are gone: their lock is free (or missing, which
    only an interrupted removal leaves). Files of the single shared directory older versions
    used are removed too."""
    for entry in os.scandir(base):
        path = Path(entry.path)
        if entry.is_file(follow_symlinks=False) and entry.name.endswith(".db"):
            path.unlink(missing_ok=True)
            continue
        if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
            continue
        try:
            fd = os.open(path / LOCK, os.O_RDWR)
        except FileNotFoundError:
            shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a running worker's
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _remove_own(directory: Path) -> None:
    if os.environ.get(OWNER_ENV) == str(os.getpid()):  # not in a forked child that exits normally
        shutil.rmtree(directory, ignore_errors=True)
