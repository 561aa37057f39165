from __future__ import annotations

import pytest

from broker.masking.detectors import email

D = email.DETECTOR


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (b"jane.doe@example.com", b"j***@example.com"),
        (b"write to jane.doe@example.com today", b"write to j***@example.com today"),
        (b"a@b.io, c.d+tag@mail.example.co.uk", b"a***@b.io, c***@mail.example.co.uk"),
        (b'{"contact": "bob_smith@corp.example"}', b'{"contact": "b***@corp.example"}'),
        (b"<_x@example.org>", b"<****@example.org>"),
    ],
)
def test_emails_are_masked_keeping_the_domain(value: bytes, masked: bytes) -> None:
    assert D.redact(value) == masked
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b"plain words",
        b"user@localhost",  # no dot-separated TLD: not an address an agent could use
        b"@handle",
        b"price 5 @ 10",
        b"me@example.c0m",
    ],
)
def test_non_addresses_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value


def test_mask_whole_requires_a_single_address() -> None:
    assert email.mask_whole(b" jane.doe@example.com ") == b"j***@example.com"
    assert email.mask_whole(b"jane.doe@example.com and more") is None
    assert email.mask_whole(b"n/a") is None


def test_adversarial_values_stay_linear() -> None:
    long_runs = (b"a" * 70 + b"@" + b"b" * 70 + b" ") * 2000
    assert D.redact(long_runs) is long_runs  # no dot in the domain: no address
    value = b"x" * 200_000 + b" jane@example.com"
    assert D.redact(value).endswith(b" j***@example.com")
    over_long = b"a" * 300 + b"@example.com"  # not an address (RFC 5321: 64 at most)
    assert D.redact(over_long) is over_long
