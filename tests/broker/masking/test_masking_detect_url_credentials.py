from __future__ import annotations

import pytest

from broker.masking.detectors import url_credentials

D = url_credentials.DETECTOR


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (
            b"postgresql://app:s3cret@db.internal:5432/x",
            b"postgresql://app:****@db.internal:5432/x",
        ),
        (b"dsn=redis://:hunter2@cache/0 ok", b"dsn=redis://:****@cache/0 ok"),
        (b"https://user:p%40ss@example.com/", b"https://user:****@example.com/"),
    ],
)
def test_url_passwords_are_masked(value: bytes, masked: bytes) -> None:
    assert D.redact(value) == masked
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [b"https://example.com/a@b", b"mailto:jane@example.com", b"https://user@example.com/"],
)
def test_urls_without_passwords_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value
