"""The demo's files are readable by its own user only.

Its data dir holds the store (recorded statements with their literals, the audit chain,
approvals, token hashes), the worker's config, log and beat schedule, the audit keys and the
upstream's state file. So `jitgate demo`:

- runs under umask 077 (`private_umask()`), which its children inherit (the Celery worker,
  OpenBao, PostgreSQL): every file and directory they create is 0600 / 0700, SQLite's `-wal`
  and `-shm` included (they take the database file's mode);
- creates its data dir 0700, and the info files' directory when it makes it; one that an
  older demo left open (0755, 0644 files) is tightened, with a notice (`prepare_demo_dirs`).
  An existing info-file directory is tightened only when it is jitgate's own `.jitgate`: with
  `--info-file ./demo.json` it is the user's project directory, not ours to change (the info
  files themselves are always 0600).

As root, PostgreSQL runs as its own account, which must traverse the data dir:
broker/demo/upstream.py grants that to the account's group (g=x), not to everybody, and such
a grant is not "open" here.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

PRIVATE_UMASK = 0o077
OWN_INFO_DIR = ".jitgate"
#: Managed by broker/demo/upstream.py, which sets its own modes (the cluster's files belong to
#: the server's account as root, and postgres insists on them).
_SKIP = frozenset({"upstream"})


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Umask 077 for the block (and every child started in it); the old one after."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def prepare_demo_dirs(data_dir: Path, info_dirs: Iterable[Path]) -> list[str]:
    """Create `data_dir` and the info files' directories 0700, tighten what an older demo left
    open, and return one notice per change (empty when there was nothing to do)."""
    notices = []
    for path, ours in [(data_dir, True), *((d, d.name == OWN_INFO_DIR) for d in info_dirs)]:
        existed = path.exists()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if existed and not ours:
            continue
        old = _tighten(path)
        if old is not None:
            notices.append(f"{path} was open to other users (mode {oct(old)}): now {oct(old & 0o700)}")
    files = dirs = 0
    for path in _walk(data_dir):
        if _tighten(path) is not None:
            if path.is_dir():
                dirs += 1
            else:
                files += 1
    if files or dirs:
        notices.append(f"{files} files and {dirs} directories under {data_dir} were open to other users "
                       "(an older demo's): now private")
    return notices


def _walk(root: Path) -> Iterator[Path]:
    for child in root.iterdir():
        if child.name in _SKIP or child.is_symlink():
            continue
        yield child
        if child.is_dir():
            yield from _walk(child)


def _tighten(path: Path) -> int | None:
    """Take group and other access off `path`; its old mode if that changed anything."""
    info = path.lstat()
    mode = stat.S_IMODE(info.st_mode)
    extra = mode & 0o077
    if extra == 0:
        return None
    # The traverse-only grant upstream.py gives the server account's group (as root).
    if stat.S_ISDIR(info.st_mode) and extra == 0o010 and info.st_gid != os.getegid():
        return None
    path.chmod(mode & 0o700)
    return mode
