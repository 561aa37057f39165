"""psycopg 3's own test suite, run at the upstream directly and through the gateway.

    python tools/conformance.py --psycopg-src ~/src/psycopg [--info-file .jitgate/demo.json]

The driver's connection, cursor, prepared-statement, COPY, pipeline, notification,
transaction, concurrency (cancel) and error tests, plus libpq-level `tests/pq` ones, run
twice with the same pytest options:

    direct   as a login role `jitgate_conformance`, created here `IN ROLE demo_rw` exactly as
             the demo's OpenBao `readwrite` role creates each session's login;
    gateway  as the demo agent, through `jitgate demo --policy observe` (everything forwarded
             unmasked, decisions only recorded), whose upstream login is such a dynamic role.

The suite creates tables and types in `public`, so for the run `demo_rw` (the group both
logins are members of and run as) gets CREATE on schema `public`. The gateway logs in as a new
role per session, and a table one session created must be droppable by the next: it is,
because each login's `role` setting makes the group the owner of what it creates (the direct
role is set up the same way). All of it (grant, created objects, the direct role) is removed
afterwards.

Without --info-file the script starts its own demo (free ports, a throw-away data dir) and
stops it at the end. It pip-installs into this interpreter's environment what the suite's
conftest needs and the venv lacks (anyio, pproxy), nothing else. Per-test outcomes come from
pytest's JUnit XML; the script prints both pass counts and every test whose outcome differs.
A difference not in ALLOWED below (gateway-owned by design, each with its reason) is run again
on both sides; the script exits 1 when one still differs (a flake that agrees is reported as
such), 0 otherwise. The psycopg checkout's version should be near the installed psycopg's
(`pip show psycopg`); tests failing for a version skew fail on both sides alike.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DIRECT_ROLE = "jitgate_conformance"
GROUP_ROLE = "demo_rw"  # broker/demo/seed.py RW_ROLE: what the `readwrite` lease is IN ROLE of

# The psycopg test files run (relative to the checkout). Left out: pool, crdb, types, typing,
# dns, gevent, module-level and client-side-only tests (no wire traffic worth comparing).
TEST_FILES = [
    "tests/test_connection.py", "tests/test_connection_async.py", "tests/test_connection_info.py",
    "tests/test_cursor.py", "tests/test_cursor_async.py",
    "tests/test_cursor_common.py", "tests/test_cursor_common_async.py",
    "tests/test_cursor_client.py", "tests/test_cursor_client_async.py",
    "tests/test_cursor_raw.py", "tests/test_cursor_raw_async.py",
    "tests/test_cursor_server.py", "tests/test_cursor_server_async.py",
    "tests/test_prepared.py", "tests/test_prepared_async.py",
    "tests/test_copy.py", "tests/test_copy_async.py",
    "tests/test_pipeline.py", "tests/test_pipeline_async.py",
    "tests/test_notify.py", "tests/test_notify_async.py",
    "tests/test_transaction.py", "tests/test_transaction_async.py",
    "tests/test_errors.py", "tests/test_sql.py",
    "tests/pq/test_pgconn.py", "tests/pq/test_exec.py", "tests/pq/test_async.py",
    "tests/pq/test_pipeline.py", "tests/pq/test_copy.py",
    "tests/test_concurrency.py",
    # Last: its final test (test_type_error_shadow) pipelines 3 x 50,000 INSERTs, which puts the
    # gateway's recorder past its high-water mark; the gateway then refuses statements (57P03,
    # fail closed) until the recorder has caught up, which would fail whatever ran next.
    "tests/test_concurrency_async.py",
]

# Differences that are the gateway's by design: fnmatch patterns on "file::test[param]".
# README "What the gateway owns" and "The gateway speaks UTF-8 only" say why each is so. ("[[]"
# is a literal "[" in fnmatch.)
_PID = ("BackendKeyData: the driver's backend_pid is the gateway's, not the upstream's, so "
        "pg_terminate_backend(conn.info.backend_pid) / pg_stat_activity.pid miss the backend")
_NOTIFY_PID = "BackendKeyData: a NotificationResponse carries the upstream PID, not the gateway's"
_ROLE = ("authentication: each gateway session logs in upstream as its own role, so another "
         "session's pg_stat_activity.query reads <insufficient privilege>")
_SETUP = ("authentication: a gateway connect mints the session's upstream credential (~40 ms "
          "more than a direct connect), which this timing test's margin does not absorb")
_UTF8 = "UTF-8 only: a client_encoding other than UTF8 is refused at start-up or ends the session"
_SCS = "lexing settings pinned: standard_conforming_strings off ends the session"
ALLOWED: dict[str, str] = {
    "tests/test_connection*.py::test_broken*": _PID,
    "tests/test_connection*.py::test_right_exception_on_server_disconnect*": _PID,
    "tests/test_connection*.py::test_context_inerror_rollback_no_clobber*": _PID,
    "tests/test_transaction*.py::test_context_inerror_rollback_no_clobber*": _PID,
    "tests/test_concurrency*.py::test_identify_closure*": _PID,
    "tests/test_concurrency*.py::test_concurrent_close*": _PID,
    "tests/test_notify*.py::test_notify": _NOTIFY_PID,
    "tests/test_notify*.py::test_notify[[]*": _NOTIFY_PID,
    "tests/test_notify*.py::test_notify_handlers*": _NOTIFY_PID,
    "tests/test_concurrency.py::test_notifies": _NOTIFY_PID,
    "tests/pq/test_pgconn.py::test_notify": _NOTIFY_PID,
    "tests/pq/test_pgconn.py::test_cancel_conn_*blocking": _ROLE,
    "tests/test_notify*.py::test_notify_timeout*": _SETUP,
    "tests/test_notify*.py::test_notify_query_notify*": _SETUP,
    "tests/test_connection_info.py::test_encoding_env_var[[]*": _UTF8,
    "tests/test_connection_info.py::test_normalize_encoding[[]*": _UTF8,
    "tests/test_connection_info.py::test_set_encoding_unsupported": _UTF8,
    "tests/test_cursor_*.py::test_*enc*[[]*latin?]": _UTF8,
    "tests/test_errors.py::test_*_encoding[[]latin9]": _UTF8,
    "tests/test_sql.py::Test*::test_as_bytes*[[]*latin9]": _UTF8,
    "tests/test_sql.py::TestIdentifier::test_as_bytes[[]*-ascii]": _UTF8,
    "tests/pq/test_pgconn.py::test_encoding": _UTF8,
    "tests/test_sql.py::test_quote_roundtrip[[]off]": _SCS,
    "tests/test_sql.py::test_quote_stable_despite_deranged_libpq[[]off]": _SCS,
}

# conftest imports / fixtures of the suite that a jitgate venv may lack (module -> package).
SUITE_DEPS = {"pytest": "pytest", "anyio": "anyio", "pproxy": "pproxy"}

# The suite creates tables and types in `public`. Every login runs as the group (its `role`
# setting, as broker/credentials/statements.py sets for each lease), so the group owns them.
_GROUP_SETUP = f"GRANT CREATE ON SCHEMA public TO {GROUP_ROLE}"

_TEARDOWN = f"REVOKE CREATE ON SCHEMA public FROM {GROUP_ROLE}"

# What the runs left in `public`, owned by the group or the direct role.
_LEFTOVERS = """
SELECT format('DROP %%s IF EXISTS %%s CASCADE',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                             ELSE 'TABLE' END, c.oid::regclass)
  FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
   AND pg_get_userbyid(c.relowner) = ANY(%(owners)s)
UNION ALL
SELECT format('DROP TYPE IF EXISTS %%s CASCADE', t.oid::regtype)
  FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid
 WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('c', 'e', 'd', 'r')
   AND (t.typrelid = 0 OR c.relkind = 'c') AND pg_get_userbyid(t.typowner) = ANY(%(owners)s)
UNION ALL
SELECT format('DROP ROUTINE IF EXISTS %%s CASCADE', p.oid::regprocedure)
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND pg_get_userbyid(p.proowner) = ANY(%(owners)s)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--psycopg-src", type=Path, default=Path(os.environ.get("PSYCOPG_SRC", "../psycopg")),
                        help="a psycopg source checkout (its tests/ are run); env PSYCOPG_SRC")
    parser.add_argument("--info-file", type=Path,
                        help="info JSON of a running `jitgate demo --policy observe` (default: start one)")
    parser.add_argument("--out", type=Path, default=ROOT / ".jitgate" / "conformance",
                        help="where the JUnit XML and pytest logs go")
    parser.add_argument("--timeout", type=int, default=60, help="per-test timeout, seconds")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k copy)")
    args = parser.parse_args(argv)

    src = args.psycopg_src.resolve()
    if not (src / "tests" / "conftest.py").is_file():
        print(f"no psycopg checkout at {src}: clone it first, at the installed version's tag:\n"
              f"  git clone --branch {psycopg.__version__} https://github.com/psycopg/psycopg {src}\n"
              "and pass --psycopg-src (or PSYCOPG_SRC=...)", file=sys.stderr)
        return 2
    _ensure_suite_deps()
    args.out.mkdir(parents=True, exist_ok=True)

    with ExitStack() as stack:
        info = _reuse_demo(args.info_file) if args.info_file else stack.enter_context(_DemoProcess())
        admin_dsn, agent_dsn = info["upstream_admin_dsn"], info["agent_dsn"]
        password = secrets.token_urlsafe(24)
        _setup(admin_dsn, password)
        stack.callback(_teardown, admin_dsn)
        direct_dsn = _with_user(admin_dsn, DIRECT_ROLE, password)

        results: dict[str, dict[str, str]] = {}
        for side, dsn in (("direct", direct_dsn), ("gateway", agent_dsn)):
            print(f"== {side}: psycopg {psycopg.__version__} tests at {_redact(dsn)}", flush=True)
            results[side] = _run_suite(src, dsn, args.out / side, args.timeout, args.pytest_args)

        # A difference no allow-list entry explains is run again on both sides: one that agrees
        # then was a flake (timing tests), reported as such; one that differs again fails the run.
        rerun: dict[str, dict[str, str]] = {}
        if again := [t for t in _differing(results["direct"], results["gateway"]) if not _allowed(t)]:
            for side, dsn in (("direct", direct_dsn), ("gateway", agent_dsn)):
                print(f"== {side}, again: the {len(again)} unexplained difference(s)", flush=True)
                rerun[side] = _run_suite(src, dsn, args.out / f"{side}-rerun", args.timeout,
                                         args.pytest_args, tests=again)

    return _report(results["direct"], results["gateway"], rerun)


def _ensure_suite_deps() -> None:
    missing = [pkg for mod, pkg in SUITE_DEPS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        print(f"installing the psycopg suite's test dependencies into {sys.prefix}: {' '.join(missing)}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *missing], check=True)  # noqa: S603 - fixed argv


class _DemoProcess:
    """`jitgate demo --policy observe` on free ports with a throw-away data dir."""

    def __enter__(self) -> dict[str, Any]:
        self.tmp = Path(tempfile.mkdtemp(prefix="jitgate-conformance-"))
        info_file = self.tmp / "demo.json"
        jitgate = Path(sys.executable).parent / "jitgate"
        self.log = open(self.tmp / "demo.log", "wb")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(  # noqa: S603 - our own jitgate
            [str(jitgate), "demo", "--policy", "observe", "--info-file", str(info_file),
             "--data-dir", str(self.tmp / "data"), "--proxy-port", "0", "--api-port", "0"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
        deadline = time.monotonic() + 300
        while not info_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise SystemExit(f"jitgate demo did not come up; its log: {self.tmp / 'demo.log'}")
            time.sleep(0.5)
        print(f"started jitgate demo --policy observe (pid {self.proc.pid}, log {self.tmp / 'demo.log'})")
        return dict(json.loads(info_file.read_text()))

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the demo's Ctrl-C: stops its children too
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _reuse_demo(info_file: Path) -> dict[str, Any]:
    info = dict(json.loads(info_file.read_text()))
    print(f"reusing the demo of {info_file} (it must run with --policy observe)")
    return info


def _with_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    user = (parts.username or "")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{parts.hostname}:{parts.port}"))


def _setup(admin_dsn: str, password: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        # As the demo's OpenBao `readwrite` role creates each session's login (VALID UNTIL aside).
        conn.execute(f"DROP ROLE IF EXISTS {DIRECT_ROLE}")
        conn.execute(f"CREATE ROLE {DIRECT_ROLE} LOGIN IN ROLE {GROUP_ROLE}")
        conn.execute(f"ALTER ROLE {DIRECT_ROLE} SET role = {GROUP_ROLE}")
        stmt = conn.execute("SELECT format('ALTER ROLE %%I PASSWORD %%L', %s::text, %s::text)",
                            (DIRECT_ROLE, password)).fetchone()
        assert stmt is not None
        conn.execute(stmt[0])
        conn.execute(_GROUP_SETUP)


def _teardown(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(_TEARDOWN)
        for (stmt,) in conn.execute(_LEFTOVERS, {"owners": [GROUP_ROLE, DIRECT_ROLE]}).fetchall():
            try:
                conn.execute(stmt)
            except psycopg.Error as exc:  # dropped already by a CASCADE before it
                if not isinstance(exc, psycopg.errors.UndefinedObject):
                    print(f"clean-up: {stmt}: {exc}", file=sys.stderr)
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DIRECT_ROLE,)).fetchone():
            conn.execute(f"DROP OWNED BY {DIRECT_ROLE}")
            conn.execute(f"DROP ROLE {DIRECT_ROLE}")


def _run_suite(src: Path, dsn: str, out: Path, timeout: int, extra: list[str],
               tests: list[str] | None = None) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    junit = out / "junit.xml"
    junit.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pytest", *(tests or TEST_FILES), f"--test-dsn={dsn}",
           f"--rootdir={src}", "-c", str(src / "pyproject.toml"), f"--junitxml={junit}",
           # psycopg's conftest writes the pytest cache at session start: keep it out of src.
           "-o", f"cache_dir={out / 'cache'}",
           # Test order fixed; pytest-asyncio (jitgate's) off: psycopg's async tests use anyio.
           "-p", "no:randomly", "-p", "no:asyncio", "-q", "-rN", *extra]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={timeout}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "PSYCOPG_TEST_DSN"}
    # The suite's `proxy` fixture runs pproxy (through its tools/pproxy_fix.py), which installs
    # uvloop whenever it imports, and then fails on uvloop's get_event_loop(). jitgate's venv
    # has uvloop; hide it from the test processes (psycopg's tests use it only with --loop uvloop).
    shim = out / "no-uvloop"
    (shim / "uvloop").mkdir(parents=True, exist_ok=True)
    (shim / "uvloop" / "__init__.py").write_text('raise ModuleNotFoundError("hidden by tools/conformance.py")\n')
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    started = time.monotonic()
    with open(out / "pytest.log", "wb") as log:
        rc = subprocess.run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT).returncode  # noqa: S603
    print(f"   pytest exit {rc} in {time.monotonic() - started:.0f}s, log {out / 'pytest.log'}", flush=True)
    if not junit.exists():
        raise SystemExit(f"pytest wrote no JUnit XML; see {out / 'pytest.log'}")
    return _outcomes(junit)


def _outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed / failed / error / skipped, from pytest's JUnit XML."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).iter("testcase"):  # noqa: S314 - pytest wrote it, here
        module, _, cls = case.get("classname", "").partition(".Test")
        test_id = module.replace(".", "/") + ".py::" + (f"Test{cls}::" if cls else "") + case.get("name", "")
        tags = {child.tag for child in case}
        outcome = ("error" if "error" in tags else "failed" if "failure" in tags
                   else "skipped" if "skipped" in tags else "passed")
        # An error in teardown after a pass is reported as a second element: keep the worst.
        if outcomes.get(test_id) in ("failed", "error") and outcome in ("passed", "skipped"):
            continue
        outcomes[test_id] = outcome
    return outcomes


def _differing(direct: dict[str, str], gateway: dict[str, str]) -> list[str]:
    return sorted(t for t in direct.keys() | gateway.keys() if direct.get(t) != gateway.get(t))


def _allowed(test: str) -> str | None:
    """The allow-list pattern that explains a difference in `test`, if any."""
    return next((pattern for pattern in ALLOWED if fnmatch.fnmatchcase(test, pattern)), None)


def _report(direct: dict[str, str], gateway: dict[str, str], rerun: dict[str, dict[str, str]]) -> int:
    def passed(results: dict[str, str]) -> int:
        return sum(1 for outcome in results.values() if outcome == "passed")

    print(f"\ndirect:  {passed(direct)} passed of {len(direct)} ({_tally(direct)})")
    print(f"gateway: {passed(gateway)} passed of {len(gateway)} ({_tally(gateway)})")
    differing = _differing(direct, gateway)
    unexplained = []
    used: set[str] = set()
    print(f"\n{len(differing)} test(s) differ (direct -> gateway):")
    for test in differing:
        pattern = _allowed(test)
        if pattern is not None:
            used.add(pattern)
            mark = f"by design: {ALLOWED[pattern]}"
        else:
            again = (rerun.get("direct", {}).get(test, "absent"), rerun.get("gateway", {}).get(test, "absent"))
            if again[0] == again[1] != "absent":
                mark = f"flaky: both {again[0]} on a re-run"
            else:
                mark = f"UNEXPLAINED (re-run: {again[0]} -> {again[1]})"
                unexplained.append(test)
        print(f"  {test}: {direct.get(test, 'absent')} -> {gateway.get(test, 'absent')}  [{mark}]")
    for pattern in sorted(ALLOWED.keys() - used):
        print(f"  (allow-list entry matched no difference this run: {pattern})")
    if unexplained:
        print(f"\nFAIL: {len(unexplained)} difference(s) not owned by the gateway by design")
        return 1
    print("\nOK: the pass sets match, but for the gateway's by-design exceptions")
    return 0


def _tally(results: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for outcome in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
