from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from broker.masking import ColumnInfo, Masker, MaskingConfig, MaskingRefused

INT4, INT8, TEXT, VARCHAR, BPCHAR, JSON, JSONB, BYTEA, UUID, NUMERIC = (
    23, 20, 25, 1043, 1042, 114, 3802, 17, 2950, 1700,
)  # fmt: skip
TEXT_ARRAY, CITEXT = 1009, 16385  # citext has no fixed OID: anything unknown is "opaque"
KEY = "k" * 32
MASKER = Masker(MaskingConfig())


def col(name: str, oid: int = TEXT, fmt: int = 0) -> ColumnInfo:
    return ColumnInfo(name, oid, fmt)


def test_nothing_to_inspect_gives_no_plan() -> None:
    assert MASKER.plan_rows([col("abalance", INT4)]) is None  # pgbench -S
    assert MASKER.plan_rows([col("id", INT8), col("created", 1184), col("u", UUID)]) is None
    assert MASKER.plan_rows([]) is None


def test_disabled_config_gives_no_plan() -> None:
    assert Masker(MaskingConfig(enabled=False)).plan_rows([col("email")]) is None


def test_no_detectors_and_no_names_gives_no_plan() -> None:
    masker = Masker(MaskingConfig(detectors=[]))
    assert masker.plan_rows([col("note")]) is None
    assert masker.plan_rows([col("email")]) is not None


def test_unchanged_row_is_none_zero() -> None:
    plan = MASKER.plan_rows([col("id", INT4), col("name"), col("note")])
    assert plan is not None
    assert plan.mask_values([b"1", b"Jane Doe", None]) == (None, 0)


def test_design_examples() -> None:
    plan = MASKER.plan_rows([col("id", INT4), col("email"), col("card_number"), col("note")])
    assert plan is not None
    values, n = plan.mask_values(
        [b"1", b"jane.doe@example.com", b"4242 4242 4242 4242", b"call jane@example.com"]
    )
    assert values == [b"1", b"j***@example.com", b"**** **** **** 4242", b"call j***@example.com"]
    assert n == 3


def test_name_matched_non_text_becomes_null_in_any_format() -> None:
    for fmt in (0, 1):
        plan = MASKER.plan_rows(
            [col("card_number", INT8, fmt), col("ssn", NUMERIC, fmt), col("api_key", UUID, fmt)]
        )
        assert plan is not None
        assert plan.mask_values([b"4242424242424242", b"123", b"\x00" * 16]) == ([None] * 3, 3)


def test_name_matched_arrays_become_null() -> None:
    plan = MASKER.plan_rows([col("emails", TEXT_ARRAY), col("phone_numbers", TEXT_ARRAY, 1)])
    assert plan is not None
    assert plan.mask_values([b"{a@example.com}", b"\x00"]) == ([None, None], 2)


def test_nulls_stay_null_and_are_not_counted() -> None:
    plan = MASKER.plan_rows([col("email"), col("ssn", INT8), col("note")])
    assert plan is not None
    assert plan.mask_values([None, None, None]) == (None, 0)


def test_numeric_columns_are_not_scanned() -> None:
    plan = MASKER.plan_rows([col("n", NUMERIC), col("note")])
    assert plan is not None
    assert plan.mask_values([b"4242424242424242", b"x"]) == (None, 0)


def test_binary_text_columns_are_raw_utf8() -> None:
    plan = MASKER.plan_rows([col("email", VARCHAR, 1), col("note", TEXT, 1), col("id", INT4, 1)])
    assert plan is not None
    values, n = plan.mask_values(
        [b"jane@example.com", "café jane@example.com".encode(), b"\x00\x00\x00\x01"]
    )
    assert values == [b"j***@example.com", "café j***@example.com".encode(), b"\x00\x00\x00\x01"]
    assert n == 2


def test_jsonb_binary_keeps_its_version_byte_and_stays_valid_json() -> None:
    plan = MASKER.plan_rows([col("email", JSONB, 1), col("doc", JSONB, 1)])
    assert plan is not None
    values, n = plan.mask_values([b'\x01"jane@example.com"', b'\x01{"mail": "bob@example.com"}'])
    assert values == [b'\x01"j***@example.com"', b'\x01{"mail": "b***@example.com"}']
    assert n == 2
    assert values is not None
    for v in values:
        assert v is not None
        json.loads(v[1:])


def test_json_name_matched_object_becomes_a_json_string() -> None:
    for oid in (JSON, JSONB):
        plan = MASKER.plan_rows([col("secret_blob", oid)])
        assert plan is not None
        values, _ = plan.mask_values([b'{"a": 1}'])
        assert values == [b'"********"']


def test_json_span_that_breaks_json_falls_back_to_a_string() -> None:
    plan = MASKER.plan_rows([col("doc", JSONB)])
    assert plan is not None
    values, n = plan.mask_values([b'{"n": 4242424242424242}'])
    assert values == [b'"********"']
    assert n == 1


def test_unknown_jsonb_version_is_dropped_when_something_may_be_inside() -> None:
    plan = MASKER.plan_rows([col("doc", JSONB, 1)])
    assert plan is not None
    assert plan.mask_values([b'\x02"jane@example.com"']) == ([None], 1)
    assert plan.mask_values([b"\x02whatever"]) == (None, 0)  # the gate saw nothing to find


def test_opaque_types_text_spans_binary_null() -> None:
    text_plan = MASKER.plan_rows([col("addr", CITEXT), col("tags", TEXT_ARRAY)])
    assert text_plan is not None
    values, n = text_plan.mask_values([b"jane@example.com", b'{a,"x jane@example.com"}'])
    assert values == [b"j***@example.com", b'{a,"x j***@example.com"}']
    binary_plan = MASKER.plan_rows([col("addr", CITEXT, 1), col("tags", TEXT_ARRAY, 1)])
    assert binary_plan is not None
    assert binary_plan.mask_values([b"jane@example.com", b"\x00jane@example.com"]) == (
        [None, None],
        2,
    )
    assert binary_plan.mask_values([b"plain", b"\x00\x01"]) == (None, 0)


def test_name_matched_opaque_text_gets_a_shape() -> None:
    plan = MASKER.plan_rows([col("email", CITEXT), col("email", CITEXT, 1)])
    assert plan is not None
    assert plan.mask_values([b"jane@example.com"] * 2) == ([b"j***@example.com", None], 2)


def test_bytea_is_decoded_and_dropped_on_a_hit() -> None:
    plan = MASKER.plan_rows([col("blob", BYTEA), col("raw", BYTEA, 1)])
    assert plan is not None
    pem = (
        b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    )
    assert plan.mask_values([b"\\x" + pem.hex().encode(), pem]) == ([None, None], 2)
    assert plan.mask_values([b"\\x" + b"hello".hex().encode(), b"hello"]) == (None, 0)
    assert plan.mask_values([b"\\xzz", b""]) == ([None, b""], 1)  # undecodable: fail closed


def test_deterministic_columns() -> None:
    config = MaskingConfig(deterministic_columns=["email", "customer_id"], hmac_key=SecretStr(KEY))
    plan = Masker(config).plan_rows(
        [col("email"), col("email", VARCHAR, 1), col("customer_id", INT4), col("email", JSONB, 1)]
    )
    assert plan is not None
    values, n = plan.mask_values(
        [b"jane@example.com", b"jane@example.com", b"7", b'\x01"jane@example.com"']
    )
    assert values is not None and n == 4
    text, binary, number, jsonb = values
    assert text is not None and text.startswith(b"pseu_") and len(text) == 21
    assert binary == text  # the same value joins whatever its format
    assert number is None
    assert jsonb == b'\x01"' + text + b'"'  # a JSON string joins with the same text
    other_key = Masker(MaskingConfig(deterministic_columns=["email"], hmac_key=SecretStr("z" * 32)))
    other = other_key.plan_rows([col("email")])
    assert other is not None
    assert other.mask_values([b"jane@example.com"])[0] != [text]


def test_same_value_same_pseudonym_across_columns() -> None:
    masker = Masker(
        MaskingConfig(deterministic_columns=["*email*", "contact"], hmac_key=SecretStr(KEY))
    )
    a = masker.plan_rows([col("customer_email")])
    b = masker.plan_rows([col("contact")])
    assert a is not None and b is not None
    assert a.mask_values([b"x@example.com"]) == b.mask_values([b"x@example.com"])


def test_oversize_text_values_are_masked_whole() -> None:
    masker = Masker(MaskingConfig(max_value_bytes=64))
    plan = masker.plan_rows([col("note"), col("doc", JSON), col("tags", TEXT_ARRAY)])
    assert plan is not None
    big = b"x " * 40 + b"jane@example.com"
    values, n = plan.mask_values([big, b'"' + big + b'"', b"{" + big + b"}"])
    assert values == [b"[masked:too-large]", b'"[masked:too-large]"', None]
    assert n == 3


def test_wrong_number_of_values_is_refused() -> None:
    plan = MASKER.plan_rows([col("note")])
    assert plan is not None
    with pytest.raises(MaskingRefused, match="2 values but its description 1"):
        plan.mask_values([b"a", b"b"])


def test_returned_list_is_a_copy() -> None:
    plan = MASKER.plan_rows([col("email"), col("id", INT4)])
    assert plan is not None
    row: list[bytes | None] = [b"jane@example.com", b"1"]
    values, _ = plan.mask_values(row)
    assert row == [b"jane@example.com", b"1"]
    assert values is not row


@settings(deadline=None)
@given(st.lists(st.text(max_size=30).map(str.encode) | st.none(), min_size=3, max_size=3))
def test_masking_is_idempotent(row: list[bytes | None]) -> None:
    plan = MASKER.plan_rows([col("note"), col("email"), col("doc", TEXT, 1)])
    assert plan is not None
    once, _ = plan.mask_values(row)
    once = once if once is not None else row
    twice, n = plan.mask_values(once)
    if twice is not None:  # only whole-value shapes may change again, and to themselves
        assert twice == once
