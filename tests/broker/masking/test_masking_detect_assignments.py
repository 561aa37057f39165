from __future__ import annotations

import pytest

from broker.masking.detectors import assignments

D = assignments.DETECTOR


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (b"password=hunter22", b"password=****"),
        (
            b"export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
            b"export AWS_SECRET_ACCESS_KEY=****",
        ),
        (b'{"api_key": "abcdef123456"}', b'{"api_key": "****"}'),
        (b"x-api-key: abcdefgh1234 next", b"x-api-key: **** next"),
        (b"Token = 'abc123def456'", b"Token = '****'"),
    ],
)
def test_assignment_values_are_masked(value: bytes, masked: bytes) -> None:
    assert D.redact(value) == masked
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b"password: short",  # under six characters
        b"passwords are rotated monthly",
        b"keyboard=qwertyuiop",
        b"no assignment here",
    ],
)
def test_other_text_is_left_alone(value: bytes) -> None:
    assert D.redact(value) is value
