"""pgbench against one upstream: direct, through jitgate, and through PgBouncer; one table.

    .venv/bin/python bench/run_bench.py [--seconds 10] [--quick] [--targets direct,pgbouncer]

For every (clients, protocol mode) the targets run back to back, so each ratio compares runs
made under the same machine load. Select-only (`-S`) keeps the upstream's own work small, which
makes the proxy overhead as visible as it gets. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table
from targets import TARGETS, Endpoint, Target, TargetUnavailable

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("simple", "extended", "prepared")
CLIENTS = {1: 1, 8: 2}  # clients -> pgbench threads (-j), sized for a 2-core machine

_TPS = re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M)
_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
# Logging every transaction costs ~10 % TPS at 8 clients on 2 cores; a 10 % sample does not
# measurably, and still gives thousands of latencies for the median.
_LOG_SAMPLING = "0.1"


@dataclass
class Result:
    target: str
    mode: str
    clients: int
    tps: float
    latency_avg_ms: float
    latency_median_ms: float | None
    latency_p99_ms: float | None
    transactions: int
    failed: int
    ratio_to_direct: float | None = None
    added_median_ms: float | None = None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Piped output (CI logs, tee) gets a fixed width instead of rich's 80-column default.
    console = Console(width=None if sys.stdout.isatty() else 120)
    pgbench = args.pgbench or shutil.which("pgbench")
    psql = args.psql or shutil.which("psql")
    if not pgbench or not psql:
        console.print("[red]pgbench and psql must be on PATH (or pass --pgbench/--psql)")
        return 2
    upstream = Endpoint(args.host, args.port, args.user, args.dbname,
                        password=os.environ.get("PGPASSWORD"))
    try:
        ensure_bench_db(psql, pgbench, upstream, args.scale, console)
    except subprocess.CalledProcessError as exc:
        console.print(f"[red]cannot prepare {upstream.dbname!r} on {upstream.host}:"
                      f"{upstream.port}:[/] {exc.stderr or exc}")
        return 2

    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or "direct" not in names:
        console.print(f"[red]--targets must include direct; known: {', '.join(TARGETS)}")
        return 2
    results, skipped = _run_all([TARGETS[n] for n in names], upstream, pgbench, args, console)
    _add_ratios(results)
    console.print(_table(results, args.seconds))
    for name, reason in skipped.items():
        console.print(f"[yellow]{name}: skipped: {reason}")
    _write_json(args.json, results, skipped, args, pgbench)
    console.print(f"results written to {args.json}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each pgbench run")
    parser.add_argument("--quick", action="store_true", help="3-second runs, for a smoke test")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)),
                        help="client counts; threads are 1 for 1 client, else 2")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres", help="password, if any, from PGPASSWORD")
    parser.add_argument("--dbname", default="bench")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale if not there")
    parser.add_argument("--pgbench")
    parser.add_argument("--psql")
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 3
    return args


def ensure_bench_db(psql: str, pgbench: str, upstream: Endpoint, scale: int,
                     console: Console) -> None:
    """Create and `pgbench -i` the database unless it already holds this scale."""
    admin_env = {**os.environ, **upstream.libpq_env(), "PGDATABASE": "postgres"}
    exists = subprocess.run(
        [psql, "-XAtc", f"SELECT 1 FROM pg_database WHERE datname = '{upstream.dbname}'"],
        env=admin_env, check=True, capture_output=True, text=True).stdout.strip()
    if not exists:
        subprocess.run([psql, "-Xqc", f'CREATE DATABASE "{upstream.dbname}"'], env=admin_env,
                       check=True, capture_output=True, text=True)
    env = {**os.environ, **upstream.libpq_env()}
    probe = subprocess.run([psql, "-XAtc", "SELECT count(*) FROM pgbench_branches"], env=env,
                           capture_output=True, text=True)
    if probe.returncode == 0 and probe.stdout.strip() == str(scale):
        return
    console.print(f"initialising {upstream.dbname!r}: pgbench -i -s {scale} ...")
    subprocess.run([pgbench, "-i", "-q", "-s", str(scale)], env=env, check=True,
                   capture_output=True, text=True)


def _run_all(targets: list[Target], upstream: Endpoint, pgbench: str, args: argparse.Namespace,
             console: Console) -> tuple[list[Result], dict[str, str]]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    results: list[Result] = []
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="jitgate-bench-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # targets may run as another account (pgbouncer as nobody)
        # All targets stay up for the whole run, so each (clients, mode) cell runs the targets
        # back to back rather than minutes apart.
        endpoints: dict[str, Endpoint] = {}
        with ExitStack() as stack:
            for target in targets:
                try:
                    endpoints[target.name] = stack.enter_context(
                        target.run(upstream, workdir / target.name))
                except TargetUnavailable as exc:
                    skipped[target.name] = str(exc)
                    continue
                # A short warm-up: first connections and cold caches are not what we measure.
                _pgbench(pgbench, target.name, endpoints[target.name], "simple", 1, 1, 1,
                         workdir)
            total = len(clients) * len(modes) * len(endpoints)
            done = 0
            for n in clients:
                for mode in modes:
                    for name, endpoint in endpoints.items():
                        done += 1
                        console.print(f"[dim][{done}/{total}] {name} -M {mode} -c {n} "
                                      f"({args.seconds}s)")
                        try:
                            results.append(_pgbench(pgbench, name, endpoint, mode, n,
                                                    CLIENTS.get(n, 2), args.seconds, workdir))
                        except SystemExit as exc:
                            # One failed cell (e.g. the gateway failing closed under load)
                            # is a result to show, not a reason to lose the whole table.
                            console.print(f"[red]{name} -M {mode} -c {n} failed:[/] "
                                          f"{str(exc).splitlines()[-1][:300]}")
                            results.append(Result(name, mode, n, 0.0, 0.0, None, None, 0, 1))
    return results, skipped


def _pgbench(pgbench: str, target: str, endpoint: Endpoint, mode: str, clients: int,
             threads: int, seconds: int, workdir: Path) -> Result:
    logdir = Path(tempfile.mkdtemp(dir=workdir, prefix="log-"))
    cmd = [pgbench, "-n", "-S", "-M", mode, "-T", str(seconds), "-c", str(clients),
           "-j", str(threads), "--log", f"--sampling-rate={_LOG_SAMPLING}",
           f"--log-prefix={logdir / 'tx'}"]
    proc = subprocess.run(cmd, env={**os.environ, **endpoint.libpq_env()}, cwd=logdir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pgbench failed against {endpoint.host}:{endpoint.port} "
                         f"({' '.join(cmd[1:])}):\n{proc.stderr.strip()}")
    tps, lat = _TPS.search(proc.stdout), _LAT.search(proc.stdout)
    if not tps or not lat:
        raise SystemExit(f"cannot parse pgbench output:\n{proc.stdout}")
    failed, done = _FAILED.search(proc.stdout), _DONE.search(proc.stdout)
    # Per-transaction logs: "client tx_no latency_us script epoch_s epoch_us" per line.
    latencies = sorted(int(line.split()[2]) for path in logdir.glob("tx.*")
                       for line in path.read_text().splitlines() if line)
    shutil.rmtree(logdir, ignore_errors=True)
    median = statistics.median(latencies) / 1000 if latencies else None
    p99 = latencies[int(len(latencies) * 0.99) - 1] / 1000 if len(latencies) >= 100 else None
    return Result(target=target, mode=mode, clients=clients, tps=float(tps.group(1)),
                  latency_avg_ms=float(lat.group(1)), latency_median_ms=median,
                  latency_p99_ms=p99, transactions=int(done.group(1)) if done else 0,
                  failed=int(failed.group(1)) if failed else 0)


def _add_ratios(results: list[Result]) -> None:
    direct = {(r.mode, r.clients): r for r in results if r.target == "direct"}
    for r in results:
        base = direct.get((r.mode, r.clients))
        if base is None:
            continue
        r.ratio_to_direct = r.tps / base.tps if base.tps else None
        if r.latency_median_ms is not None and base.latency_median_ms is not None:
            r.added_median_ms = r.latency_median_ms - base.latency_median_ms


def _table(results: list[Result], seconds: int) -> Table:
    table = Table(title=f"pgbench -S, {seconds}s per run (ratio = TPS / direct TPS, same "
                        "mode and clients)")
    for col in ("target", "mode", "clients"):
        table.add_column(col)
    for col in ("TPS", "avg ms", "median ms", "p99 ms", "ratio", "+median ms"):
        table.add_column(col, justify="right")
    order = {name: i for i, name in enumerate(TARGETS)}
    rows = sorted(results, key=lambda r: (r.clients, MODES.index(r.mode) if r.mode in MODES
                                          else 9, order.get(r.target, 9)))
    for r, nxt in zip(rows, [*rows[1:], None], strict=True):
        table.add_row(r.target, r.mode, str(r.clients), f"{r.tps:,.0f}",
                      f"{r.latency_avg_ms:.3f}", _fmt(r.latency_median_ms, "{:.3f}"),
                      _fmt(r.latency_p99_ms, "{:.3f}"), _fmt(r.ratio_to_direct, "{:.2f}"),
                      "" if r.target == "direct" else _fmt(r.added_median_ms, "{:+.3f}"),
                      end_section=nxt is None or (nxt.clients, nxt.mode) != (r.clients, r.mode))
    return table


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def _write_json(path: Path, results: list[Result], skipped: dict[str, str],
                args: argparse.Namespace, pgbench: str) -> None:
    version = subprocess.run([pgbench, "--version"], capture_output=True, text=True).stdout
    pgbouncer = shutil.which("pgbouncer")
    meta = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": args.seconds,
        "scale": args.scale,
        "upstream": f"{args.host}:{args.port}/{args.dbname}",
        "pgbench": version.strip(),
        "pgbouncer": subprocess.run([pgbouncer, "--version"], capture_output=True, text=True)
        .stdout.splitlines()[0] if pgbouncer else None,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": sys.version.split()[0],
        "unix_time": time.time(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "skipped": skipped,
                                "results": [asdict(r) for r in results]}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
