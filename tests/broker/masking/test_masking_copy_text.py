from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking import ColumnInfo, Masker, MaskingConfig, MaskingRefused
from broker.masking.copyout.text import TextCodec, unescape
from tests.broker.masking.copy_info import CopyOptions

TEXT, INT8 = 25, 20


Info = CopyOptions


# An encoder written from PostgreSQL's CopyAttributeOutText, independent of the masker's.
def pg_escape(value: str, delimiter: str) -> str:
    out = []
    for ch in value:
        if ch == "\\" or ch == delimiter and ch not in "\b\f\n\r\t\v":
            out.append("\\" + ch)
        elif ch in "\b\f\n\r\t\v":
            out.append("\\" + "bfnrtv"["\b\f\n\r\t\v".index(ch)])
        else:
            out.append(ch)
    return "".join(out)


def pg_row(values: list[str | None], delimiter: str = "\t", null: str = "\\N") -> bytes:
    fields = [null if v is None else pg_escape(v, delimiter) for v in values]
    return (delimiter.join(fields) + "\n").encode()


def pg_parse(data: bytes, delimiter: str = "\t", null: str = "\\N") -> list[str | None]:
    """Decode one row the way COPY FROM would (also independent of the masker)."""
    text = data.decode()
    assert text.endswith("\n")
    fields: list[str | None] = []
    raw, value, i = "", "", 0
    body = text[:-1]
    while i <= len(body):
        ch = body[i] if i < len(body) else None
        if ch is None or ch == delimiter:
            fields.append(None if raw == null else value)
            raw, value = "", ""
        elif ch == "\\":
            nxt = body[i + 1]
            raw += ch + nxt
            value += {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}.get(
                nxt, nxt
            )
            i += 1
        else:
            raw += ch
            value += ch
        i += 1
    return fields


COLUMNS = [ColumnInfo("note", TEXT), ColumnInfo("password", TEXT), ColumnInfo("id", INT8)]
MASKER = Masker(MaskingConfig())
ALPHABET = st.sampled_from(
    list("ab \t\n\r\\\b\f\v|N.@x-é☃0") + ["jane@example.com", "4242 4242 4242 4242"]
)
VALUE = st.none() | st.lists(ALPHABET, max_size=8).map("".join)


def test_plain_rows_pass_untouched_as_the_same_object() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    data = pg_row(["hello\tworld\\", None, "7"])
    out, n = plan.mask_copy_data(data)
    assert out is data and n == 0


def test_escapes_nulls_and_tabs_around_a_masked_field() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    data = pg_row(["tab\there\nnewline \\N jane@example.com", "hunter2", None])
    out, n = plan.mask_copy_data(data)
    assert n == 2
    assert pg_parse(out) == ["tab\there\nnewline \\N j***@example.com", "********", None]


def test_header_line_is_passed_through() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info(header=True))
    assert plan is not None
    header = b"note\tpassword\tid\n"
    assert plan.mask_copy_data(header) == (header, 0)
    out, n = plan.mask_copy_data(pg_row(["x", "secret", "1"]))
    assert pg_parse(out) == ["x", "********", "1"] and n == 1


def test_several_rows_in_one_message() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    data = pg_row(["a", "pw1", "1"]) + pg_row(["b", None, "2"]) + pg_row(["c", "pw3", None])
    out, n = plan.mask_copy_data(data)
    assert n == 2
    rows = [pg_parse(line + b"\n") for line in out.split(b"\n")[:-1]]
    assert rows == [["a", "********", "1"], ["b", None, "2"], ["c", "********", None]]


def test_name_matched_bigint_becomes_the_null_string() -> None:
    plan = MASKER.plan_copy([ColumnInfo("card_number", INT8)], Info(null="\\NULL", delimiter=","))
    assert plan is not None
    assert plan.mask_copy_data(b"4242424242424242\n") == (b"\\NULL\n", 1)


@pytest.mark.parametrize("null", ["NULL", "ann@example.com", "x", "\\n", "a\\\\b", "\\,"])
def test_a_null_string_some_value_could_be_written_as_is_refused(null: str) -> None:
    # PostgreSQL writes a value equal to the NULL string as it is: that value would pass as
    # NULL, unmasked (a guess per COPY, row by row). "\\n" is how a newline is written.
    with pytest.raises(MaskingRefused, match="NULL string"):
        MASKER.plan_copy([ColumnInfo("email", 25)], Info(null=null, delimiter=","))


@pytest.mark.parametrize("null", ["\\N", "", "\\", "x\\y", "\\q"])
def test_a_null_string_no_value_is_written_as_is_accepted(null: str) -> None:
    assert MASKER.plan_copy([ColumnInfo("email", 25)], Info(null=null, delimiter=",")) is not None


def test_unescape_forms() -> None:
    assert unescape(rb"a\tb\nc\\d\101\x41\q\N") == b"a\tb\nc\\dAAqN"
    assert unescape(rb"\777") == b"\xff"
    raw = b"no escapes"
    assert unescape(raw) is raw


def test_codec_split_respects_escaped_delimiters() -> None:
    codec = TextCodec(b"|")
    assert codec.split(rb"a\|b|c\\|d") == [rb"a\|b", rb"c\\", b"d"]
    assert codec.escape(b"a|b\\c\td") == rb"a\|b\\c\td"
    assert TextCodec(b"\x01").escape(b"a\x01b") == b"a\\\x01b"


@pytest.mark.parametrize(
    "data",
    [b"a\tb", b"only\ttwo\n", b"a\tb\tc\td\n"],
)
def test_unparseable_rows_are_refused(data: bytes) -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    with pytest.raises(MaskingRefused):
        plan.mask_copy_data(data)


@settings(deadline=None)
@given(st.lists(VALUE, min_size=3, max_size=3), st.sampled_from(["\t", "|", ","]))
def test_copy_text_masks_exactly_like_data_rows(values: list[str | None], delimiter: str) -> None:
    plan = MASKER.plan_copy(COLUMNS, Info(delimiter=delimiter, null="\\N"))
    rows = MASKER.plan_rows([ColumnInfo(c.name, c.type_oid, 0) for c in COLUMNS])
    assert plan is not None and rows is not None
    data = pg_row(values, delimiter)
    out, n = plan.mask_copy_data(data)
    expected, expected_n = rows.mask_values([None if v is None else v.encode() for v in values])
    if expected is None:
        assert out is data and n == 0
    else:
        assert n == expected_n
        want = [None if v is None else v.decode() for v in expected]
        assert pg_parse(out, delimiter) == want
        # Byte for byte what PostgreSQL would have sent had the values been masked at rest.
        assert out == pg_row(want, delimiter)


@settings(deadline=None)
@given(st.lists(VALUE, min_size=3, max_size=3))
def test_copy_text_with_a_plan_that_masks_nothing_is_byte_identical(
    values: list[str | None],
) -> None:
    masker = Masker(MaskingConfig(columns=["password"], detectors=[]))
    plan = masker.plan_copy(COLUMNS, Info())
    assert plan is not None
    values[1] = None  # the only name-matched column holds NULL: nothing to mask
    data = pg_row(values)
    assert plan.mask_copy_data(data) == (data, 0)


@pytest.mark.parametrize("encoding", ["SJIS", "Shift_JIS", "mskanji", "win932", "BIG5", "GBK", "windows936",
                                      "UHC", "GB18030", "JOHAB", "SHIFT_JIS_2004", "EBCDIC", "nonsense"])
def test_a_copy_encoding_that_can_hide_ascii_in_characters_is_refused(encoding: str) -> None:
    from broker.masking.copyout import build_copy_plan

    plan = Masker().plan_rows([ColumnInfo("ssn", 25)])
    assert plan is not None
    with pytest.raises(MaskingRefused, match="ENCODING"):
        build_copy_plan(plan, CopyOptions(encoding=encoding))


@pytest.mark.parametrize("encoding", [None, "UTF8", "utf-8", "Unicode", "LATIN1", "latin-9", "ISO-8859-15",
                                      "WIN1252", "windows-1251", "KOI8-R", "EUC_JP", "SQL_ASCII"])
def test_an_ascii_safe_copy_encoding_is_accepted(encoding: str | None) -> None:
    from broker.masking.copyout import build_copy_plan

    plan = Masker().plan_rows([ColumnInfo("ssn", 25)])
    assert plan is not None
    assert build_copy_plan(plan, CopyOptions(encoding=encoding)) is not None
