from __future__ import annotations

import struct
from functools import partial

import pytest

from broker.masking import ColumnInfo, Masker, MaskingConfig, MaskingRefused
from broker.masking.copyout.binary import SIGNATURE, encode_tuple
from tests.broker.masking.copy_info import CopyOptions

TEXT, INT8, JSONB = 25, 20, 3802


Info = partial(CopyOptions, format="binary")


HEADER = SIGNATURE + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
COLUMNS = [ColumnInfo("id", INT8), ColumnInfo("email", TEXT), ColumnInfo("note", TEXT),
           ColumnInfo("card_number", INT8), ColumnInfo("doc", JSONB)]  # fmt: skip
MASKER = Masker(MaskingConfig())


def row(*values: bytes | None) -> bytes:
    return encode_tuple(list(values))


def i8(n: int) -> bytes:
    return struct.pack("!q", n)


def test_header_with_first_tuple_then_tuples_then_trailer_alone() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    first = HEADER + row(i8(1), b"jane@example.com", b"hi", i8(4242424242424242), b'\x01{"a": 1}')
    out, n = plan.mask_copy_data(first)
    assert out == HEADER + row(i8(1), b"j***@example.com", b"hi", None, b'\x01{"a": 1}')
    assert n == 2
    second = row(i8(2), None, b"mail bob@example.com", None, b'\x01"x@example.com"')
    out, n = plan.mask_copy_data(second)
    assert out == row(i8(2), None, b"mail b***@example.com", None, b'\x01"x***@example.com"')
    assert n == 2
    assert plan.mask_copy_data(TRAILER) == (TRAILER, 0)


def test_unchanged_tuples_are_the_same_object() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    first = HEADER + row(i8(1), None, b"plain", None, None)
    assert plan.mask_copy_data(first) == (first, 0)
    assert plan.mask_copy_data(first[len(HEADER) :])[0] is not None


def test_header_extension_and_empty_result() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    ext = SIGNATURE + struct.pack("!ii", 0, 3) + b"abc"
    data = ext + TRAILER  # an empty result: header and trailer in one message
    assert plan.mask_copy_data(data) == (data, 0)


def test_only_some_tuples_change() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    a = row(i8(1), None, b"x", None, None)
    b = row(i8(2), b"jane@example.com", b"y", None, None)
    out, n = plan.mask_copy_data(HEADER + a + b + a + TRAILER)
    assert out == HEADER + a + row(i8(2), b"j***@example.com", b"y", None, None) + a + TRAILER
    assert n == 1


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([b"PGCOPY\n"], "complete header"),
        ([b"NOTCOPY\n\xff\r\n\x00" + b"\x00" * 8], "complete header"),
        ([SIGNATURE + struct.pack("!Ii", 1 << 16, 0)], "OIDs"),
        ([SIGNATURE + struct.pack("!Ii", 1, 0)], "critical flags"),
        ([SIGNATURE + struct.pack("!ii", 0, 50) + b"x"], "extension"),
        ([HEADER + row(i8(1), None)], "2 fields, expected 5"),
        ([HEADER + row(i8(1), None, None, None, None)[:-3]], "split"),
        ([HEADER + b"\x00"], "split"),
        ([HEADER, TRAILER, row(i8(1), None, None, None, None)], "after its trailer"),
        ([HEADER + struct.pack("!hi", 5, -7)], "split"),
    ],
)
def test_what_cannot_be_parsed_is_refused(chunks: list[bytes], message: str) -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    with pytest.raises(MaskingRefused, match=message):
        for chunk in chunks:
            plan.mask_copy_data(chunk)
