"""Payment card numbers: 13-19 digits, Luhn-valid, optional single spaces or dashes between.

``4242 4242 4242 4242`` -> ``**** **** **** 4242``: separators and the last four digits stay,
which is what receipts show and what an agent needs to tell cards apart. Only numbers that
start like an issued card (2-6: Mastercard 2-series, Amex/Diners/JCB, Visa, Mastercard,
Discover/Maestro/UnionPay) are considered, which keeps millisecond timestamps and most order
numbers out; the Luhn check removes nine in ten of what remains.
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import DIGITS, Detector

PATTERN = re.compile(rb"(?<![0-9])[2-6](?:[ -]?[0-9]){12,18}(?![0-9])")
FULL = re.compile(rb"\s*[0-9](?:[ -]?[0-9]){11,18}\s*\Z")

_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: bytes) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = c - 48
        total += _DOUBLED[d] if i % 2 else d
    return total % 10 == 0


def only_digits(value: bytes) -> bytes:
    return bytes(c for c in value if 48 <= c <= 57)


def shape(value: bytes, keep: int = 4) -> bytes:
    """Star every digit but the last `keep`; keep everything else (separators) in place."""
    total = sum(1 for c in value if c in DIGITS)
    seen = 0
    out = bytearray()
    for c in value:
        if c in DIGITS:
            seen += 1
            out.append(c if seen > total - keep else 42)  # '*'
        else:
            out.append(c)
    return bytes(out)


def _replace(m: re.Match[bytes]) -> bytes | None:
    span = m.group(0)
    return shape(span) if luhn_valid(only_digits(span)) else None


def mask_whole(value: bytes, *, require_luhn: bool) -> bytes | None:
    """The card shape of a value that is one card number (12+ digits), else None."""
    if len(value) < 12 or not FULL.match(value):  # FULL needs 12 digits: short values skip it
        return None
    digits = only_digits(value)
    if require_luhn and not (13 <= len(digits) <= 19 and luhn_valid(digits)):
        return None
    return shape(value.strip())


DETECTOR: Detector = Detector(name="card", pattern=PATTERN, replace=_replace, min_digits=13)
