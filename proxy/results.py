"""Recording of result rows "by policy" (`resources.<name>.record_results`).

The masking plan is the only per-row hook the relay machine has (``Entry.plan``), so
recording wraps it: a `RecordingPlan` masks as before and then keeps a copy of the values
as the client receives them. With recording off nothing is wrapped and the DataRow hot
path is exactly what it was. Masking runs first, so what is recorded is what the agent
saw, never the raw upstream value.

Each statement keeps at most `max_rows` rows and `max_bytes` bytes of values over all its
result sets (a simple Query may return several); past either cap it stops keeping rows and
marks the result set truncated. Text-format values are decoded to str; binary-format
values are kept as a placeholder naming the type OID, with the bytes in base64.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from proxy.protocol import messages as m


@dataclass(frozen=True, slots=True)
class ResultLimits:
    max_rows: int = 100
    max_bytes: int = 64 * 1024


@dataclass(slots=True)
class ResultSet:
    """The rows of one RowDescription..CommandComplete run, as the client saw them."""

    columns: list[str]
    rows: list[list[str | None]] = field(default_factory=list)
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "truncated": self.truncated}


class ResultCapture:
    """Everything recorded for one statement (one in-flight entry), under the caps."""

    __slots__ = ("limits", "sets", "_rows", "_bytes")

    def __init__(self, limits: ResultLimits) -> None:
        self.limits = limits
        self.sets: list[ResultSet] = []
        self._rows = 0
        self._bytes = 0

    def as_list(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.sets]

    def add(self, rs: ResultSet, row: list[str | None], size: int) -> None:
        if rs.truncated:
            return
        if self._rows >= self.limits.max_rows or self._bytes + size > self.limits.max_bytes:
            rs.truncated = True
            return
        self._rows += 1
        self._bytes += size
        rs.rows.append(row)


class RecordingPlan:
    """A row plan that masks with `inner` (if any) and records the values sent on."""

    __slots__ = ("_inner", "_capture", "_set", "_binary", "scanned", "rewrite")

    def __init__(
        self, inner: Any, capture: ResultCapture, fields: list[m.FieldDescription], formats: tuple[int, ...]
    ) -> None:
        self._inner = inner
        self._capture = capture
        # Every row is recorded: none goes by in a run (proxy.protocol.rowrun).
        self.scanned: bytes | None = None
        self.rewrite: bytes | None = None
        self._set = ResultSet([f.name for f in fields])
        capture.sets.append(self._set)
        # Per column: None for text, the type OID for binary (decoded as a placeholder).
        self._binary: list[int | None] = []
        for i, f in enumerate(fields):
            fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
            self._binary.append(f.type_oid if fmt == 1 else None)

    def mask_values(self, values: list[bytes | None]) -> tuple[list[bytes | None] | None, int]:
        masked: list[bytes | None] | None = None
        count = 0
        if self._inner is not None:
            masked, count = self._inner.mask_values(values)
        sent = values if masked is None else masked
        if not self._set.truncated:
            row: list[str | None] = []
            size = 0
            binary = self._binary
            for i, v in enumerate(sent):
                if v is None:
                    row.append(None)
                    continue
                size += len(v)
                oid = binary[i] if i < len(binary) else None
                if oid is None:
                    row.append(v.decode("utf-8", "replace"))
                else:
                    row.append(f"<binary oid={oid} base64={base64.b64encode(v).decode()}>")
            self._capture.add(self._set, row, size)
        return masked, count
