"""One large result with masked columns, fetched whole: direct, through jitgate, PgBouncer.

    .venv/bin/python bench/stream_rows.py [--rows 100000] [--runs 5] [--quick]
                                          [--targets direct,jitgate] [--client libpq|psycopg]

The design target: a result set of 100,000 rows with masked columns streams through jitgate
at >= 50 % of direct throughput, for SELECT and COPY, text and binary. Four cases over the
table `stream_rows` (id int4, amount int8, email text, ssn text, note text) of the `bench`
database, created here when it is missing or holds another row count:

    select-text    SELECT * (simple Query, text results)
    select-binary  the same over the extended protocol, binary results (Parse..Sync)
    copy-text      COPY stream_rows TO STDOUT
    copy-binary    COPY stream_rows TO STDOUT (FORMAT binary)
    select-scanned SELECT id, amount, note (text): no column masked by name, `note` scanned

The default masking rules mask `email` and `ssn` by name; `note` holds nothing the content
detectors match, so it is scanned on every row and stays as it is. `select-scanned` is the
common case of a result with text columns and no sensitive name: every row is scanned and
none changes (through jitgate too, nothing may differ). Each (case, target) is
timed best of `--runs` after one warm-up, on one open connection (connecting is not timed),
the targets back to back per case so that each ratio compares runs under the same load.
Every result of the last run is then decoded and checked against the values the table was
filled with: through jitgate every email and ssn must come back masked and every other value
unchanged; through anything else, nothing changed. A failed check fails the run (exit 1).

`--client libpq` (default) reads the result with libpq and no per-row Python (psycopg.pq:
PQexec / PQexecParams / PQgetCopyData, the way psql does), so the time is the wire's and the
proxy's. `--client psycopg` decodes every row into Python objects (cursor.fetchall), which
is what an application pays; COPY reads raw blocks either way. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import pq
from psycopg.pq.abc import PGresult
from rich.console import Console
from rich.table import Table
from targets import TARGETS, Endpoint, Target, TargetUnavailable

RESULTS = Path(__file__).resolve().parent / "results"
TABLE = "stream_rows"
DEFAULT_TARGETS = ("direct", "jitgate", "pgbouncer", "python-copy")
CASES = ("select-text", "select-binary", "copy-text", "copy-binary", "select-scanned")
#: Cases whose result holds no column masked by name: nothing may change through any target.
UNMASKED_CASES = ("select-scanned",)
_SQL = {
    "select-text": f"SELECT * FROM {TABLE}",
    "select-binary": f"SELECT * FROM {TABLE}",
    "copy-text": f"COPY {TABLE} TO STDOUT",
    "copy-binary": f"COPY {TABLE} TO STDOUT (FORMAT binary)",
    "select-scanned": f"SELECT id, amount, note FROM {TABLE}",
}
# Column order of the table; `_raw` below is `_FILL` in Python.
COLUMNS = ("id", "amount", "email", "ssn", "note")
MASKED = ("email", "ssn")
_CREATE = f"""\
CREATE TABLE {TABLE} (id int4 PRIMARY KEY, amount int8 NOT NULL, email text NOT NULL,
                      ssn text NOT NULL, note text NOT NULL)"""
_FILL = f"""\
INSERT INTO {TABLE}
SELECT i, mod(i * 37, 100000), 'user' || i || '@example.com',
       lpad((mod(i, 900) + 100)::text, 3, '0') || '-' || lpad((mod(i, 90) + 10)::text, 2, '0') || '-'
       || lpad((mod(i, 9000) + 1000)::text, 4, '0'),
       'shipped to warehouse ' || mod(i, 97) || ' by road'
FROM generate_series(1, %s) AS i"""
_CLK_TCK = os.sysconf("SC_CLK_TCK")

Row = tuple[int, int, bytes, bytes, bytes]


def _raw(i: int) -> Row:
    """Row `i` as the table holds it."""
    ssn = f"{i % 900 + 100:03d}-{i % 90 + 10:02d}-{i % 9000 + 1000:04d}"
    return (i, i * 37 % 100000, f"user{i}@example.com".encode(), ssn.encode(),
            f"shipped to warehouse {i % 97} by road".encode())


@dataclass
class Check:
    """What came back, against what the table holds."""

    rows: int = 0
    masked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MASKED, 0))
    altered: int = 0  # rows whose unmasked columns (id, amount, note) differ
    sample: str = ""  # the first row as received, for the eye

    def ok(self, expect_masked: bool, rows: int) -> bool:
        want = rows if expect_masked else 0
        return self.rows == rows and self.altered == 0 and all(
            n == want for n in self.masked.values())


@dataclass
class Result:
    target: str
    case: str
    rows: int
    best_s: float | None = None
    median_s: float | None = None
    rows_per_s: float | None = None
    proxy_cpu_us_per_row: float | None = None
    ratio_to_direct: float | None = None
    masked_email: int | None = None
    masked_ssn: int | None = None
    verified: bool | None = None
    sample: str = ""
    error: str | None = None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    upstream = Endpoint(args.host, args.port, args.user, args.dbname,
                        password=os.environ.get("PGPASSWORD"))
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or "direct" not in names:
        console.print(f"[red]--targets must include direct; known: {', '.join(TARGETS)}")
        return 2
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        console.print(f"[red]--cases: known are {', '.join(CASES)}")
        return 2
    try:
        _ensure_table(upstream, args.rows, console)
    except psycopg.Error as exc:
        console.print(f"[red]cannot prepare {TABLE!r} in {upstream.dbname!r} on "
                      f"{upstream.host}:{upstream.port}:[/] {exc}")
        return 2
    results, skipped = _run_all([TARGETS[n] for n in names], cases, upstream, args, console)
    _add_ratios(results)
    console.print(_table(results, args))
    for name, reason in skipped.items():
        console.print(f"[yellow]{name}: skipped: {reason}")
    failed = [r for r in results if r.verified is False]
    for r in failed:
        console.print(f"[red]{r.target} {r.case}: masking check failed: email masked "
                      f"{r.masked_email}, ssn masked {r.masked_ssn} of {r.rows}; first row "
                      f"{r.sample}")
    _write_json(args.json, results, skipped, args)
    console.print(f"results written to {args.json}")
    return 1 if failed else 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the table")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per cell (best counts)")
    parser.add_argument("--quick", action="store_true",
                        help="10,000 rows, 2 runs: a smoke test")
    parser.add_argument("--targets", default=",".join(n for n in DEFAULT_TARGETS if n in TARGETS))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--client", choices=("libpq", "psycopg"), default="libpq",
                        help="libpq: no per-row Python; psycopg: rows decoded (fetchall)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres", help="password, if any, from PGPASSWORD")
    parser.add_argument("--dbname", default="bench")
    parser.add_argument("--json", type=Path, default=RESULTS / "stream_rows.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.runs = 10_000, 2
    if args.rows < 1 or args.runs < 1:
        parser.error("--rows and --runs must be positive")
    return args


def _conninfo(endpoint: Endpoint, dbname: str | None = None) -> str:
    return psycopg.conninfo.make_conninfo(
        host=endpoint.host, port=endpoint.port, user=endpoint.user,
        dbname=dbname or endpoint.dbname, password=endpoint.password, sslmode="disable")


def _ensure_table(upstream: Endpoint, rows: int, console: Console) -> None:
    """Create the database and fill the table unless it already holds `rows` rows."""
    with psycopg.connect(_conninfo(upstream, "postgres"), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                         [upstream.dbname]).fetchone() is None:
            admin.execute(f'CREATE DATABASE "{upstream.dbname}"')
    with psycopg.connect(_conninfo(upstream), autocommit=True) as conn:
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [TABLE]).fetchone()
        if found and found[0]:
            # The last row tells the fill apart from an older table of the same name.
            probe = conn.execute(
                f"SELECT count(*), max(note) FILTER (WHERE id = {rows}) FROM {TABLE}").fetchone()
            if probe is not None and probe == (rows, _raw(rows)[4].decode()):
                return
        console.print(f"filling {upstream.dbname}.{TABLE} with {rows:,} rows ...")
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(_CREATE)
            conn.execute(_FILL, [rows])
        conn.execute(f"VACUUM (FREEZE, ANALYZE) {TABLE}")  # no hint-bit writes while timing


# --- the cases ------------------------------------------------------------------------------

class Client:
    """One open connection and the four ways of reading the table through it.

    `fetch(case)` returns (seconds, payload); only the request and the reading of the whole
    result are timed. `decode(case, payload)` turns the payload into rows afterwards."""

    def __init__(self, endpoint: Endpoint, kind: str) -> None:
        self.kind = kind
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        if kind == "psycopg":
            self._conn = psycopg.connect(_conninfo(endpoint), autocommit=True)
            self._pg = self._conn.pgconn
            return
        self._pg = pq.PGconn.connect(_conninfo(endpoint).encode())
        if self._pg.status != pq.ConnStatus.OK:
            raise RuntimeError(self._pg.get_error_message())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        else:
            self._pg.finish()

    def fetch(self, case: str) -> tuple[float, object]:
        sql = _SQL[case]
        if case.startswith("copy"):
            return self._copy(sql)
        binary = case == "select-binary"
        if self._conn is not None:
            cur = self._conn.cursor(binary=binary)
            t0 = time.perf_counter()
            cur.execute(sql)
            rows = cur.fetchall()
            return time.perf_counter() - t0, rows
        t0 = time.perf_counter()
        if binary:
            res = self._pg.exec_params(sql.encode(), [], result_format=1)
        else:
            res = self._pg.exec_(sql.encode())
        elapsed = time.perf_counter() - t0
        if res.status != pq.ExecStatus.TUPLES_OK:
            raise RuntimeError(res.get_error_message().strip())
        return elapsed, res

    def _copy(self, sql: str) -> tuple[float, object]:
        chunks: list[bytes] = []
        append = chunks.append
        if self._conn is not None:
            cur = self._conn.cursor()
            t0 = time.perf_counter()
            with cur.copy(sql) as copy:
                for block in copy:
                    append(bytes(block))
            return time.perf_counter() - t0, b"".join(chunks)
        pg = self._pg
        t0 = time.perf_counter()
        res = pg.exec_(sql.encode())
        if res.status != pq.ExecStatus.COPY_OUT:
            raise RuntimeError(res.get_error_message().strip())
        get = pg.get_copy_data
        while True:
            n, data = get(0)
            if n < 0:
                break
            append(bytes(data))
        end = pg.get_result()
        elapsed = time.perf_counter() - t0
        while pg.get_result() is not None:
            pass
        if n == -2 or end is None or end.status != pq.ExecStatus.COMMAND_OK:
            message = end.get_error_message() if end is not None else pg.get_error_message()
            raise RuntimeError(message.strip())
        return elapsed, b"".join(chunks)

    def decode(self, case: str, payload: object) -> Iterable[Row]:
        if case == "copy-text":
            assert isinstance(payload, bytes)
            return _copy_text_rows(payload)
        if case == "copy-binary":
            assert isinstance(payload, bytes)
            return _copy_binary_rows(payload)
        if case in UNMASKED_CASES:  # id, amount, note: the others as the table holds them
            rows = payload if isinstance(payload, list) else _pgresult_rows(payload, binary=False, columns=3)  # type: ignore[arg-type]
            return ((int(r[0]), int(r[1]), *_raw(int(r[0]))[2:4], _b(r[2])) for r in rows)
        if isinstance(payload, list):  # psycopg: Python values
            return ((r[0], r[1], _b(r[2]), _b(r[3]), _b(r[4])) for r in payload)
        return _pgresult_rows(payload, binary=case == "select-binary")  # type: ignore[arg-type]


def _b(value: object) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[call-overload]


def _pgresult_rows(res: PGresult, *, binary: bool, columns: int = len(COLUMNS)) -> Iterable[Row]:
    get = res.get_value
    for i in range(res.ntuples):
        v = [get(i, j) or b"" for j in range(columns)]
        if columns != len(COLUMNS):
            yield tuple(v)  # type: ignore[misc]
            continue
        if binary:
            yield (int.from_bytes(v[0], "big", signed=True), int.from_bytes(v[1], "big", signed=True),
                   v[2], v[3], v[4])
        else:
            yield int(v[0]), int(v[1]), v[2], v[3], v[4]


def _copy_text_rows(data: bytes) -> Iterable[Row]:
    # No value of the table holds a tab, newline or backslash, masked or not.
    for line in data.splitlines():
        f = line.split(b"\t")
        yield int(f[0]), int(f[1]), f[2], f[3], f[4]


def _copy_binary_rows(data: bytes) -> Iterable[Row]:
    (ext,) = struct.unpack_from("!I", data, 15)
    pos = 19 + ext
    while True:
        (count,) = struct.unpack_from("!h", data, pos)
        pos += 2
        if count == -1:
            return
        values: list[bytes] = []
        for _ in range(count):
            (n,) = struct.unpack_from("!i", data, pos)
            pos += 4
            values.append(data[pos:pos + max(n, 0)])
            pos += max(n, 0)
        yield (int.from_bytes(values[0], "big", signed=True),
               int.from_bytes(values[1], "big", signed=True), values[2], values[3], values[4])


def _check(rows: Iterable[Row]) -> Check:
    check = Check()
    masked = check.masked
    for row in rows:
        if not check.sample:
            check.sample = repr(tuple(v.decode() if isinstance(v, bytes) else v for v in row))
        check.rows += 1
        raw = _raw(row[0])
        if row[2] != raw[2]:
            masked["email"] += 1
        if row[3] != raw[3]:
            masked["ssn"] += 1
        if row[1] != raw[1] or row[4] != raw[4]:
            check.altered += 1
    return check


# --- running --------------------------------------------------------------------------------

def _run_all(targets: list[Target], cases: list[str], upstream: Endpoint,
             args: argparse.Namespace, console: Console) -> tuple[list[Result], dict[str, str]]:
    results: list[Result] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="jitgate-stream-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # targets may run as another account (pgbouncer as nobody)
        clients: dict[str, Client] = {}
        cpu: dict[str, Callable[[], float] | None] = {}
        for target in targets:
            try:
                endpoint = stack.enter_context(target.run(upstream, workdir / target.name))
                clients[target.name] = Client(endpoint, args.client)
            except (TargetUnavailable, RuntimeError, psycopg.Error) as exc:
                skipped[target.name] = str(exc).strip().splitlines()[-1]
                continue
            stack.callback(clients[target.name].close)
            cpu[target.name] = _process_cpu(workdir / target.name, endpoint)
        total, done = len(cases) * len(clients), 0
        for case in cases:
            for name, client in clients.items():
                done += 1
                console.print(f"[dim][{done}/{total}] {name} {case} ({args.rows:,} rows, "
                              f"1 + {args.runs} runs)")
                results.append(_measure(name, case, client, cpu[name], args))
    return results, skipped


def _measure(name: str, case: str, client: Client, cpu: Callable[[], float] | None,
             args: argparse.Namespace) -> Result:
    result = Result(name, case, args.rows)
    try:
        client.fetch(case)  # warm-up: caches, the gateway's plan and verdict caches
        times: list[float] = []
        cpu_before = cpu() if cpu is not None else 0.0
        payload: object = None
        for _ in range(args.runs):
            elapsed, payload = client.fetch(case)
            times.append(elapsed)
        cpu_used = cpu() - cpu_before if cpu is not None else None
    except (RuntimeError, psycopg.Error) as exc:
        result.error = str(exc).strip().splitlines()[0][:200]
        return result
    result.best_s = min(times)
    result.median_s = statistics.median(times)
    result.rows_per_s = args.rows / result.best_s
    if cpu_used is not None:
        result.proxy_cpu_us_per_row = cpu_used / (args.runs * args.rows) * 1e6
    check = _check(client.decode(case, payload))
    result.masked_email, result.masked_ssn = check.masked["email"], check.masked["ssn"]
    result.verified = check.ok(expect_masked=name.startswith("jitgate") and case not in UNMASKED_CASES,
                               rows=args.rows)
    result.sample = check.sample
    return result


def _process_cpu(workdir: Path, endpoint: Endpoint) -> Callable[[], float] | None:
    """A reader of the CPU seconds used by the target's process tree (None for direct).

    The targets are children of this process: the one whose command line names the target's
    work directory or its port is the target, and its descendants (jitgate's recorder writer)
    count with it."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or _ppid(proc.name) != me:
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        if f"{workdir}/" in text or str(endpoint.port).encode() in argv:
            root = proc.name
            return lambda: sum(_cpu_seconds(pid) for pid in _tree(root))
    return None


def _ppid(pid: str) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[1]


def _tree(root: str) -> list[str]:
    pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()]
    parents = {pid: _ppid(pid) for pid in pids}
    out, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        out += frontier
    return out


def _cpu_seconds(pid: str) -> float:
    """utime + stime of a process (its exited children's are in cutime, not counted)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# --- reporting ------------------------------------------------------------------------------

def _add_ratios(results: list[Result]) -> None:
    direct = {r.case: r for r in results if r.target == "direct"}
    for r in results:
        base = direct.get(r.case)
        if base is not None and base.rows_per_s and r.rows_per_s:
            r.ratio_to_direct = r.rows_per_s / base.rows_per_s


def _table(results: list[Result], args: argparse.Namespace) -> Table:
    table = Table(title=f"{args.rows:,} rows, email and ssn masked through jitgate; best of "
                        f"{args.runs} after a warm-up; client {args.client} (ratio = rows/s / "
                        "direct rows/s, same case)")
    table.add_column("case")
    table.add_column("target")
    for col in ("best ms", "median ms", "rows/s", "ratio", "proxy CPU µs/row", "masked"):
        table.add_column(col, justify="right")
    table.add_column("check")
    for r, nxt in zip(results, [*results[1:], None], strict=True):
        end = nxt is None or nxt.case != r.case
        if r.error is not None:
            table.add_row(r.case, r.target, "-", "-", "-", "-", "-", "-",
                          f"[red]failed: {r.error}", end_section=end)
            continue
        masked = "-" if r.masked_email is None else (
            f"{r.masked_email:,}" if r.masked_email == r.masked_ssn
            else f"{r.masked_email:,} / {r.masked_ssn:,}")
        ratio = _fmt(r.ratio_to_direct, "{:.2f}")
        if r.ratio_to_direct is not None and r.target.startswith("jitgate"):
            ratio = f"[{'green' if r.ratio_to_direct >= 0.5 else 'red'}]{ratio}"
        table.add_row(r.case, r.target, _fmt(r.best_s, "{:.3f}", 1000),
                      _fmt(r.median_s, "{:.3f}", 1000), _fmt(r.rows_per_s, "{:,.0f}"), ratio,
                      _fmt(r.proxy_cpu_us_per_row, "{:.2f}"), masked,
                      "ok" if r.verified else "[red]FAILED", end_section=end)
    return table


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else spec.format(value * scale)


def _write_json(path: Path, results: list[Result], skipped: dict[str, str],
                args: argparse.Namespace) -> None:
    meta = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": args.rows,
        "runs": args.runs,
        "client": args.client,
        "libpq": pq.version(),
        "psycopg": psycopg.__version__,
        "upstream": f"{args.host}:{args.port}/{args.dbname}",
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "python": sys.version.split()[0],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "skipped": skipped,
                                "results": [asdict(r) for r in results]}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
