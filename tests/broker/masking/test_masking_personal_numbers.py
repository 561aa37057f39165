"""SSNs and formatted phone numbers are masked by content, wherever a query puts them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.masking.detectors import DEFAULT_DETECTORS
from broker.masking.detectors.personal_numbers import PHONE_DETECTOR, SSN_DETECTOR


@pytest.mark.parametrize(("value", "masked"), [
    (b"123-45-6789", b"***-**-****"),
    (b'{"ssn": "512-39-8877", "x": 1}', b'{"ssn": "***-**-****", "x": 1}'),
    (b"512-39-8877,600-12-3456", b"***-**-****,***-**-****"),
    (b"(512-39-8877)", b"(***-**-****)"),
])
def test_ssn(value, masked):
    assert SSN_DETECTOR.redact(value) == masked


@pytest.mark.parametrize("value", [
    b"000-12-3456", b"666-12-3456", b"912-12-3456", b"123-00-4567", b"123-45-0000",  # never issued
    b"1123-45-6789", b"123-45-67890", b"2026-11-25", b"123456789", b"ab-123-45-6789-cd",
])
def test_not_an_ssn(value):
    assert SSN_DETECTOR.redact(value) is value


@pytest.mark.parametrize(("value", "masked"), [
    (b"+1-415-555-0100", b"+*-***-***-**00"),
    (b"call (415) 555-0142 today", b"call (***) ***-**42 today"),
    (b"415-555-0199", b"***-***-**99"),
    (b"+44 207 555 0100", b"+** *** *** **00"),
])
def test_phone(value, masked):
    assert PHONE_DETECTOR.redact(value) == masked


@pytest.mark.parametrize("value", [b"order 4155550100", b"2026-11-25 10:00", b"v1.415.555.0100", b"id-415-555-0100"])
def test_not_a_formatted_phone(value):
    assert PHONE_DETECTOR.redact(value) is value


def test_on_by_default():
    assert {"ssn", "phone"} <= set(DEFAULT_DETECTORS)


@given(st.binary(max_size=60))
def test_declared_gates_hold(value):
    for detector in (SSN_DETECTOR, PHONE_DETECTOR):
        if detector.redact(value) != value:
            assert detector.could_match(value)
