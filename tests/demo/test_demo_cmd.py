"""`jitgate demo --reset` and the one-demo-per-data-dir lock (the full demo: tests/e2e/test_demo.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from broker.cli.demo_cmd import LOCK_NAME, MARKER, DemoLock, DemoRunning, NotADemoDir, reset_demo
from broker.demo.upstream import is_alive, start_upstream

JITGATE = str(Path(sys.executable).parent / "jitgate")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Under /tmp: as root the server runs as another account, which must reach the files.
    path = Path(tempfile.mkdtemp(prefix="jitgate-demo-reset-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_reset_stops_a_crashed_demos_upstream_and_deletes_its_state(data_dir: Path, tmp_path: Path) -> None:
    lock = DemoLock.acquire(data_dir)
    try:
        # What a demo killed with SIGKILL leaves behind: its PostgreSQL, its files, its info files.
        up = start_upstream(data_dir / "upstream")
        postmaster = psutil.Process(up.pid)
        (data_dir / "jitgate.db").write_text("store")
        (data_dir / "worker.yaml").write_text("secrets")
        info_files = [tmp_path / "demo.json", tmp_path / "agent.json"]
        for path in info_files:
            path.write_text("{}")
        unrelated = tmp_path / "keep.json"
        unrelated.write_text("{}")

        reset_demo(lock.data_dir, info_files)

        assert not is_alive(postmaster)
        assert sorted(p.name for p in data_dir.iterdir()) == sorted([LOCK_NAME, MARKER])
        assert not any(p.exists() for p in info_files)
        assert unrelated.exists()
        reset_demo(lock.data_dir, info_files)  # nothing left to delete: still fine
    finally:
        lock.release()


def test_one_demo_per_data_dir(data_dir: Path) -> None:
    first = DemoLock.acquire(data_dir)
    try:
        with pytest.raises(DemoRunning, match="another `jitgate demo` is running"):
            DemoLock.acquire(data_dir)
        # --reset refuses too, before it deletes anything.
        (data_dir / "jitgate.db").write_text("store")
        refused = subprocess.run([JITGATE, "demo", "--reset", "--data-dir", str(data_dir),
                                  "--info-file", str(data_dir / "demo.json")],
                                 capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1
        assert "another `jitgate demo` is running" in refused.stderr
        assert (data_dir / "jitgate.db").exists()
    finally:
        first.release()
    DemoLock.acquire(data_dir).release()  # released with its holder


def test_a_directory_holding_something_else_is_never_tightened_or_emptied(tmp_path: Path) -> None:
    """`--data-dir .` in a project: refused before anything is changed, --reset included."""
    project = tmp_path / "project"
    project.mkdir(mode=0o755)
    source = project / "main.py"
    source.write_text("print('mine')")
    source.chmod(0o644)
    with pytest.raises(NotADemoDir, match="holds no jitgate demo"):
        DemoLock.acquire(project)
    refused = subprocess.run([JITGATE, "demo", "--reset", "--data-dir", str(project),
                              "--info-file", str(tmp_path / "demo.json")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "holds no jitgate demo" in refused.stderr
    assert source.read_text() == "print('mine')"
    assert source.stat().st_mode & 0o777 == 0o644 and project.stat().st_mode & 0o777 == 0o755
    assert not (project / MARKER).exists() and not (project / LOCK_NAME).exists()
    with pytest.raises(NotADemoDir):  # and reset_demo itself checks the mark
        reset_demo(project, [])


def test_an_older_demos_directory_is_adopted(data_dir: Path) -> None:
    (data_dir / "jitgate.db").write_text("store")  # an older demo's, from before the mark
    DemoLock.acquire(data_dir).release()
    assert (data_dir / MARKER).is_file()


def test_the_demos_worker_keeps_the_users_worker_section(data_dir: Path) -> None:
    # A real worker, started as the demo starts it: the user's worker.metrics_port is served.
    import httpx
    import yaml
    from pydantic import SecretStr

    from broker.cli.demo_cmd import _start_worker, _stop_worker
    from broker.config import Settings, WorkerSettings
    from tests.conftest import free_port
    from tests.processes import wait_port

    port = free_port()
    settings = Settings(data_dir=data_dir, store_url=SecretStr(f"sqlite+aiosqlite:///{data_dir}/jitgate.db"),
                        installation="demo-worker-section", worker=WorkerSettings(metrics_port=port))
    worker = _start_worker(settings)
    try:
        wait_port(port, worker, data_dir / "worker.log")
        assert "jitgate_" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        _stop_worker(worker)
    written = yaml.safe_load((data_dir / "worker.yaml").read_text())
    assert written["worker"]["metrics_port"] == port
