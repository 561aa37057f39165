"""COPY ... TO STDOUT (FORMAT csv): quoting as PostgreSQL writes it.

PostgreSQL quotes a whole field or not at all (a value with the delimiter, the quote
character, CR or LF, or equal to the NULL string, is quoted; FORCE_QUOTE quotes more),
doubles quotes inside (or prefixes them with ESCAPE), and writes NULL as the bare NULL
string. So a field is either ``"..."`` or free of quote characters, and a quoted field is
never NULL. Rows end with LF; quoted fields may hold LFs, so rows are parsed, not split,
unless the payload holds no quote character at all (the common case).
"""

from __future__ import annotations

import re

from broker.masking.copyout.base import CopyPlan
from broker.masking.exceptions import MaskingRefused
from broker.masking.rows import RowPlan


class CsvCodec:
    """Field parsing, unquoting and quoting for one (delimiter, quote, escape, null)."""

    __slots__ = ("delimiter", "quote", "escape_char", "null", "_field", "_unescape", "_to_escape",
                 "_must_quote")  # fmt: skip

    def __init__(self, *, delimiter: bytes, quote: bytes, escape: bytes, null: bytes) -> None:
        self.delimiter, self.quote, self.escape_char, self.null = delimiter, quote, escape, null
        d, q, e = (re.escape(x) for x in (delimiter, quote, escape))
        if escape == quote:
            quoted = q + rb"(?:[^" + q + rb"]|" + q + q + rb")*" + q
            self._unescape = re.compile(q + q)
        else:
            quoted = q + rb"(?:[^" + q + e + rb"]|" + e + rb"[" + q + e + rb"]|" + e + rb")*" + q
            self._unescape = re.compile(e + rb"([" + q + e + rb"])")
        self._field = re.compile(rb"(" + quoted + rb")|[^" + d + q + rb"\n\r]*")
        self._to_escape = re.compile(rb"[" + q + e + rb"]")
        self._must_quote = re.compile(rb"[" + d + q + rb"\n\r]")

    def parse_row(self, data: bytes, pos: int) -> tuple[list[bytes], int]:
        """The raw fields of the row starting at `pos`, and where the next row starts."""
        fields: list[bytes] = []
        match = self._field.match
        delim = self.delimiter[0]
        n = len(data)
        while True:
            m = match(data, pos)
            if m is None:  # an unterminated quoted field
                raise MaskingRefused("a COPY csv row does not end within its CopyData message")
            fields.append(m.group(0))
            pos = m.end()
            if pos >= n:
                raise MaskingRefused("a COPY csv row does not end within its CopyData message")
            c = data[pos]
            pos += 1
            if c == 10:  # LF
                return fields, pos
            if c != delim:
                raise MaskingRefused("COPY csv output that the masker cannot parse")

    def value(self, raw: bytes) -> bytes | None:
        if raw[:1] != self.quote or len(raw) < 2:
            return None if raw == self.null else raw
        inner = raw[1:-1]
        if self.escape_char == self.quote:
            return self._unescape.sub(self.quote, inner) if self.quote in inner else inner
        return self._unescape.sub(rb"\1", inner) if self.escape_char in inner else inner

    def encode(self, value: bytes, *, quoted: bool) -> bytes:
        """A masked value as PostgreSQL would write it; `quoted` keeps FORCE_QUOTE's choice."""
        if quoted or value == self.null or self._must_quote.search(value):
            e = self.escape_char
            return self.quote + self._to_escape.sub(lambda m: e + m.group(0), value) + self.quote
        return value


class CsvCopyPlan(CopyPlan):
    __slots__ = ("_plan", "_codec", "_header_pending")

    def __init__(
        self, plan: RowPlan, *, delimiter: bytes, quote: bytes, escape: bytes, null: bytes,
        header: bool,
    ) -> None:  # fmt: skip
        self._plan = plan
        self._codec = CsvCodec(delimiter=delimiter, quote=quote, escape=escape, null=null)
        self._header_pending = header

    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]:
        if not data.endswith(b"\n"):
            raise MaskingRefused("a COPY csv row does not end within its CopyData message")
        codec = self._codec
        rows: list[list[bytes]]
        if codec.quote not in data:
            rows = [row.split(codec.delimiter) for row in data[:-1].split(b"\n")]
        else:
            rows = []
            pos, n = 0, len(data)
            while pos < n:
                fields, pos = codec.parse_row(data, pos)
                rows.append(fields)
        changed = False
        total = 0
        out: list[bytes] = []
        for fields in rows:
            if self._header_pending:
                self._header_pending = False
                out.append(codec.delimiter.join(fields))
                continue
            new_row, n_masked = self._mask_row(fields)
            if new_row is not None:
                changed = True
                total += n_masked
            out.append(codec.delimiter.join(fields) if new_row is None else new_row)
        if not changed:
            return data, 0
        return b"\n".join(out) + b"\n", total

    def _mask_row(self, fields: list[bytes]) -> tuple[bytes | None, int]:
        codec = self._codec
        values = [codec.value(f) for f in fields]
        if len(values) != len(self._plan.columns):
            raise MaskingRefused(
                f"a COPY csv row has {len(values)} fields, expected {len(self._plan.columns)}"
            )
        new, n = self._plan.mask_values(values)
        if new is None:
            return None, 0
        out = [
            fields[i]
            if v is values[i]
            else (codec.null if v is None else codec.encode(v, quoted=fields[i][:1] == codec.quote))
            for i, v in enumerate(new)
        ]
        return codec.delimiter.join(out), n
