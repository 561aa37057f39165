"""COPY ... TO STDOUT masking, one module per COPY format (text, csv, binary).

`build_copy_plan` checks the COPY options and refuses (MaskingRefused) what it cannot
parse with certainty: a delimiter, quote or escape that is not one ASCII byte, a NULL
string holding a delimiter, quote or line break, an unknown format. The masker then never
guesses at a row's layout. Values are assumed to be in an ASCII-compatible client encoding
that does not embed ASCII bytes in multi-byte characters (UTF-8, LATIN1, ...; not SJIS,
BIG5, GBK), as PostgreSQL's own COPY parser does.
"""

from __future__ import annotations

from broker.masking.copyout.base import CopyPlan
from broker.masking.copyout.binary import BinaryCopyPlan
from broker.masking.copyout.csv_format import CsvCopyPlan
from broker.masking.copyout.text import TextCopyPlan
from broker.masking.exceptions import MaskingRefused
from broker.masking.rows import RowPlan
from broker.masking.types import CopyInfoLike

_FORBIDDEN_IN_OPTIONS = frozenset(b"\r\n")
_TEXT_RESERVED = frozenset(bytes((c,)) for c in b"\\.abcdefghijklmnopqrstuvwxyz0123456789")


def _one_byte(what: str, value: str, default: str) -> bytes:
    raw = (value or default).encode("utf-8")
    if len(raw) != 1 or raw[0] > 0x7F:
        raise MaskingRefused(f"COPY {what} {value!r} is not a single ASCII character")
    if raw[0] in _FORBIDDEN_IN_OPTIONS:
        raise MaskingRefused(f"COPY {what} must not be a line break")
    return raw


def _null_string(null: str, *forbidden: bytes) -> bytes:
    raw = null.encode("utf-8")
    if any(c in _FORBIDDEN_IN_OPTIONS for c in raw) or any(f in raw for f in forbidden):
        raise MaskingRefused("COPY NULL string holds a delimiter, quote or line break")
    return raw


def build_copy_plan(plan: RowPlan, info: CopyInfoLike) -> CopyPlan:
    """The plan for one COPY TO STDOUT whose rows `plan` masks (formats already set)."""
    fmt = info.format
    if fmt == "binary":
        return BinaryCopyPlan(plan)
    if fmt == "text":
        delimiter = _one_byte("delimiter", info.delimiter, "\t")
        if delimiter in _TEXT_RESERVED:
            # These would be read as part of a backslash escape.
            raise MaskingRefused(f"COPY text delimiter {info.delimiter!r} is ambiguous")
        return TextCopyPlan(
            plan, delimiter=delimiter, null=_null_string(info.null, delimiter), header=info.header
        )
    if fmt == "csv":
        delimiter = _one_byte("delimiter", info.delimiter, ",")
        quote = _one_byte("quote", info.quote, '"')
        escape = _one_byte("escape", info.escape, quote.decode())
        if quote == delimiter or escape == delimiter:
            raise MaskingRefused("COPY delimiter must differ from the quote and escape characters")
        return CsvCopyPlan(
            plan,
            delimiter=delimiter,
            quote=quote,
            escape=escape,
            null=_null_string(info.null, delimiter, quote),
            header=info.header,
        )
    raise MaskingRefused(f"COPY format {fmt!r} is not supported by the masker")


__all__ = ["BinaryCopyPlan", "CopyPlan", "CsvCopyPlan", "TextCopyPlan", "build_copy_plan"]
