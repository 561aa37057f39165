"""`jitgate demo` runs the proxy and the API in one process: the API's /metrics (named in the
banner) carries the proxy's metrics, so the Grafana panels have data pointed at the demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

JITGATE = str(Path(sys.executable).parent / "jitgate")


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_demo_serves_the_proxys_metrics_at_the_apis_metrics(tmp_path: Path) -> None:
    info_file = tmp_path / ".jitgate" / "demo.json"
    data_dir = Path("/tmp") / f"jitgate-demo-metrics-{os.getpid()}"
    proc = subprocess.Popen(
        [JITGATE, "demo", "--info-file", str(info_file), "--data-dir", str(data_dir),
         "--proxy-port", "0", "--api-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not info_file.exists():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "demo did not start in 120 s"
            time.sleep(0.2)
        info = json.loads(info_file.read_text())
        metrics_url = f"{info['api_url']}/metrics"
        before = values(httpx.get(metrics_url, timeout=10).text)
        with psycopg.connect(info["agent_dsn"], autocommit=True) as conn:
            conn.execute("select repeat('d', 20000)").fetchone()
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("select pg_read_file('/etc/passwd')")
        after = values(httpx.get(metrics_url, timeout=10).text)

        def moved(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0.0) - before.get(key, 0.0)

        # What the dashboard's panels query, moved by one agent session.
        assert moved("jitgate_proxy_bytes_total", direction="server_to_client") >= 20_000
        assert moved("jitgate_proxy_bytes_total", direction="client_to_server") > 0
        assert moved("jitgate_statements_total", decision="allow") >= 1
        assert moved("jitgate_statements_total", decision="block") == 1
        assert moved("jitgate_statement_seconds_count") >= 1
        assert moved("jitgate_masked_values_total") == 0  # (nothing masked was selected)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                out, _ = proc.communicate(timeout=10)
        else:
            out = proc.stdout.read() if proc.stdout else ""
        shutil.rmtree(data_dir, ignore_errors=True)
    assert f"{info['api_url']}/metrics" in out  # the banner says where
