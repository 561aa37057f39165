from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking import ColumnInfo, Masker, MaskingConfig, MaskingRefused
from broker.masking.copyout.csv_format import CsvCodec
from tests.broker.masking.copy_info import CopyOptions

TEXT, INT8 = 25, 20


Info = partial(CopyOptions, format="csv", delimiter=",", null="")


# Written from PostgreSQL's CopyAttributeOutCSV, independent of the masker's encoder.
def pg_field(v: str | None, *, d: str, q: str, e: str, null: str, force: bool) -> str:
    if v is None:
        return null
    if force or v == null or any(c in v for c in (d, q, "\n", "\r")):
        return q + "".join(e + c if c in (q, e) else c for c in v) + q
    return v


def pg_row(values: list[str | None], *, d: str = ",", q: str = '"', e: str = '"', null: str = "",
           force: bool = False) -> bytes:  # fmt: skip
    return (
        d.join(pg_field(v, d=d, q=q, e=e, null=null, force=force) for v in values) + "\n"
    ).encode()


COLUMNS = [ColumnInfo("note", TEXT), ColumnInfo("password", TEXT), ColumnInfo("id", INT8)]
MASKER = Masker(MaskingConfig())


def test_quotes_delimiters_and_newlines_inside_values() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    data = pg_row(['say "hi", then\nwrite jane@example.com', 'pa,ss"wd', None])
    out, n = plan.mask_copy_data(data)
    assert n == 2
    # The masked field was quoted and stays quoted (the masker cannot tell FORCE_QUOTE apart).
    assert out == b'"say ""hi"", then\nwrite j***@example.com","********",\n'


def test_plain_rows_are_the_same_object() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    for data in (b"a,,1\n", b'"a,b","",2\n'):
        out, n = plan.mask_copy_data(data)
        assert out is data and n == 0


def test_empty_string_versus_null() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    # '""' is an empty string (stays empty, nothing to hide); a bare empty field is NULL.
    assert plan.mask_copy_data(b'x,"",1\n') == (b'x,"",1\n', 0)
    assert plan.mask_copy_data(b"x,,1\n") == (b"x,,1\n", 0)


def test_header_and_force_quote() -> None:
    plan = MASKER.plan_copy(COLUMNS, Info(header=True))
    assert plan is not None
    header = b'note,"pass,word",id\n'
    assert plan.mask_copy_data(header) == (header, 0)
    out, n = plan.mask_copy_data(b'"a","secret","1"\n')
    assert out == b'"a","********","1"\n' and n == 1  # a quoted field stays quoted


def test_custom_quote_escape_delimiter_and_null() -> None:
    info = Info(delimiter=";", quote="'", escape="\\", null="NULL")
    plan = MASKER.plan_copy(COLUMNS, info)
    assert plan is not None
    kw = {"d": ";", "q": "'", "e": "\\", "null": "NULL"}
    data = pg_row(["it's jane@example.com \\ ok", "NULL", None], **kw)  # type: ignore[arg-type]
    out, n = plan.mask_copy_data(data)
    assert out == b"'it\\'s j***@example.com \\\\ ok';'********';NULL\n"
    assert n == 2


def test_masked_value_equal_to_null_string_is_quoted() -> None:
    codec = CsvCodec(delimiter=b",", quote=b'"', escape=b'"', null=b"********")
    assert codec.encode(b"********", quoted=False) == b'"********"'
    assert codec.encode(b'a"b', quoted=False) == b'"a""b"'
    assert codec.encode(b"plain", quoted=False) == b"plain"


@pytest.mark.parametrize(
    "data",
    [b'"unterminated,x,1\n', b'a"b,c,1\n', b"a,b\n", b"a,b,c", b'"a"x,b,1\n'],
)
def test_unparseable_rows_are_refused(data: bytes) -> None:
    plan = MASKER.plan_copy(COLUMNS, Info())
    assert plan is not None
    with pytest.raises(MaskingRefused):
        plan.mask_copy_data(data)


VALUE = st.none() | st.lists(
    st.sampled_from(list("ab ,;\"'\\\n\r\tN") + ["jane@example.com", "4242 4242 4242 4242"]),
    max_size=8,
).map("".join)


@settings(deadline=None)
@given(
    st.lists(VALUE, min_size=3, max_size=3),
    st.sampled_from([(",", '"', '"', ""), (";", "'", "\\", "NULL"), ("\t", '"', '"', "\\N")]),
    st.booleans(),
)
def test_copy_csv_masks_exactly_like_data_rows(
    values: list[str | None], options: tuple[str, str, str, str], force: bool
) -> None:
    d, q, e, null = options
    plan = MASKER.plan_copy(COLUMNS, Info(delimiter=d, quote=q, escape=e, null=null))
    rows = MASKER.plan_rows(COLUMNS)
    assert plan is not None and rows is not None
    data = pg_row(values, d=d, q=q, e=e, null=null, force=force)
    out, n = plan.mask_copy_data(data)
    expected, expected_n = rows.mask_values([None if v is None else v.encode() for v in values])
    if expected is None:
        assert out is data and n == 0
    else:
        want = [None if v is None else v.decode() for v in expected]
        # PostgreSQL's bytes, except that a field that was quoted stays quoted when masked.
        fields = [
            pg_field(w, d=d, q=q, e=e, null=null, force=force or pg_field(
                v, d=d, q=q, e=e, null=null, force=force).startswith(q) and v is not None)
            for v, w in zip(values, want, strict=True)
        ]  # fmt: skip
        assert out == (d.join(fields) + "\n").encode()
        assert n == expected_n
