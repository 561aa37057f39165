"""Retention archives: the oldest part of the chain as a gzip'd JSON Lines file.

    line 1..n   the records, exactly as exported in JSONL (re-verifiable)
    last line   {"archive": {"from_seq", "through_seq", "prev_hash", "through_hash",
                             "records", "sha256", "sessions_sha256"}}

`prev_hash` is the hash the first record follows (genesis, or the previous archive's
`through_hash`), `through_hash` the last record's hash, which the store keeps as its anchor
after pruning: the first remaining record must follow it, so the chain stays verifiable
across the cut, and archives chain onto each other the same way. `sha256` is over the
record lines' bytes, a cheap check that the file is the one written.

`sessions` (kept in the summary, listed in the `audit.prune` record the store appends) are
the sessions whose `session.start` record is archived here, plus those listed by the
`audit.prune` records archived here (an earlier prune's list is carried over, so the live
chain's prune records always list every archived session); `sessions_sha256` is the digest
of that sorted list (`sessions_digest`), in the trailer the witness signs. The list
is what lets the session views tell a pruned session from an invented one
(`broker.audit.coverage.PruneEvidence`). It grows with every session ever archived: about
40 bytes a session in the prune record, read by the views when a row has no live
`session.start`. A prune record that lists no sessions (made before they were listed) has its
sessions read from its own archive when the next prune archives it (`legacy_sessions`).

An archive is named `audit-<from_seq>-<through_seq>.jsonl.gz` (`archive_name`) and appears
under that name only when whole (written as `.partial`, then renamed). One that starts right
after the store's anchor is a prune that was archived but not applied (`unfinished_archive`);
being there proves nothing, since anyone who can write the directory can put a file there
(`AuditRepository.prune_audit` says what it must match before it is finished).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from broker.audit.chain import AuditRecord, Break, ChainVerifier, VerifyReport, canonical_json
from broker.audit.export import jsonl_line

ARCHIVE_NAME = re.compile(r"audit-(\d{12})-(\d{12})\.jsonl\.gz")


def sessions_digest(session_ids: Iterable[str]) -> str:
    """SHA-256 of the sorted session ids as canonical JSON (the trailer's `sessions_sha256`)."""
    return hashlib.sha256(canonical_json(sorted(session_ids)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    path: Path
    from_seq: int
    through_seq: int
    prev_hash: str
    through_hash: str
    records: int
    sha256: str
    sessions: tuple[str, ...] = ()  # sorted: the sessions archived (see the module's docstring)
    # A prune an earlier run archived (and may have had witnessed) but did not apply, finished
    # at its cut (`AuditRepository.prune_audit`); the caller may then look for a new cut.
    resumed: bool = False

    @property
    def sessions_sha256(self) -> str:
        return sessions_digest(self.sessions)

    def trailer(self) -> dict[str, Any]:
        return {
            "archive": {
                "from_seq": self.from_seq,
                "through_seq": self.through_seq,
                "prev_hash": self.prev_hash,
                "through_hash": self.through_hash,
                "records": self.records,
                "sha256": self.sha256,
                "sessions_sha256": self.sessions_sha256,
            }
        }


async def write_archive(
    path: Path, records: AsyncIterator[AuditRecord], *, prev_seq: int, prev_hash: str,
    unlisted: Callable[[AuditRecord], Iterable[str]] | None = None,
) -> ArchiveSummary:
    """Write `records` to `path` (gzip JSONL), checking the chain as it goes.

    Raises ValueError (and leaves no file) if the records do not chain from `prev_hash`:
    a broken chain must not be archived and pruned, which would hide the break. `unlisted`
    gives the sessions of an `audit.prune` record that lists none (one made before prune
    records listed them; see `legacy_sessions`).
    """
    verifier = ChainVerifier(prev_hash=prev_hash, prev_seq=prev_seq)
    digest = hashlib.sha256()
    tmp = path.with_name(path.name + ".partial")
    first: int | None = None
    last: AuditRecord | None = None
    sessions: set[str] = set()
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as out:
            async for record in records:
                broken = verifier.feed(record)
                if broken is not None:
                    raise ValueError(f"audit chain broken at seq {broken.seq} ({broken.kind}); not archiving")
                line = jsonl_line(record)
                digest.update(line.encode())
                out.write(line)
                if record.type == "session.start" and record.session_id:
                    sessions.add(record.session_id)
                elif record.type == "audit.prune" and isinstance(record.data.get("sessions"), list):
                    sessions.update(str(x) for x in record.data["sessions"])
                elif record.type == "audit.prune" and unlisted is not None:
                    sessions.update(unlisted(record))
                first = record.seq if first is None else first
                last = record
            if last is None or first is None:
                raise ValueError("nothing to archive")
            summary = ArchiveSummary(
                path, first, last.seq, prev_hash, last.hash, verifier.checked, digest.hexdigest(),
                tuple(sorted(sessions)),
            )
            out.write(json.dumps(summary.trailer()) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def legacy_sessions(archive_dir: Path, prune: AuditRecord) -> set[str]:
    """The sessions archived by `prune`, an `audit.prune` record that does not list them (made
    before prune records did), read from the archive it names in `archive_dir`, and from the
    archives of the unlisted prune records in that one, and so on back.

    An archive counts only if it verifies whole and ends at the seq and hash the prune record
    gives: the chain pins that hash, so its records are the ones that were pruned and no
    session can be added to them. A missing or broken archive adds nothing (those sessions
    stay `no_audit_record`). Read once, by the next prune, which lists what it found."""
    found: set[str] = set()
    todo, seen = [prune.data], set()
    while todo:
        data = todo.pop()
        name = Path(str(data.get("archive") or "")).name  # a name, never a path elsewhere
        if not name or name in seen:
            continue
        seen.add(name)
        path = archive_dir / name
        try:
            report, trailer = verify_archive(path)
        except (OSError, EOFError, ValueError, KeyError, TypeError):
            continue
        if (not report.ok or trailer is None or trailer.get("through_seq") != data.get("through_seq")
                or trailer.get("through_hash") != data.get("through_hash")):
            continue
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                obj = json.loads(line)
                inner = obj.get("data")
                if obj.get("type") == "session.start" and obj.get("session_id"):
                    found.add(str(obj["session_id"]))
                elif obj.get("type") == "audit.prune" and isinstance(inner, dict):
                    if isinstance(inner.get("sessions"), list):
                        found.update(str(x) for x in inner["sessions"])
                    else:
                        todo.append(inner)
    return found


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


def archive_name(from_seq: int, through_seq: int) -> str:
    return f"audit-{from_seq:012d}-{through_seq:012d}.jsonl.gz"


def archive_through(path: Path) -> int:
    """The last seq an archive's name says it holds (the name must match `ARCHIVE_NAME`)."""
    match = ARCHIVE_NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not an archive's name")
    return int(match[2])


def unfinished_archive(archive_dir: Path, anchor_seq: int) -> Path | None:
    """The file named as the archive of a prune that starts right after the anchor (so was
    never applied), or None. Two of them are the trace of prunes from one start (older
    versions could leave that): which one the witness holds is for an operator to say
    (ValueError). The file is only named so: see `whole_archive`."""
    found = sorted(
        p for p in archive_dir.glob(f"audit-{anchor_seq + 1:012d}-*.jsonl.gz")
        if ARCHIVE_NAME.fullmatch(p.name) and archive_through(p) > anchor_seq
    )
    if len(found) > 1:
        raise ValueError(
            f"more than one unfinished prune from seq {anchor_seq + 1} in {archive_dir} "
            f"({', '.join(p.name for p in found)}): keep the one the witness holds last, move the others away"
        )
    return found[0] if found else None


def whole_archive(path: Path) -> tuple[dict[str, Any] | None, str]:
    """The trailer of the archive at `path` if it verifies whole, else None and why not."""
    try:
        report, trailer = verify_archive(path)
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:  # not an archive at all
        return None, f"unreadable: {type(exc).__name__}"
    if not report.ok or trailer is None:
        broken = report.broken
        return None, "no trailer" if broken is None else f"{broken.kind} at seq {broken.seq}: {broken.detail}"
    return trailer, ""
