"""`jitgate api` as a real process: serves /readyz from its config, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

# The command module alone, as `jitgate` registers it: the test does not depend on main.py.
RUNNER = """
import typer
from broker.cli import api_cmd
app = typer.Typer()
@app.callback()
def root() -> None: ...
api_cmd.register(app)
app()
"""


def test_api_serves_health_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "jitgate.yaml"
    config.write_text(f"data_dir: {tmp_path}\napi: {{port: {port}}}\n", encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, "api", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 30
        resp = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert resp is not None, (proc.stdout.read() if proc.stdout else b"").decode()
        assert resp.status_code == 200 and resp.json()["checks"] == {"store": "ok"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert (tmp_path / "jitgate.db").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()


def test_api_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "jitgate.yaml"
    config.write_text("api: {port: -1}\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "api", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2
    assert "api.port" in result.stderr


def test_api_refuses_to_start_when_its_configured_redis_is_down(tmp_path: Path) -> None:
    config = tmp_path / "jitgate.yaml"
    config.write_text(
        f"data_dir: {tmp_path}\napi: {{port: {free_port()}}}\nbroker_url: redis://127.0.0.1:{free_port()}/0\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, "api", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 2, result.stderr
    assert "broker_url" in result.stderr
