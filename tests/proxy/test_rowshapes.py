"""Columns masked by name, shaped in C (proxy/protocol/_rowrun.c, "Whole values masked by
name"): for every `rewrite` code the C applies itself, it gives the bytes the column's
Python function gives (broker.masking.rows.REWRITE_CODES), on values built to sit on every
edge of the e-mail, card and phone shapes, and whole runs masked that way equal the Python
reference's."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.masking import Masker
from broker.masking.rows import REWRITE_CODES
from broker.masking.types import ColumnInfo
from proxy.protocol import messages as m
from proxy.protocol import rowrun

try:
    from proxy.protocol import _rowrun as native
except ImportError:  # a JITGATE_PURE_PYTHON=1 build (tests/proxy/test_native.py fails on it under CI)
    native = None  # type: ignore[assignment]
requires_c = pytest.mark.skipif(native is None, reason="built without the C extension")

FN_OF = {code: fn for fn, code in REWRITE_CODES.items()}
TEXT, INT4, JSON = 25, 23, 114

# Pieces that land on the shapes' edges: local parts of 1, 256 and 257 characters, labels of
# 63 and 64, TLDs of 2, 24 and 25 letters, up to 9 labels, card digits with one or two
# separators, spaces of every kind at both ends, bytes outside ASCII.
_pieces = st.sampled_from([
    b"a", b"Z", b"0", b"7", b"@", b".", b"-", b"_", b"%", b"+", b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c",
    b"(", b")", b"/", b"*", b"\\", b"\x00", b"\xc3\xa9", b"\xff", b"x" * 256, b"y" * 257, b"b" * 63, b"c" * 64,
    b"co", b"d" * 24, b"e" * 25, b"ab.", b"example.com", b"4242 4242 4242 4242", b"4242-4242", b"  ", b"--",
    b"378282246310005", b"4111111111111111", b"1234567890123", b"+1 415 555 0100", b"ann@example.com",
])
_values = st.one_of(
    st.lists(_pieces, max_size=12).map(b"".join),
    st.binary(max_size=40),
    st.integers(1, 9).map(lambda n: b"u@" + b"l." * n + b"io"),
    st.text(alphabet="0123456789 -", min_size=10, max_size=30).map(str.encode),
)


@requires_c
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_values, st.sampled_from(sorted(FN_OF)))
@example(b"jane.doe@example.com", 3)
@example(b" " + b"a" * 256 + b"@example.com", 3)
@example(b"a" * 257 + b"@example.com", 6)
@example(b"u@" + b"l." * 8 + b"io", 3)
@example(b"u@" + b"l." * 9 + b"io", 3)
@example(b"u@" + b"x" * 64 + b".io", 3)
@example(b"u@host." + b"e" * 25, 3)
@example(b"4242 4242 4242 4242 ", 6)
@example(b"4242  4242 4242 4242", 5)
@example(b"12", 4)
def test_c_shapes_a_value_as_its_python_function_does(value: bytes, code: int) -> None:
    assert native.mask_whole(value, code) == FN_OF[code](value)


@requires_c
def test_the_c_knows_no_other_code() -> None:
    with pytest.raises(ValueError):
        native.mask_whole(b"x", 1)
    with pytest.raises(ValueError):
        native.mask_whole(b"x", rowrun.REWRITE_LAST + 1)
    row = m.data_row([b"x"])
    for mask_run in (rowrun.mask_run, rowrun.mask_run_py):
        with pytest.raises(ValueError, match="unknown rewrite code"):
            mask_run(row, 0, len(row), bytes([rowrun.REWRITE_LAST + 1]), (FN_OF[2],), 1 << 20, 64, rowrun.DATA_ROW)


def test_a_plan_names_the_shapes_the_c_applies() -> None:
    plan = Masker().plan_rows([
        ColumnInfo("id", INT4, 0), ColumnInfo("email", TEXT, 0), ColumnInfo("ssn", TEXT, 0),
        ColumnInfo("phone", TEXT, 0), ColumnInfo("card_number", TEXT, 0), ColumnInfo("password", TEXT, 0),
        ColumnInfo("ssn", INT4, 0), ColumnInfo("contact_email", JSON, 0),
    ])
    assert plan is not None
    # JSON masked by name keeps the call (1): its function is not one the C knows.
    assert plan.rewrite == bytes([0, 3, 6, 4, 5, 2, 7, 1])


@requires_c
def test_the_c_does_not_call_a_shape_s_function() -> None:
    """The shapes are the C's own: a function for them is never called (were it, the run
    would cost a Python call per value again)."""

    def called(_: bytes) -> bytes:
        raise AssertionError("called")

    row = m.data_row([b"ann@example.com", b"123-45-6789", b"7"])
    out, _, rows, changed = rowrun.mask_run(row, 0, len(row), b"\x03\x06\x07", (called,) * 3, 1 << 20, 64,
                                            rowrun.DATA_ROW)
    assert (rows, changed) == (1, 3)
    assert m.parse_data_row(out[5:]) == [b"a***@example.com", b"********", None]


_row_value = st.one_of(st.none(), _values)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_row_value, min_size=3, max_size=3), min_size=1, max_size=10),
       st.lists(st.sampled_from([0, 1, *sorted(FN_OF)]), min_size=3, max_size=3),
       st.sampled_from([rowrun.DATA_ROW, rowrun.COPY_DATA]))
def test_runs_shaped_in_c_equal_the_python_reference(rows, codes, kind) -> None:
    fns = tuple(None if c == 0 else (lambda v: v[::-1]) if c == 1 else FN_OF[c] for c in codes)
    buf = b"".join(bytes((kind,)) + m.data_row(r)[1:] for r in rows)
    rewrite = bytes(codes)
    expected = rowrun.mask_run_py(buf, 0, len(buf), rewrite, fns, 1 << 20, 64, kind)
    assert expected[1:3] == (len(buf), len(rows))
    assert rowrun.mask_run(buf, 0, len(buf), rewrite, fns, 1 << 20, 64, kind) == expected


def _escape(v: bytes) -> bytes:
    from broker.masking.copyout.text import TextCodec

    return TextCodec(b"\t").escape(v)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_row_value, min_size=3, max_size=3), min_size=1, max_size=10),
       st.lists(st.sampled_from([0, 1, *sorted(FN_OF)]), min_size=3, max_size=3),
       st.sampled_from([b"\\N", b""]))
def test_text_copy_runs_shaped_in_c_equal_the_python_reference(rows, codes, null) -> None:
    fns = tuple(None if c == 0 else (lambda v: v[::-1]) if c == 1 else FN_OF[c] for c in codes)
    lines = [b"\t".join(null if v is None else _escape(v) for v in r) + b"\n" for r in rows]
    buf = b"".join(b"d" + (len(line) + 4).to_bytes(4, "big") + line for line in lines)
    rewrite = bytes(codes)
    expected = rowrun.mask_text_run_py(buf, 0, len(buf), null, rewrite, fns, 1 << 20, 64)
    assert rowrun.mask_text_run(buf, 0, len(buf), null, rewrite, fns, 1 << 20, 64) == expected
