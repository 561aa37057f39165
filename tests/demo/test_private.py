"""The demo's files are its user's alone: the store (recorded statements with their literals,
the audit chain, approvals, token hashes), the worker's log and schedule, the keys. Its
directories are 0700 (an older demo's are tightened, with a notice) and everything the demo
and its children create is made under umask 077. (The running demo: tests/e2e/test_demo.py.)"""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.demo.private import PRIVATE_UMASK, prepare_demo_dirs, private_umask
from broker.demo.upstream import SERVER_ACCOUNT, start_upstream


def shared_bits(root: Path) -> dict[str, str]:
    """Every path at or under `root` that grants anything to group or other, with its mode;
    a traverse-only grant to the embedded server's own group (as root, see upstream.py) aside."""
    server_gid = pwd.getpwnam(SERVER_ACCOUNT).pw_gid if os.geteuid() == 0 else None
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        extra = info.st_mode & 0o077
        if extra == 0 or (stat.S_ISDIR(info.st_mode) and extra == 0o010 and info.st_gid == server_gid):
            continue
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(info.st_mode))
    return found


@pytest.fixture
def workdir() -> Iterator[Path]:
    # Under /tmp: as root the server account must reach an upstream started in here.
    path = Path(tempfile.mkdtemp(prefix="jitgate-private-"))
    path.chmod(0o755)  # like a project directory
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)  # what a shell usually has: the demo must not rely on a stricter one
    try:
        yield
    finally:
        os.umask(old)


def test_a_fresh_demo_makes_its_directories_private(workdir: Path) -> None:
    jitgate = workdir / ".jitgate"
    data_dir = jitgate / "demo"
    with private_umask():
        assert prepare_demo_dirs(data_dir, [jitgate]) == []
    for path in (jitgate, data_dir):
        assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o700", path
    assert os.umask(0o022) == 0o022  # restored on the way out


def test_files_the_demo_and_its_children_create_are_private(workdir: Path) -> None:
    data_dir = workdir / "demo"
    with private_umask():
        assert os.umask(PRIVATE_UMASK) == 0o077
        prepare_demo_dirs(data_dir, [])
        db = sqlite3.connect(data_dir / "jitgate.db")  # the store: WAL, with -wal and -shm
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
        db.commit()
        (data_dir / "worker.log").open("ab").close()
        # A child (the Celery worker) inherits the umask: its beat schedule and files.
        subprocess.run([sys.executable, "-c", "open('celerybeat-schedule', 'w').write('x');"
                        "import os; os.mkdir('witness')"], cwd=data_dir, check=True)
        try:
            names = {p.name for p in data_dir.iterdir()}
            assert {"jitgate.db", "jitgate.db-wal", "jitgate.db-shm", "worker.log", "celerybeat-schedule",
                    "witness"} <= names
            assert shared_bits(data_dir) == {}
        finally:
            db.close()


def test_an_older_demos_files_are_tightened_with_a_notice(workdir: Path) -> None:
    jitgate = workdir / ".jitgate"
    data_dir = jitgate / "demo"
    (data_dir / "keys").mkdir(parents=True)
    for name in ("jitgate.db", "jitgate.db-wal", "worker.log", "keys/audit-signing.pub"):
        (data_dir / name).write_text("x")
    for path in (jitgate, data_dir, data_dir / "keys"):
        path.chmod(0o755)
    assert shared_bits(data_dir)  # 0644 files in 0755 directories, as before

    with private_umask():
        notices = prepare_demo_dirs(data_dir, [jitgate])
    assert shared_bits(data_dir) == {} and shared_bits(jitgate) == {}
    text = "\n".join(notices)
    assert str(data_dir) in text and str(jitgate) in text and "0o755" in text
    assert "4 files" in text  # and keys/ itself: 5 paths, 4 of them files
    with private_umask():
        assert prepare_demo_dirs(data_dir, [jitgate]) == []  # nothing left to say


def test_a_directory_the_demo_does_not_own_is_left_alone(workdir: Path) -> None:
    # `--info-file ./demo.json` puts the info files in the project directory itself.
    with private_umask():
        prepare_demo_dirs(workdir / "demo-data", [workdir])
    assert oct(stat.S_IMODE(workdir.stat().st_mode)) == "0o755"


def test_the_upstream_inside_a_private_data_dir_stays_private(workdir: Path) -> None:
    """As root the server runs as its own account and must traverse the data dir: that is a
    grant to its group, not to everybody."""
    data_dir = workdir / ".jitgate" / "demo"
    with private_umask():
        prepare_demo_dirs(data_dir, [workdir / ".jitgate"])
        up = start_upstream(data_dir / "upstream")
    try:
        assert shared_bits(data_dir) == {}
        assert shared_bits(workdir / ".jitgate") == {}
    finally:
        up.stop()
