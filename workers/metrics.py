"""The worker's Prometheus endpoint (`worker.metrics_port`).

What the worker counts (witness deliveries, approvals it expires, Slack and Vault errors) moves
in the prefork pool's child processes, where the tasks run; the main process only consumes
and hands out messages. A child is forked, numbered and replaced by the pool, so an endpoint
per child would be N ports that come and go. So prometheus_client's multiprocess mode: each
process keeps its values in an mmap'd file of its own in one directory, and the main process
serves their sum on the one port. A child that exits leaves its file, so a total never goes
back when the pool replaces a child.

The mode is fixed when prometheus_client is imported (by `PROMETHEUS_MULTIPROC_DIR`), which in
`jitgate worker` is long before the configuration is read. So a worker with a metrics port
that started without that variable re-executes itself once, before its pool starts, with the
same command line and the variable naming a fresh `<data_dir>/worker-metrics`. A directory the
environment already names is used as it is (empty it before each start, as prometheus_client
requires).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import structlog
from celery import Celery
from celery.signals import celeryd_init, worker_process_shutdown
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from broker.config import Settings

log = structlog.get_logger("jitgate.workers")

ENV = "PROMETHEUS_MULTIPROC_DIR"


def serve_metrics(app: Celery, settings: Settings) -> None:
    """Serve the worker's metrics on `worker.metrics_port` when `app` runs as a worker."""
    port = settings.worker.metrics_port
    if port is None:
        return
    host = settings.worker.metrics_host
    fresh = Path(settings.data_dir) / "worker-metrics"

    def on_start(*, instance: Any, **_: Any) -> None:
        if instance.app is not app:
            return
        where = os.environ.get(ENV)
        if not where:
            _restart_in_multiprocess_mode(fresh)
            return  # not reached
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=where)
        start_http_server(port, addr=host, registry=registry)
        log.info("worker_metrics_serving", host=host, port=port)

    def on_child_exit(*, pid: int, **_: Any) -> None:
        where = os.environ.get(ENV)
        if where:
            mark_process_dead(pid, where)  # only live gauges' files go; counters stay

    uid = f"jitgate-worker-metrics-{id(app)}"
    celeryd_init.connect(on_start, weak=False, dispatch_uid=uid)
    worker_process_shutdown.connect(on_child_exit, weak=False, dispatch_uid=uid)


def _restart_in_multiprocess_mode(directory: Path) -> None:
    """Exec this process again, same interpreter, options and arguments, in multiprocess mode
    with an empty `directory` (stale files would add a previous run's counts)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    log.info("worker_metrics_restart", directory=str(directory))
    sys.stdout.flush()
    sys.stderr.flush()
    # The same program, arguments and interpreter options: no shell, nothing from outside.
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, ENV: str(directory)})  # noqa: S606
