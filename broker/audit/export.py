"""Export formats: each turns an async stream of records into an async stream of text
chunks, one record at a time, so memory stays flat whatever the record count.

    jsonl  one JSON object per line: the record exactly as chained (re-verifiable)
    csv    header, then one row per record; `data` as canonical JSON in one column
    ocsf   one OCSF event per line (JSON Lines), see `ocsf.py`
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from typing import Literal

from broker.audit.chain import AuditRecord, canonical
from broker.audit.ocsf import OcsfMapper, to_ocsf

Format = Literal["jsonl", "csv", "ocsf"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "ocsf")
MEDIA_TYPES: dict[str, str] = {
    "jsonl": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "ocsf": "application/x-ndjson",
}
CHUNK_CHARS = 64 * 1024
CSV_COLUMNS = ("seq", "id", "ts", "type", "actor", "session_id", "data", "prev_hash", "hash")


def jsonl_line(record: AuditRecord) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"


def ocsf_line(record: AuditRecord, mapper: OcsfMapper | None = None) -> str:
    """`mapper`: the export's, so a statement names its session's database (see ocsf.py)."""
    event = mapper.map(record) if mapper is not None else to_ocsf(record)
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"


def _csv_line(values: list[object]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def csv_header() -> str:
    return _csv_line(list(CSV_COLUMNS))


def csv_line(record: AuditRecord) -> str:
    j = record.to_json()
    j["data"] = canonical(record.data).decode()
    return _csv_line(["" if j[c] is None else j[c] for c in CSV_COLUMNS])


async def render(records: AsyncIterator[AuditRecord], fmt: str) -> AsyncIterator[str]:
    """Text chunks for `records` in `fmt`; raises ValueError for an unknown format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (use {', '.join(FORMATS)})")
    mapper = OcsfMapper()
    line = {"jsonl": jsonl_line, "csv": csv_line, "ocsf": lambda r: ocsf_line(r, mapper)}[fmt]
    # Lines are gathered into chunks of about CHUNK_CHARS: one write per line would make
    # the transport, not the formatting, the cost of a large export.
    pending: list[str] = [csv_header()] if fmt == "csv" else []
    size = 0
    async for record in records:
        text = line(record)
        pending.append(text)
        size += len(text)
        if size >= CHUNK_CHARS:
            yield "".join(pending)
            pending, size = [], 0
    if pending:
        yield "".join(pending)
