from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking.detectors import cards

D = cards.DETECTOR


def with_check_digit(partial: str) -> str:
    for d in "0123456789":
        if cards.luhn_valid((partial + d).encode()):
            return partial + d
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (b"4242 4242 4242 4242", b"**** **** **** 4242"),
        (b"4242424242424242", b"************4242"),
        (b"5555-5555-5555-4444", b"****-****-****-4444"),
        (b"amex 3782 822463 10005 ok", b"amex **** ****** *0005 ok"),
        (b"card=6011111111111117;", b"card=************1117;"),
        (b"[4242424242424242]", b"[************4242]"),
    ],
)
def test_luhn_valid_cards_keep_separators_and_last_four(value: bytes, masked: bytes) -> None:
    assert D.redact(value) == masked
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b"4242 4242 4242 4241",  # Luhn-invalid
        b"4242424242424241",
        b"1700000000000",  # a millisecond timestamp: starts with 1
        b"order 12345",
        b"+49 30 1234567",
        b"42424242424242424242424",  # too long to be a card
        b"2024-01-05",
    ],
)
def test_non_cards_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value


def test_luhn() -> None:
    assert cards.luhn_valid(b"79927398713")
    assert not cards.luhn_valid(b"79927398710")


@settings(deadline=None)
@given(st.from_regex(r"\A[2-6][0-9]{11,17}\Z"))
def test_every_luhn_valid_number_is_masked_to_its_last_four(partial: str) -> None:
    number = with_check_digit(partial).encode()
    out = D.redact(number)
    assert out == b"*" * (len(number) - 4) + number[-4:]


def test_mask_whole() -> None:
    assert cards.mask_whole(b"4242 4242 4242 4241", require_luhn=False) == b"**** **** **** 4241"
    assert cards.mask_whole(b"4242 4242 4242 4241", require_luhn=True) is None
    assert cards.mask_whole(b"n/a", require_luhn=False) is None
