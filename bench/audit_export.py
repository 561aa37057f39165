"""Export of a large audit log in bounded memory: 1,000,000 records to JSONL and OCSF.

    .venv/bin/python bench/audit_export.py [--records 1000000] [--verify]

1. Fills a temporary SQLite store with N synthetic records (statements, sessions, logins).
   Fast path, documented here because it bypasses `Store.append_audit`: the records are
   chained with the same `broker.audit.chain.seal` the store uses (so hashes are real and
   `jitgate audit verify` accepts them, see --verify) and bulk-inserted 20,000 per
   transaction with a Core executemany, then the head row is set once. The store's own
   append path takes the audit lock and reads the head per call: right for a live gateway,
   ~50x slower for filling a million rows.
2. Runs each export (`broker.audit.export.render` over `Store.iter_audit`, as `jitgate audit
   export` and the API do) to /dev/null in a fresh child process, for the first 10,000
   records and for all N, and reports records/s and the child's peak RSS
   (`resource.getrusage(RUSAGE_SELF).ru_maxrss`). Bounded memory means the two peaks are
   about the same: memory does not grow with the number of records exported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from broker.audit import events  # noqa: E402
from broker.audit.chain import GENESIS_HASH, AuditRecord, format_ts, seal  # noqa: E402
from broker.audit.export import render  # noqa: E402
from broker.store import Store  # noqa: E402
from broker.store.models import AuditEventRow, AuditState  # noqa: E402

CHUNK = 20_000


_TEMPLATE = events.statement(
    session_id="-", seq=0, sql="", decision="allow", started_at=datetime(2030, 1, 1, tzinfo=UTC),
    principal="agent:bench", client_addr="10.0.0.7:5555", rule="default/select", reason="read-only",
    duration_ms=0.42, rows=1, masked_values=2,
)


def _event(i: int, sid: str, t: datetime) -> events.AuditEvent:
    # Mostly statements, as in a real log, with a session boundary every 50 records. The
    # statement data is the real constructor's output, copied: building it per record
    # would double the fill time and test nothing the export cares about.
    if i % 50 == 0:
        return events.AuditEvent("session.start", "agent:bench", sid, {"resource": "demo", "role": "readwrite"})
    data = {**_TEMPLATE.data, "seq": i % 50, "sql": f"select * from customers where id = {i}",
            "started_at": format_ts(t)}
    return events.AuditEvent("statement", "agent:bench", sid, data)


async def populate(url: str, n: int) -> float:
    store = await Store.open(url)
    start = time.perf_counter()
    table: Any = AuditEventRow.__table__
    from sqlalchemy import insert

    prev_seq, prev_hash = 0, GENESIS_HASH
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    sid = str(uuid.uuid4())
    try:
        while prev_seq < n:
            rows = []
            for seq in range(prev_seq + 1, min(prev_seq + CHUNK, n) + 1):
                if seq % 50 == 0:
                    sid = str(uuid.uuid4())
                ts = t0 + timedelta(milliseconds=seq)
                ev = _event(seq, sid, ts)
                r = seal(seq=seq, id=str(uuid.uuid4()), ts=ts, type=ev.type, actor=ev.actor,
                         session_id=ev.session_id, data=ev.data, prev_hash=prev_hash)
                rows.append({"seq": r.seq, "id": r.id, "ts": r.ts, "type": r.type, "actor": r.actor,
                             "session_id": r.session_id, "data": r.data, "prev_hash": r.prev_hash, "hash": r.hash})
                prev_seq, prev_hash = r.seq, r.hash
            async with store.transaction("bench fill") as session:
                await session.execute(insert(table), rows)
        async with store.transaction("bench head") as session:
            session.add(AuditState(id=1, head_seq=prev_seq, head_hash=prev_hash, anchor_seq=0,
                                   anchor_hash=GENESIS_HASH))
    finally:
        await store.close()
    return time.perf_counter() - start


async def export(url: str, fmt: str, limit: int | None) -> dict[str, Any]:
    store = await Store.open(url, migrate=False)
    count = 0
    start = time.perf_counter()
    try:
        async def counted() -> AsyncIterator[AuditRecord]:
            nonlocal count
            async for record in store.audit.iter_audit(to_seq=limit):
                count += 1
                yield record

        with open("/dev/null", "w") as sink:  # noqa: ASYNC230 - /dev/null never blocks
            async for chunk in render(counted(), fmt):
                sink.write(chunk)
    finally:
        await store.close()
    seconds = time.perf_counter() - start
    # ru_maxrss is in KiB on Linux.
    return {"format": fmt, "records": count, "seconds": round(seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


async def verify(url: str) -> tuple[bool, int, float]:
    store = await Store.open(url, migrate=False)
    start = time.perf_counter()
    try:
        report = await store.audit.verify_audit()
    finally:
        await store.close()
    return report.ok, report.checked, time.perf_counter() - start


def _child(url: str, fmt: str, limit: int | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-export", fmt, "--url", url]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--verify", action="store_true", help="Also verify the whole chain")
    ap.add_argument("--child-export", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_export:
        print(json.dumps(asyncio.run(export(args.url, args.child_export, args.limit))))
        return
    console = Console()
    with tempfile.TemporaryDirectory(prefix="jitgate-bench-audit-") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/audit.db"
        console.print(f"filling {args.records:,} audit records ...")
        fill = asyncio.run(populate(url, args.records))
        size = Path(tmp, "audit.db").stat().st_size / 2**20
        console.print(f"  {fill:.1f} s ({args.records / fill:,.0f} records/s), {size:,.0f} MiB on disk")
        if args.verify:
            ok, checked, secs = asyncio.run(verify(url))
            console.print(f"  chain verified: ok={ok}, {checked:,} records in {secs:.1f} s")
        table = Table("format", "records", "seconds", "records/s", "peak RSS (MiB)",
                      title="audit export to /dev/null (each run in a fresh process)")
        for fmt in ("jsonl", "ocsf"):
            for limit in (min(10_000, args.records), None):
                r = _child(url, fmt, limit)
                rate = r["records"] / r["seconds"] if r["seconds"] else 0
                table.add_row(
                    fmt, f"{r['records']:,}", f"{r['seconds']:.1f}", f"{rate:,.0f}", f"{r['peak_rss_mb']:.0f}"
                )
        console.print(table)


if __name__ == "__main__":
    main()
