"""COPY ... TO STDOUT (FORMAT text): tab-separated lines with backslash escapes.

Fields are split on unescaped delimiters, compared raw against the NULL string, de-escaped
(``\\b \\f \\n \\r \\t \\v \\\\``, octal ``\\NNN``, hex ``\\xHH``, ``\\<c>`` -> ``c``) and
handed to the row plan as text-format values. Only fields the plan changed are re-escaped,
the way PostgreSQL's own COPY output escapes them; all other bytes go out as they came.
"""

from __future__ import annotations

import re

from broker.masking.copyout.base import CopyPlan
from broker.masking.exceptions import MaskingRefused
from broker.masking.rows import RowPlan

_UNESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|([\s\S]))")
_LETTERS = {ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t",
            ord("v"): b"\v"}  # fmt: skip
_ESCAPES = {0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t", 0x0B: b"\\v",
            0x5C: b"\\\\"}  # fmt: skip


def _unescape_one(m: re.Match[bytes]) -> bytes:
    octal, hexa, other = m.groups()
    if octal is not None:
        return bytes((int(octal, 8) & 0xFF,))
    if hexa is not None:
        return bytes((int(hexa, 16),))
    return _LETTERS.get(other[0], other)


def unescape(raw: bytes) -> bytes:
    """A text-format COPY field as its value (the raw field when it holds no backslash)."""
    return _UNESCAPE.sub(_unescape_one, raw) if 92 in raw else raw


class TextCodec:
    """Splitting, unescaping and escaping for one delimiter (a single ASCII byte)."""

    __slots__ = ("delimiter", "_splitter", "_needs_escape", "_escapes")

    def __init__(self, delimiter: bytes) -> None:
        self.delimiter = delimiter
        self._splitter = re.compile(rb"\\[\s\S]|" + re.escape(delimiter))
        escapes = dict(_ESCAPES)
        escapes.setdefault(delimiter[0], b"\\" + delimiter)
        self._escapes = escapes
        self._needs_escape = re.compile(
            b"[" + b"".join(re.escape(bytes((c,))) for c in escapes) + b"]"
        )

    def split(self, row: bytes) -> list[bytes]:
        if 92 not in row:
            return row.split(self.delimiter)
        fields = []
        start = 0
        for m in self._splitter.finditer(row):
            if m.end() - m.start() == 1:  # the delimiter itself, not an escape pair
                fields.append(row[start : m.start()])
                start = m.end()
        fields.append(row[start:])
        return fields

    def escape(self, value: bytes) -> bytes:
        escapes = self._escapes
        return self._needs_escape.sub(lambda m: escapes[m.group(0)[0]], value)


def _raw_fields_gate_exactly() -> bool:
    """Whether the content gate may read text COPY fields raw, escapes and all (runs of
    lines, proxy.protocol.rowrun): only if no byte an escape stands for (\\b \\f \\n \\r
    \\t \\v \\\\) is one the gate looks at: a rare byte of any detector, a run or digit
    character, a digit separator."""
    from broker.masking.detectors import DETECTORS
    from broker.masking.detectors.base import DIGIT_SEPARATORS, DIGITS, RUN_CHARS

    looked_at = set(RUN_CHARS) | set(DIGITS) | set(DIGIT_SEPARATORS)
    for detector in DETECTORS.values():
        looked_at |= set(detector.rare)
    return not looked_at & set(b"\b\f\n\r\t\v\\")


RAW_FIELDS_GATE_EXACTLY = _raw_fields_gate_exactly()


class TextCopyPlan(CopyPlan):
    __slots__ = ("_plan", "_codec", "_null", "_header_pending")

    def __init__(self, plan: RowPlan, *, delimiter: bytes, null: bytes, header: bool) -> None:
        self._plan = plan
        self._codec = TextCodec(delimiter)
        self._null = null
        self._header_pending = header

    @property
    def run_plan(self) -> RowPlan | None:
        # Runs (proxy.protocol.rowrun) read tab-delimited lines only, once past the header.
        if self._header_pending or self._codec.delimiter != b"\t" or not RAW_FIELDS_GATE_EXACTLY:
            return None
        return self._plan

    @property
    def text_null(self) -> bytes:  # type: ignore[override]
        return self._null

    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]:
        if not data.endswith(b"\n"):
            raise MaskingRefused("a COPY text row does not end within its CopyData message")
        rows = data[:-1].split(b"\n")
        changed = False
        total = 0
        for r, row in enumerate(rows):
            if self._header_pending:
                self._header_pending = False
                continue
            new_row, n = self._mask_row(row)
            if new_row is not None:
                rows[r] = new_row
                changed = True
                total += n
        if not changed:
            return data, 0
        return b"\n".join(rows) + b"\n", total

    def _mask_row(self, row: bytes) -> tuple[bytes | None, int]:
        fields = self._codec.split(row)
        null = self._null
        values = [None if f == null else unescape(f) for f in fields]
        if len(values) != len(self._plan.columns):
            raise MaskingRefused(
                f"a COPY text row has {len(values)} fields, expected {len(self._plan.columns)}"
            )
        new, n = self._plan.mask_values(values)
        if new is None:
            return None, 0
        out = [
            fields[i] if v is values[i] else (null if v is None else self._codec.escape(v))
            for i, v in enumerate(new)
        ]
        return self._codec.delimiter.join(out), n
