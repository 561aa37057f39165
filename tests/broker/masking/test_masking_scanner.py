from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking.detectors import DEFAULT_DETECTORS, DETECTORS
from broker.masking.scanner import Scanner

ALL = Scanner(list(DETECTORS.values()), max_value_bytes=1 << 20)
DEFAULT = Scanner([DETECTORS[n] for n in DEFAULT_DETECTORS], max_value_bytes=1 << 20)
SECRETS = [
    b"jane@example.com",
    b"4242 4242 4242 4242",
    b"AKIAFAKEFAKEFAKEFAKE",
    b"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
]


def test_plain_values_do_not_trigger() -> None:
    for value in [
        b"",
        b"Jane Doe",
        b"123 Main Street, Springfield",
        b"x" * 12,
    ]:
        assert not DEFAULT.triggered(value)
        assert DEFAULT.scan(value) is value
    # Ten digits in a row (dashes and spaces aside) may be a phone number or an SSN: the
    # detectors look, and leave a date-time alone.
    assert DEFAULT.scan(b"2024-01-05 10:00") == b"2024-01-05 10:00"
    assert ALL.triggered(b"10:00")  # the assignment detector needs ':' or '='


def test_scan_masks_several_families_in_one_value() -> None:
    value = b"mail jane@example.com card 4242424242424242 key AKIAFAKEFAKEFAKEFAKE"
    assert ALL.scan(value) == b"mail j***@example.com card ************4242 key [masked:aws-key]"


def test_url_password_is_masked_before_the_email_detector_sees_it() -> None:
    value = b"dsn postgresql://app:s3cret@db.example.com/x"
    assert ALL.scan(value) == b"dsn postgresql://app:****@db.example.com/x"


def test_triggered_but_clean_value_is_returned_as_is() -> None:
    value = b"an-identifier-longer-than-thirteen and user@localhost"
    assert ALL.triggered(value)
    assert ALL.scan(value) is value


def test_oversize_value_that_might_hold_a_secret_is_refused_to_scan() -> None:
    small = Scanner(list(DETECTORS.values()), max_value_bytes=32)
    assert small.scan(b"x" * 40 + b" jane@example.com") is None
    clean = b"a b " * 100  # no condition holds: no need to scan at all
    assert small.scan(clean) is clean


def test_no_detectors() -> None:
    none = Scanner([], max_value_bytes=10)
    assert not none.enabled
    assert not none.triggered(b"jane@example.com")
    assert none.scan(b"jane@example.com") == b"jane@example.com"


def test_subset_of_detectors() -> None:
    only_email = Scanner([DETECTORS["email"]], max_value_bytes=1 << 20)
    assert (
        only_email.scan(b"jane@example.com 4242424242424242")
        == b"j***@example.com 4242424242424242"
    )
    assert not only_email.triggered(b"4242424242424242")


@settings(deadline=None)
@given(st.lists(st.binary(max_size=20) | st.sampled_from(SECRETS), min_size=1, max_size=6))
def test_row_gate_never_hides_a_value_the_scanner_would_change(values: list[bytes]) -> None:
    changed = any(ALL.scan(v) is not v for v in values)
    if changed:
        assert ALL.triggered(b"\x00".join(values))
