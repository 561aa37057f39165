"""Retention archives: the oldest part of the chain as a gzip'd JSON Lines file.

    line 1..n   the records, exactly as exported in JSONL (re-verifiable)
    last line   {"archive": {"from_seq", "through_seq", "prev_hash", "through_hash",
                             "records", "sha256"}}

`prev_hash` is the hash the first record follows (genesis, or the previous archive's
`through_hash`), `through_hash` the last record's hash, which the store keeps as its anchor
after pruning: the first remaining record must follow it, so the chain stays verifiable
across the cut, and archives chain onto each other the same way. `sha256` is over the
record lines' bytes, a cheap check that the file is the one written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.audit.chain import AuditRecord, Break, ChainVerifier, VerifyReport
from broker.audit.export import jsonl_line


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    path: Path
    from_seq: int
    through_seq: int
    prev_hash: str
    through_hash: str
    records: int
    sha256: str

    def trailer(self) -> dict[str, Any]:
        return {
            "archive": {
                "from_seq": self.from_seq,
                "through_seq": self.through_seq,
                "prev_hash": self.prev_hash,
                "through_hash": self.through_hash,
                "records": self.records,
                "sha256": self.sha256,
            }
        }


async def write_archive(
    path: Path, records: AsyncIterator[AuditRecord], *, prev_seq: int, prev_hash: str
) -> ArchiveSummary:
    """Write `records` to `path` (gzip JSONL), checking the chain as it goes.

    Raises ValueError (and leaves no file) if the records do not chain from `prev_hash`:
    a broken chain must not be archived and pruned, which would hide the break.
    """
    verifier = ChainVerifier(prev_hash=prev_hash, prev_seq=prev_seq)
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + ".partial")
    first: int | None = None
    last: AuditRecord | None = None
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as out:
            async for record in records:
                broken = verifier.feed(record)
                if broken is not None:
                    raise ValueError(f"audit chain broken at seq {broken.seq} ({broken.kind}); not archiving")
                line = jsonl_line(record)
                digest.update(line.encode())
                out.write(line)
                first = record.seq if first is None else first
                last = record
            if last is None or first is None:
                raise ValueError("nothing to archive")
            summary = ArchiveSummary(
                path, first, last.seq, prev_hash, last.hash, verifier.checked, digest.hexdigest()
            )
            out.write(json.dumps(summary.trailer()) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def verify_archive(path: Path) -> tuple[VerifyReport, dict[str, Any] | None]:
    """Re-check an archive file: its chain from its `prev_hash`, its trailer and its digest."""
    digest = hashlib.sha256()
    trailer: dict[str, Any] | None = None
    verifier: ChainVerifier | None = None
    first_prev: str | None = None
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            obj = json.loads(line)
            if "archive" in obj:
                trailer = obj["archive"]
                break
            digest.update(line.encode())
            record = AuditRecord(
                obj["seq"], obj["id"], datetime.fromisoformat(obj["ts"]), obj["type"], obj["actor"],
                obj["session_id"], obj["data"], obj["prev_hash"], obj["hash"],
            )
            if verifier is None:
                # The first record's link is checked against the trailer below.
                verifier = ChainVerifier(prev_hash=None, prev_seq=None)
                first_prev = record.prev_hash
            verifier.feed(record)
    if verifier is None:
        verifier = ChainVerifier()
    report = verifier.finish()
    if report.ok and (
        trailer is None
        or trailer["prev_hash"] != first_prev
        or trailer["through_hash"] != report.last_hash
        or trailer["through_seq"] != report.last_seq
        or trailer["records"] != report.checked
        or trailer["sha256"] != digest.hexdigest()
    ):
        report = VerifyReport(
            ok=False, checked=report.checked, first_seq=report.first_seq, last_seq=report.last_seq,
            last_hash=report.last_hash,
            broken=Break(report.last_seq or 0, None, "truncated", "archive trailer missing or does not match"),
        )
    return report, trailer
