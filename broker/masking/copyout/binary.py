"""COPY ... TO STDOUT (FORMAT binary).

The stream is: the 11-byte signature ``PGCOPY\\n\\377\\r\\n\\0``, int32 flags, int32 length
of a header extension and the extension; then per tuple an int16 field count and per field
an int32 length (-1 for NULL) and that many bytes; then the int16 trailer -1. PostgreSQL
sends the header in the same CopyData as the first tuple (or as the trailer, for an empty
result) and the trailer alone, so the plan remembers whether it has seen the header.
Fields are binary-format values: the row plan masks them as it masks binary DataRows.
"""

from __future__ import annotations

import struct

from broker.masking.copyout.base import CopyPlan
from broker.masking.exceptions import MaskingRefused
from broker.masking.rows import RowPlan

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER_LENGTH = len(SIGNATURE) + 8
_OIDS_FLAG = 1 << 16
_CRITICAL_FLAGS = 0xFFFF  # bits 0-15: a reader must stop if it does not know one

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_NULL = b"\xff\xff\xff\xff"


def encode_tuple(values: list[bytes | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(_NULL)
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return b"".join(parts)


class BinaryCopyPlan(CopyPlan):
    __slots__ = ("_plan", "_n", "_state")

    _HEADER, _TUPLES, _DONE = range(3)

    def __init__(self, plan: RowPlan) -> None:
        self._plan = plan
        self._n = len(plan.columns)
        self._state = self._HEADER

    @property
    def run_plan(self) -> RowPlan | None:
        # Past the header and before the trailer a CopyData is a DataRow's body: one tuple.
        return self._plan if self._state == self._TUPLES else None

    def _header(self, data: bytes) -> int:
        if len(data) < HEADER_LENGTH or not data.startswith(SIGNATURE):
            raise MaskingRefused("binary COPY data does not start with a complete header")
        (flags,) = _U32.unpack_from(data, len(SIGNATURE))
        if flags & _OIDS_FLAG:
            raise MaskingRefused("binary COPY with OIDs is not supported by the masker")
        if flags & _CRITICAL_FLAGS:
            raise MaskingRefused(f"binary COPY header has unknown critical flags {flags:#x}")
        extension: int = _U32.unpack_from(data, len(SIGNATURE) + 4)[0]
        pos = HEADER_LENGTH + extension
        if pos > len(data):
            raise MaskingRefused("binary COPY header extension is split across messages")
        self._state = self._TUPLES
        return pos

    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]:
        pos = self._header(data) if self._state == self._HEADER else 0
        n = len(data)
        pieces: list[bytes] | None = None
        kept_from = 0
        total = 0
        unpack16, unpack32 = _I16.unpack_from, _I32.unpack_from
        while pos < n:
            if self._state == self._DONE:
                raise MaskingRefused("binary COPY data continues after its trailer")
            if pos + 2 > n:
                raise MaskingRefused("a binary COPY tuple is split across messages")
            (count,) = unpack16(data, pos)
            if count == -1:
                self._state = self._DONE
                pos += 2
                continue
            if count != self._n:
                raise MaskingRefused(f"a binary COPY tuple has {count} fields, expected {self._n}")
            start = pos
            pos += 2
            values: list[bytes | None] = []
            for _ in range(count):
                if pos + 4 > n:
                    raise MaskingRefused("a binary COPY tuple is split across messages")
                (length,) = unpack32(data, pos)
                pos += 4
                if length == -1:
                    values.append(None)
                    continue
                if length < 0 or pos + length > n:
                    raise MaskingRefused("a binary COPY tuple is split across messages")
                values.append(data[pos : pos + length])
                pos += length
            new, masked = self._plan.mask_values(values)
            if new is not None:
                if pieces is None:
                    pieces = []
                pieces.append(data[kept_from:start])
                pieces.append(encode_tuple(new))
                kept_from = pos
                total += masked
        if pieces is None:
            return data, 0
        pieces.append(data[kept_from:])
        return b"".join(pieces), total
