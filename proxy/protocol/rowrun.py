"""Runs of DataRows handled at once: one content-gate call per run, one rewrite per run.

Most results are long runs of DataRows under one plan (broker.masking.rows.RowPlan). Taking
them one at a time costs, per row, a parse into a list of values, the gate's join, and for a
masked row a rebuilt message: several Python objects per row that the masking itself does
not need. `proxy.answers` takes the complete DataRows at hand in runs of up to `RUN_ROWS`:

- `join_scanned`: the values of the scanned columns of a whole run, joined with NUL as
  `RowPlan.mask_values` joins one row's, for a single call of the content gate
  (`Scanner.triggered`). When it stays shut no scanned value of the run can change. That is
  exact, not a heuristic: every condition the gate tests (a rare byte present; a run of token
  or digit characters at least k long, after a per-byte `translate`) holds on a string
  whenever it holds on a substring of it, each row's joined values are a substring of the
  run's, and NUL belongs to no run and is no rare byte, so values of different rows or
  columns never merge into a run that was not there. When it opens, the run's rows go
  through the per-row path one by one.
- `mask_run`: the run rewritten with the new values of the columns masked whatever they hold
  (by name: `RowPlan.rewrite`), calling the column's treatment per value as the per-row path
  does, and copying every other value as it came. A `rewrite` byte above 1 names a treatment
  the C applies itself, without the call (`REWRITE_LAST`; broker.masking.rows.REWRITE_CODES
  gives those codes to the functions that compute the same): the references here call the
  function for every non-zero byte.

Both are C (`_rowrun.c`) where the build compiled it. The functions below are the same in
Python: the reference the C is tested against (tests/proxy/test_rowrun.py) and what a build
without a compiler (`JITGATE_PURE_PYTHON=1`) runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "COPY_DATA", "DATA_ROW", "NATIVE", "REWRITE_LAST", "RUN_ROWS", "join_scanned", "join_scanned_py", "join_text",
    "join_text_py", "mask_run", "mask_run_py", "mask_text_run", "mask_text_run_py",
]

#: The highest `rewrite` code (_rowrun.c: 1 calls the column's function; 2-7 are done in C).
REWRITE_LAST = 7

#: Rows per run: large enough that a call's fixed cost is spread thin, small enough that one
#: row the gate opens on sends few others through the per-row path with it.
RUN_ROWS = 64

ValueFn = Callable[[bytes], "bytes | None"]
DATA_ROW = 0x44  # 'D'
COPY_DATA = 0x64  # 'd': one binary COPY tuple per message
_NULL = 0xFFFFFFFF


def _rows(
    buf: bytes | bytearray, start: int, stop: int, ncols: int, max_length: int, max_rows: int, kind: int
) -> Iterator[tuple[int, int, list[tuple[int, int] | None]]]:
    """(start, end, [(value offset, length) or None for NULL]) of each complete, well-formed
    message of type `kind` (a DataRow, or a binary COPY's CopyData holding one tuple) of
    `ncols` values at buf[start:stop], up to `max_rows`; stops at anything else."""
    if start < 0 or stop < start or stop > len(buf) or max_rows < 0:
        raise ValueError("start/stop outside the buffer")
    pos = start
    rows = 0
    while rows < max_rows:
        if stop - pos < 7 or buf[pos] != kind:
            return
        length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
        if length < 6 or length > max_length or length > stop - pos - 1:
            return
        end = pos + 1 + length
        if int.from_bytes(buf[pos + 5 : pos + 7], "big") != ncols:
            return
        p = pos + 7
        values: list[tuple[int, int] | None] = []
        for _ in range(ncols):
            if end - p < 4:
                return
            raw = int.from_bytes(buf[p : p + 4], "big")
            p += 4
            if raw == _NULL:
                values.append(None)
                continue
            if raw > 0x7FFFFFFF or raw > end - p:
                return  # another negative length, or past the message
            values.append((p, raw))
            p += raw
        if p != end:
            return  # bytes after the last value
        yield pos, end, values
        pos = end
        rows += 1


def join_scanned_py(
    buf: bytes | bytearray, start: int, stop: int, scanned: bytes, max_length: int, max_rows: int, kind: int
) -> tuple[bytes, int, int]:
    """(the values of the `scanned` columns of the run at buf[start:stop], each followed by
    NUL; the offset past the last row taken; how many rows)."""
    parts: list[bytes] = []
    end = start
    rows = 0
    for _, row_end, values in _rows(buf, start, stop, len(scanned), max_length, max_rows, kind):
        for flag, value in zip(scanned, values, strict=True):
            if flag and value is not None:
                parts += (bytes(buf[value[0] : value[0] + value[1]]), b"\x00")
        end = row_end
        rows += 1
    return b"".join(parts), end, rows


def _check_codes(rewrite: bytes, who: str) -> None:
    for code in rewrite:
        if code > REWRITE_LAST:
            raise ValueError(f"{who}: unknown rewrite code {code}")


def mask_run_py(
    buf: bytes | bytearray,
    start: int,
    stop: int,
    rewrite: bytes,
    fns: Sequence[ValueFn | None],
    max_length: int,
    max_rows: int,
    kind: int,
) -> tuple[bytes, int, int, int]:
    """(the rows of the run at buf[start:stop] with the `rewrite` columns' values passed
    through their `fns`; the offset past the last row taken; how many rows; how many values
    changed, counted as the per-row path counts them: returned as another object)."""
    if len(fns) != len(rewrite):
        raise ValueError("mask_run: one function per column")
    _check_codes(rewrite, "mask_run")
    out: list[bytes] = []
    end = start
    rows = changed = 0
    for row_start, row_end, values in _rows(buf, start, stop, len(rewrite), max_length, max_rows, kind):
        parts = [bytes(buf[row_start + 5 : row_start + 7])]
        for flag, fn, value in zip(rewrite, fns, values, strict=True):
            if value is None:
                parts.append(b"\xff\xff\xff\xff")
                continue
            v = bytes(buf[value[0] : value[0] + value[1]])
            if flag:
                assert fn is not None
                new = fn(v)
                if new is not v:
                    changed += 1
                    if new is None:
                        parts.append(b"\xff\xff\xff\xff")
                        continue
                    if not isinstance(new, bytes):
                        raise TypeError(f"mask_run: a column function returned {type(new).__name__}, not bytes or None")
                    v = new
            parts += (len(v).to_bytes(4, "big"), v)
        body = b"".join(parts)
        out += (bytes((kind,)), (len(body) + 4).to_bytes(4, "big"), body)
        end = row_end
        rows += 1
    return b"".join(out), end, rows, changed


# -- COPY TO STDOUT, text format, tab-delimited -------------------------------------------

_TEXT_ESCAPES = {ord("b"): 0x08, ord("f"): 0x0C, ord("n"): 0x0A, ord("r"): 0x0D, ord("t"): 0x09, ord("v"): 0x0B,
                 0x5C: 0x5C}  # fmt: skip
_TEXT_ESCAPED = {v: bytes((0x5C, k)) for k, v in _TEXT_ESCAPES.items()}
TEXT_MAX_FIELDS = 1664


def _text_rows(
    buf: bytes | bytearray, start: int, stop: int, null: bytes, ncols: int, max_length: int, max_rows: int
) -> Iterator[tuple[int, int, list[tuple[int, int] | None]]]:
    """(start, end, [(field start, end) or None for NULL]) of each CopyData at buf[start:stop]
    that is one tab-delimited text line of `ncols` fields, every field the NULL string or
    text whose backslashes start \\b \\f \\n \\r \\t \\v or \\\\ (see _rowrun.c for why); stops at
    anything else."""
    if start < 0 or stop < start or stop > len(buf) or max_rows < 0:
        raise ValueError("start/stop outside the buffer")
    if not 1 <= ncols <= TEXT_MAX_FIELDS:
        raise ValueError("a text COPY row has 1 to 1664 fields")
    pos = start
    rows = 0
    while rows < max_rows:
        if stop - pos < 6 or buf[pos] != COPY_DATA:
            return
        length = int.from_bytes(buf[pos + 1 : pos + 5], "big")
        if length < 5 or length > max_length or length > stop - pos - 1:
            return
        end = pos + 1 + length
        line_end = end - 1
        if buf[line_end] != 0x0A:
            return
        fields: list[tuple[int, int] | None] = []
        field_start = pos + 5
        while True:
            if len(fields) >= ncols:
                return
            q = field_start
            clean = True
            while q < line_end and buf[q] != 0x09:
                c = buf[q]
                if c == 0x0A:
                    return
                if c == 0x5C:
                    if q + 1 >= line_end or buf[q + 1] not in _TEXT_ESCAPES:
                        clean = False
                    q += 2
                    continue
                q += 1
            if q > line_end:
                return
            if buf[field_start:q] == null:
                fields.append(None)
            elif not clean:
                return
            else:
                fields.append((field_start, q))
            if q == line_end:
                break
            field_start = q + 1
        if len(fields) != ncols:
            return
        yield pos, end, fields
        pos = end
        rows += 1


def join_text_py(
    buf: bytes | bytearray, start: int, stop: int, null: bytes, scanned: bytes, max_length: int, max_rows: int
) -> tuple[bytes, int, int]:
    """`join_scanned` for tab-delimited text COPY lines: the raw scanned fields (escapes
    left as they are: sound for the gate, see _text_rows), NULLs left out."""
    parts: list[bytes] = []
    end = start
    rows = 0
    for _, row_end, fields in _text_rows(buf, start, stop, null, len(scanned), max_length, max_rows):
        for flag, span in zip(scanned, fields, strict=True):
            if flag and span is not None:
                parts += (bytes(buf[span[0] : span[1]]), b"\x00")
        end = row_end
        rows += 1
    return b"".join(parts), end, rows


def mask_text_run_py(
    buf: bytes | bytearray,
    start: int,
    stop: int,
    null: bytes,
    rewrite: bytes,
    fns: Sequence[ValueFn | None],
    max_length: int,
    max_rows: int,
) -> tuple[bytes, int, int, int]:
    """`mask_run` for tab-delimited text COPY lines: a rewritten field's value (escapes
    decoded) goes to its function; the same object keeps the raw field, None writes the NULL
    string, bytes are written escaped as PostgreSQL escapes them."""
    if len(fns) != len(rewrite):
        raise ValueError("mask_text_run: one function per column")
    _check_codes(rewrite, "mask_text_run")
    out: list[bytes] = []
    end = start
    rows = changed = 0
    for row_start, row_end, fields in _text_rows(buf, start, stop, null, len(rewrite), max_length, max_rows):
        row = bytes(buf[row_start:row_end])  # read once, before any call into Python
        parts: list[bytes] = []
        for flag, fn, span in zip(rewrite, fns, fields, strict=True):
            if span is None:
                parts.append(null)
                continue
            raw = row[span[0] - row_start : span[1] - row_start]
            if not flag:
                parts.append(raw)
                continue
            assert fn is not None
            value = _unescape_text(raw)
            new = fn(value)
            if new is value:
                parts.append(raw)
                continue
            changed += 1
            if new is None:
                parts.append(null)
            elif isinstance(new, bytes):
                parts.append(b"".join(_TEXT_ESCAPED.get(c, bytes((c,))) for c in new))
            else:
                raise TypeError(f"mask_text_run: a column function returned {type(new).__name__}, not bytes or None")
        line = b"\t".join(parts) + b"\n"
        out += (b"d", (len(line) + 4).to_bytes(4, "big"), line)
        end = row_end
        rows += 1
    return b"".join(out), end, rows, changed


def _unescape_text(raw: bytes) -> bytes:
    if 0x5C not in raw:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C:
            i += 1
            out.append(_TEXT_ESCAPES[raw[i]])
        else:
            out.append(c)
        i += 1
    return bytes(out)


JoinScanned = Callable[[bytes | bytearray, int, int, bytes, int, int, int], tuple[bytes, int, int]]
MaskRun = Callable[
    [bytes | bytearray, int, int, bytes, tuple[ValueFn | None, ...], int, int, int], tuple[bytes, int, int, int]
]


JoinText = Callable[[bytes | bytearray, int, int, bytes, bytes, int, int], tuple[bytes, int, int]]
MaskTextRun = Callable[
    [bytes | bytearray, int, int, bytes, bytes, tuple[ValueFn | None, ...], int, int], tuple[bytes, int, int, int]
]


def _load() -> tuple[JoinScanned, MaskRun, JoinText, MaskTextRun, bool]:
    try:
        from proxy.protocol import _rowrun
    except ImportError:  # a build without a compiler: proxy.native reports it at start
        return join_scanned_py, mask_run_py, join_text_py, mask_text_run_py, False
    return _rowrun.join_scanned, _rowrun.mask_run, _rowrun.join_text, _rowrun.mask_text_run, True


join_scanned, mask_run, join_text, mask_text_run, NATIVE = _load()
