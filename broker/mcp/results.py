"""Query results and errors as the MCP tools return them: JSON values, capped in rows and
bytes. Pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

#: Refusal rules that mean "this needs a human", as opposed to a plain SQL error.
_ACCESS_SQLSTATES = frozenset({"42501", "28P01", "28000"})


def json_value(value: Any) -> Any:
    """A database value as a JSON value; anything unusual becomes its text form."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def shape_rows(
    columns: Sequence[str], records: Iterable[Sequence[Any]], *, max_rows: int, max_bytes: int, command: str | None
) -> dict[str, Any]:
    """`{"status": "ok", "columns", "rows", "row_count", "truncated", ...}`; rows stop at
    `max_rows` or once their JSON would pass `max_bytes`, and `truncated` says so."""
    rows: list[list[Any]] = []
    size = 0
    total = 0
    truncated = False
    for record in records:
        total += 1
        if truncated:
            continue
        row = [json_value(v) for v in record]
        row_size = len(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        if len(rows) >= max_rows or size + row_size > max_bytes:
            truncated = True
            continue
        rows.append(row)
        size += row_size
    out: dict[str, Any] = {
        "status": "ok",
        "command": command,
        "columns": list(columns),
        "rows": rows,
        "row_count": total,
        "truncated": truncated,
    }
    if truncated:
        out["limits"] = {"max_rows": max_rows, "max_bytes": max_bytes}
        out["message"] = (
            f"returned {len(rows)} of {total} rows (limits: {max_rows} rows, {max_bytes} bytes); "
            "narrow the query (WHERE, LIMIT, fewer columns) to see the rest"
        )
    return out


def error_result(exc: BaseException) -> dict[str, Any]:
    """A PostgreSQL error (from the gateway or the database) with what the agent can act on."""
    sqlstate = getattr(exc, "sqlstate", None)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    out: dict[str, Any] = {"status": "error", "sqlstate": sqlstate, "message": message}
    for key in ("detail", "hint"):
        value = getattr(exc, key, None)
        if value:
            out[key] = value
    if sqlstate in _ACCESS_SQLSTATES:
        out["refused_by"] = "jitgate" if "jitgate" in message else "database"
    return out
