from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking import shapes
from broker.masking.detectors import cards, email
from broker.masking.shapes import Shape


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("email", Shape.EMAIL),
        ("Contact_EMAIL", Shape.EMAIL),
        ("phone", Shape.PHONE),
        ("mobile_number", Shape.PHONE),
        ("card_number", Shape.CARD),
        ("pan", Shape.CARD),
        ("password_hash", Shape.REDACT),
        ("email_token", Shape.REDACT),  # a secret wins over the e-mail hint
        ("api_key", Shape.REDACT),
        ("ssn", Shape.AUTO),
        ("iban", Shape.AUTO),
    ],
)
def test_shape_follows_the_column_name(name: str, shape: Shape) -> None:
    assert shapes.shape_for(name) is shape


@pytest.mark.parametrize(
    ("value", "shape", "masked"),
    [
        (b"jane.doe@example.com", Shape.EMAIL, b"j***@example.com"),
        (b"4242 4242 4242 4242", Shape.CARD, b"**** **** **** 4242"),
        (b"+1 (555) 123-4567", Shape.PHONE, b"+* (***) ***-**67"),
        (b"0049 30 12345678", Shape.PHONE, b"**** ** ******78"),
        (b"hunter2", Shape.REDACT, b"********"),
        (b"a-very-long-secret-value-of-many-characters", Shape.REDACT, b"********"),
        (b"123-45-6789", Shape.AUTO, b"********"),
        (b"jane.doe@example.com", Shape.AUTO, b"j***@example.com"),
        (b"4242424242424242", Shape.AUTO, b"************4242"),
        (b"4242424242424241", Shape.AUTO, b"********"),  # not Luhn-valid: no card shape
        (b"n/a", Shape.EMAIL, b"********"),
        (b"ext 12", Shape.PHONE, b"********"),
        (b"jane.doe@example.com", Shape.REDACT, b"********"),
    ],
)
def test_mask_whole(value: bytes, shape: Shape, masked: bytes) -> None:
    assert shapes.mask_whole(value, shape) == masked


def test_empty_stays_empty() -> None:
    assert shapes.mask_whole(b"", Shape.REDACT) == b""


def test_phone_with_non_ascii_bytes() -> None:
    assert shapes.mask_phone("☎ 030 1234".encode()) == b"*** *** **34"


def test_pseudonym_is_stable_key_dependent_and_shaped() -> None:
    a = shapes.pseudonym(b"k" * 32, b"jane@example.com")
    assert a == shapes.pseudonym(b"k" * 32, b"jane@example.com")
    assert a != shapes.pseudonym(b"j" * 32, b"jane@example.com")
    assert a != shapes.pseudonym(b"k" * 32, b"john@example.com")
    assert a.startswith(b"pseu_")
    assert len(a) == 5 + 16
    assert a[5:].isalnum() and a[5:] == a[5:].lower()


def test_json_string() -> None:
    assert shapes.json_string(b"********") == b'"********"'
    assert json.loads(shapes.json_string(b'a"b\\c\n')) == 'a"b\\c\n'


def test_json_inner_string() -> None:
    assert shapes.json_inner_string(b'"jane@example.com"') == b"jane@example.com"
    assert shapes.json_inner_string(b'{"a": 1}') is None
    assert shapes.json_inner_string(b'"a\\"b"') is None


_shaped = st.one_of(
    st.binary(max_size=40),
    st.from_regex(rb"\s*[a-z0-9._%+-]{1,12}@[a-z0-9-]{1,8}(\.[a-z]{2,5}){1,3}\s*", fullmatch=True),
    st.from_regex(rb"\s*[0-9]([ -]?[0-9]){9,20}\s*", fullmatch=True),
)


@settings(max_examples=400)
@given(_shaped)
def test_the_cheap_checks_before_the_regexes_change_no_answer(value: bytes) -> None:
    # email.mask_whole skips FULL without an '@', cards.mask_whole below 12 bytes.
    m = email.FULL.match(value)
    assert email.mask_whole(value) == (email.shape(m.group(1), m.group(2)) if m else None)
    if not cards.FULL.match(value):
        assert cards.mask_whole(value, require_luhn=False) is None
        assert cards.mask_whole(value, require_luhn=True) is None
    else:
        assert cards.mask_whole(value, require_luhn=False) == cards.shape(value.strip())
