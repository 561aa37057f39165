"""Data quoted by errors and notices (broker.masking.messages), with the real detectors."""

from __future__ import annotations

from broker.masking import Masker

MASKER = Masker()


def fields(code: str, **more: str) -> list[tuple[str, str]]:
    return [("S", "ERROR"), ("C", code), *((k, v) for k, v in more.items())]


def test_a_data_exception_does_not_quote_the_value() -> None:
    masked = MASKER.mask_message(fields("22P02", M='invalid input syntax for type integer: "lik_evil_ks"'))
    assert masked is not None and ("M", 'invalid input syntax for type integer: "********"') in masked


def test_the_clients_own_literal_stays() -> None:
    message = fields("22P02", M='invalid input syntax for type integer: "abc"')
    assert MASKER.mask_message(message, "select 'abc'::int") is None


def test_constraint_violations_keep_identifiers_and_hide_rows_and_keys() -> None:
    row = fields("23502", M='null value in column "email" of relation "customers" violates not-null constraint',
                 D="Failing row contains (1, Ann, null, 637-16-6681, sk_live_x).")
    masked = dict(MASKER.mask_message(row) or [])
    assert masked["M"] == row[2][1]  # which column, which table: the agent needs to know
    assert masked["D"] == "Failing row contains (********)."
    key = dict(MASKER.mask_message(fields("23505", M="duplicate key", D="Key (email)=(ann@example.com) exists.")) or [])
    assert key["D"] == "Key (email)=(********) exists."


def test_json_errors_hide_the_token_and_the_line() -> None:
    masked = dict(MASKER.mask_message(fields(
        "22P02", M="invalid input syntax for type json", D='Token "sk_live_abc" is invalid.',
        W="JSON data, line 1: sk_live_abc",
    )) or [])
    assert masked["D"] == 'Token "********" is invalid.' and masked["W"] == "JSON data, line 1: ********"


def test_other_messages_go_through_the_content_detectors_only() -> None:
    notice = [("S", "NOTICE"), ("C", "00000"), ("M", "mailing ann@example.com about 4242 4242 4242 4242")]
    masked = dict(MASKER.mask_message(notice) or [])
    assert "ann@example.com" not in masked["M"] and "4242 4242 4242 4242" not in masked["M"]
    plain = fields("42P01", M='relation "no_such_table" does not exist')
    assert MASKER.mask_message(plain) is None  # identifiers of a syntax or name error stay
    assert MASKER.mask_payload("reach me at ann@example.com") == "reach me at a***@example.com"


def test_a_value_with_quotes_inside_is_masked_whole() -> None:
    masked = MASKER.mask_message(fields("22P02", M='invalid input syntax for type integer: "{"k": "sk_x"}"'))
    assert masked is not None and ("M", 'invalid input syntax for type integer: "********"') in masked
