"""The declared gate conditions are sound: whatever a detector masks, its condition held."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking.detectors import DEFAULT_DETECTORS, DETECTORS
from broker.masking.detectors.base import (
    Detector,
    digits_at_least,
    label,
    longest_run_at_least,
)

# Fragments that make every detector fire, mixed with noise by the property below.
FRAGMENTS = [
    b"jane.doe@example.com",
    b"4242 4242 4242 4242",
    b"4242-4242-4242-4242",
    b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
    b"AKIAFAKEFAKEFAKEFAKE",
    b"xoxb-1234567890-abc",
    b"sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    b"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
    b"md5" + b"0123456789abcdef" * 2,
    b"-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
    b"postgres://u:pw@h/db",
    b"password=hunter22",
]
NOISE = st.binary(max_size=12) | st.sampled_from([b" ", b"\n", b"\\n", b'"', b"-", b"x", b"7"])


def test_registry_order_and_defaults() -> None:
    assert list(DETECTORS)[0] == "private_key"
    assert list(DETECTORS)[-1] == "email"
    assert "assignment" in DETECTORS
    assert "assignment" not in DEFAULT_DETECTORS


def test_label() -> None:
    assert label("jwt") == b"[masked:jwt]"


def test_run_and_digit_helpers() -> None:
    assert longest_run_at_least(b"xx abcdefghijklm yy", 13)
    assert not longest_run_at_least(b"abcdefghijkl mnop", 13)
    assert digits_at_least(b"4242 4242 4242 4", 13)
    assert not digits_at_least(b"4242 4242 4242", 13)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | NOISE, max_size=6))
def test_every_detector_only_fires_when_its_condition_holds(parts: list[bytes]) -> None:
    value = b"".join(parts)
    for detector in DETECTORS.values():
        if detector.redact(value) is not value:
            assert detector.could_match(value), (detector.name, value)


def test_fragments_all_fire_somewhere() -> None:
    for fragment in FRAGMENTS:
        assert any(d.redact(fragment) is not fragment for d in DETECTORS.values()), fragment


def test_redact_keeps_text_around_spans_and_validates() -> None:
    d = Detector(
        name="t",
        pattern=re.compile(rb"[0-9]+"),
        replace=lambda m: b"#" if m.group(0) != b"7" else None,
    )
    assert d.redact(b"a1b7c22") == b"a#b7c#"
    value = b"no digits"
    assert d.redact(value) is value
