"""COPY ... TO STDOUT masking, one module per COPY format (text, csv, binary).

`build_copy_plan` checks the COPY options and refuses (MaskingRefused) what it cannot
parse with certainty: a delimiter, quote or escape that is not one ASCII byte, a NULL
string holding a delimiter, quote or line break, an unknown format, and an ENCODING whose
multi-byte characters can hold ASCII bytes. The masker then never guesses at a row's
layout. The client encoding is pinned to UTF8 by the gateway; COPY's own ENCODING option
overrides it for the data, and in SJIS, BIG5, GBK, UHC, GB18030 or JOHAB the second byte of
a character can be a delimiter or a backslash (ポ is 0x83 0x7C, "|"), which would shift a
masked value into the next column. Only encodings where every byte below 0x80 is that ASCII
character are accepted (`_ASCII_SAFE`, PostgreSQL's own names, compared as it does:
case and punctuation ignored).
"""

from __future__ import annotations

import re

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


#: Encodings (normalised: lowercase, letters and digits) whose every byte below 0x80 is ASCII:
#: PostgreSQL's server encodings and their aliases; its client-only encodings are refused.
_ASCII_SAFE = re.compile(
    r"utf8|unicode|sqlascii|latin([1-9]|10)|iso8859(1|[2-9]|1[0-6])|win(125[0-8]|866|874)"
    r"|windows(125[0-8]|866|874)|koi8[ru]?|euc(cn|jp|jis2004|kr|tw)|muleinternal|alt|win|abc"
    r"|tcvn(5712)?|vscii"
)


def _check_encoding(name: str | None) -> None:
    if name is None:
        return
    key = "".join(c for c in name.lower() if c.isalnum())
    if not _ASCII_SAFE.fullmatch(key):
        raise MaskingRefused(
            f"COPY ENCODING {name!r} can put ASCII bytes inside multi-byte characters, which the "
            "masker cannot split safely: leave ENCODING out (the gateway's client encoding is UTF8)"
        )


def _text_null(null: bytes, delimiter: bytes) -> bytes:
    """The NULL string of a text COPY, if no value can be written as it.

    PostgreSQL writes a value equal to the NULL string as it is (only CSV quotes it), so a
    NULL string that some value's text could equal makes that value pass as NULL, unmasked:
    ``COPY customers (email) TO STDOUT (NULL 'ann@example.com')`` would tell, row by row,
    whether an address is that guess (an inference the policy sends to review when written
    as ``WHERE email = ...``). Values are written with a backslash only before ``\\ b f n r t
    v`` or the delimiter; a NULL string with a backslash before anything else (``\\N``, the
    default) or at its end is no value's text. The empty string is accepted too: it can only
    stand for an empty value, which masking shows as empty anyway.
    """
    i = 0
    while i < len(null):
        if null[i] == 0x5C:
            if i + 1 == len(null) or null[i + 1] not in b"\\bfnrtv" + delimiter:
                return null
            i += 2
            continue
        i += 1
    if not null:
        return null
    raise MaskingRefused(
        f"COPY text NULL string {null.decode('utf-8', 'replace')!r} could equal a value, which would "
        "then pass unmasked: leave NULL out (\\N), or use one with a backslash before another letter"
    )


def build_copy_plan(plan: RowPlan, info: CopyInfoLike) -> CopyPlan:
    """The plan for one COPY TO STDOUT whose rows `plan` masks (formats already set)."""
    _check_encoding(info.encoding)
    fmt = info.format
    if fmt == "binary":
        return BinaryCopyPlan(plan)
    if fmt == "text":
        delimiter = _one_byte("delimiter", info.delimiter, "\t")
        if delimiter in _TEXT_RESERVED:
            # These would be read as part of a backslash escape.
            raise MaskingRefused(f"COPY text delimiter {info.delimiter!r} is ambiguous")
        null = _text_null(_null_string(info.null, delimiter), delimiter)
        return TextCopyPlan(plan, delimiter=delimiter, null=null, header=info.header)
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
