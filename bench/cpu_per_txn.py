"""CPU per pgbench transaction of each process (and thread) in front of the upstream.

    .venv/bin/python bench/cpu_per_txn.py [--targets jitgate,python-copy,pgbouncer]
                                          [--mode prepared] [--clients 8] [--seconds 5]

On two shared cores, throughput through a proxy is CPU per transaction: this says whose. For
each target (started as `bench/run_bench.py` starts it) it runs `pgbench -n -S` once and
reads, from /proc, the user and system CPU that the target's processes and threads used
during the run: for jitgate its relay process (the event loop's thread and the others) and the
recorder's writer process. pgbench's own CPU is shown for scale; the PostgreSQL backends are
not (they are not the target's children). µs of CPU per transaction; compare within a run.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from bench.run_bench import ensure_bench_db  # noqa: E402
from bench.targets import TARGETS, Endpoint, TargetUnavailable  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _times(path: str) -> tuple[float, float] | None:
    """(user, system) CPU seconds of /proc/<path> (a process, or pid/task/tid), or None if gone."""
    try:
        fields = Path(f"/proc/{path}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            if parent == pid:
                out.append(int(entry.name))
                out.extend(_children(int(entry.name)))
    return out


def _label(pid: int, tid: int) -> str:
    """The process (what it is for) and whether `tid` is its main thread."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return f"process {pid}"
    words = [a.decode(errors="replace") for a in argv if a]
    if any("multiprocessing" in w for w in words):
        what = "recorder writer process"
    elif len(words) > 2 and Path(words[1]).name == "jitgate" and words[2] == "proxy":
        what = "jitgate relay process"
    elif len(words) > 1 and words[1].endswith("copy_relay.py"):
        what = "copy_relay.py"
    else:
        what = Path(words[0]).name if words else f"process {pid}"
    return f"{what}, {'main thread' if pid == tid else 'other threads'}"


def measure(
    target: str, upstream: Endpoint, mode: str, clients: int, seconds: int
) -> tuple[list[tuple[str, float, float]], int]:
    """([(process and thread, user µs/txn, system µs/txn)], pgbench last; transactions run)."""
    with tempfile.TemporaryDirectory(prefix="jitgate-cpu-") as tmp:
        os.chmod(tmp, 0o755)
        with TARGETS[target].run(upstream, Path(tmp)) as endpoint:
            env = {**os.environ, **endpoint.libpq_env()}
            subprocess.run(["pgbench", "-n", "-S", "-T", "1", "-c", "1"], env=env, capture_output=True, check=True)
            threads = [(pid, int(t.name)) for pid in _children(os.getpid())
                       for t in Path(f"/proc/{pid}/task").iterdir()]
            before = {(pid, tid): _times(f"{pid}/task/{tid}") for pid, tid in threads}
            start = os.times()
            run = subprocess.run(
                ["pgbench", "-n", "-S", "-M", mode, "-T", str(seconds), "-c", str(clients),
                 "-j", "2" if clients > 1 else "1"],
                env=env, capture_output=True, text=True, check=True,
            )
            end = os.times()
            after = {key: _times(f"{key[0]}/task/{key[1]}") for key in before}
            labels = {key: _label(*key) for key in before}
    done = re.search(r"number of transactions actually processed: (\d+)", run.stdout)
    if done is None:
        raise SystemExit(f"cannot parse pgbench output:\n{run.stdout}")
    n = int(done.group(1))
    spent: dict[str, list[float]] = {}
    for key, first in before.items():
        last = after[key]
        if first is None or last is None:
            continue
        row = spent.setdefault(labels[key], [0.0, 0.0])
        row[0] += (last[0] - first[0]) / n * 1e6
        row[1] += (last[1] - first[1]) / n * 1e6
    rows = [(label, user, system) for label, (user, system) in spent.items() if user + system >= 0.5]
    rows.append(("pgbench", (end.children_user - start.children_user) / n * 1e6,
                 (end.children_system - start.children_system) / n * 1e6))
    return rows, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="jitgate,python-copy,pgbouncer")
    parser.add_argument("--mode", default="prepared", choices=["simple", "extended", "prepared"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--dbname", default="bench", help="made (pgbench -i) unless it is there")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i scale if not there")
    args = parser.parse_args(argv)
    upstream = Endpoint("127.0.0.1", 5432, "postgres", args.dbname)
    console = Console()
    try:
        ensure_bench_db("psql", "pgbench", upstream, args.scale, console)
    except (OSError, subprocess.CalledProcessError) as exc:
        console.print(f"[red]cannot prepare {upstream.dbname!r} on {upstream.host}:{upstream.port}:[/] "
                      f"{getattr(exc, 'stderr', None) or exc}")
        return 2
    table = Table(title=f"CPU per transaction, pgbench -S -M {args.mode} -c {args.clients} ({args.seconds} s)")
    for column in ("target", "process / thread", "user µs", "system µs", "total µs"):
        table.add_column(column, justify="right" if "µs" in column else "left")
    for target in [t.strip() for t in args.targets.split(",") if t.strip()]:
        try:
            rows, n = measure(target, upstream, args.mode, args.clients, args.seconds)
        except TargetUnavailable as exc:
            console.print(f"[yellow]{target} left out: {exc}")
            continue
        total = sum(u + s for name, u, s in rows if name != "pgbench")
        for name, user, system in rows:
            table.add_row(target, name, f"{user:.1f}", f"{system:.1f}", f"{user + system:.1f}")
        table.add_row(target, f"[bold]all of the target[/] ({n / args.seconds:,.0f} tps)", "", "", f"[bold]{total:.1f}",
                      end_section=True)
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
