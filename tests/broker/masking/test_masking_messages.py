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


# Statements that read masked columns: their messages are withheld whatever the class.

REGCLASS = "select reverse(api_key)::regclass from customers where id = 1"
WITHHELD = "********; details withheld because the statement reads masked columns (jitgate)"


def test_a_derived_value_in_a_name_error_is_withheld() -> None:
    error = [
        *fields("42P01", M='relation "tmlthdmd_evil_ks" does not exist'),
        ("F", "namespace.c"), ("R", "RangeVarGetRelidExtended"),
    ]  # fmt: skip
    masked = MASKER.mask_message(error, REGCLASS)
    assert masked == [
        ("S", "ERROR"), ("C", "42P01"),
        ("M", f"undefined_table: {WITHHELD}"),
        ("F", "namespace.c"), ("R", "RangeVarGetRelidExtended"),
    ]  # fmt: skip


def test_every_text_field_goes_and_unknown_codes_get_their_class() -> None:
    error = fields("42X99", M='unrecognized configuration parameter "TMlThd"', D="d TMlThd", H="h", W="w", q="q", p="3")
    sql = "select current_setting(reverse(api_key)) from customers"
    masked = dict(MASKER.mask_message([*error, ("P", "8"), ("n", "customers_pkey")], sql) or [])
    assert masked == {
        "S": "ERROR", "C": "42X99", "P": "8",  # no "n": RAISE ... USING CONSTRAINT = <a value>
        "M": f"syntax error or access rule violation: {WITHHELD}",
    }  # fmt: skip


def test_notices_of_a_statement_reading_masked_columns_are_withheld() -> None:
    head = [("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000")]
    notice = [*head, ("M", "got 1866-61-736"), ("W", "PL/pgSQL function f(text) line 1 at RAISE")]
    masked = MASKER.mask_message(notice, "select f(reverse(ssn)) from customers")
    assert masked == [*head, ("M", f"notice: {WITHHELD}")]
    # The same notice of a statement that reads no masked column is left as it is.
    assert MASKER.mask_message(notice, "select f(status) from orders") is None


def test_an_error_the_server_places_in_the_statement_text_keeps_its_words() -> None:
    sql = "select reverse(api_key), no_such_column from customers"
    typo = [*fields("42703", M='column "no_such_column" does not exist'), ("P", "26")]
    assert MASKER.mask_message(typo, sql) is None
    syntax = [*fields("42601", M='syntax error at or near "frm"'), ("P", "17")]
    assert MASKER.mask_message(syntax, "select ssn from frm customers") is None
    # A position, but the quote is not the text there: withheld.
    elsewhere = [*fields("42P01", M='relation "tmlthdmd_evil_ks" does not exist'), ("P", "8")]
    assert dict(MASKER.mask_message(elsewhere, REGCLASS) or [])["M"].startswith("undefined_table: ********")


def test_what_counts_as_reading_a_masked_column() -> None:
    reads = [
        REGCLASS,
        "select (c).ssn from customers c",  # a field of a row
        'select "SSN" from t',  # names are matched as the rules match them
        "select * from orders",  # every column: the gateway cannot tell which
        "table customers",
        "select c.*::text::regclass from customers c",
        "select c::text::regclass from customers c",  # a whole row
        "select row_to_json(x)::text::regclass from (select 1) x",
        "select x::regclass from customers c(i, n, x)",  # renamed columns
        "select table_to_xml('customers', true, true, '')",
        "select query_to_xml('select 1', true, true, '')",
        "select current_setting(format('%s', 'ssn'))",  # a masked name in a string
        "do $$ begin raise notice '%', (select reverse(api_key) from customers limit 1); end $$",
        "execute leak",
        "fetch 10 from c",
        "move 10 in c",
        "<execute leak>",  # does not parse
        "select email_of(1)",  # a name the rules mask, even as a function's
    ]
    for sql in reads:
        assert MASKER.reads_masked(sql), sql
    for sql in [
        "select 1 / 0",
        "select status::regclass from orders where id = 1",
        "select count(*), count(ssn_checked) from customers",
        "select n from generate_series(1, 3) g(n)",
        "select o.id, o.status from orders o join customers c on c.id = o.customer_id",
    ]:
        assert not MASKER.reads_masked(sql), sql


def test_ignored_and_disabled_rules_are_followed() -> None:
    from broker.masking import MaskingConfig

    relaxed = Masker(MaskingConfig(ignore_columns=["api_key"]))
    assert not relaxed.reads_masked(REGCLASS)
    assert Masker(MaskingConfig(extra_columns=["status"])).reads_masked("select status::regclass from orders")
    off = Masker(MaskingConfig(enabled=False))
    assert off.mask_message(fields("42P01", M='relation "x" does not exist'), REGCLASS) is None


def test_an_unquoted_message_with_a_position_keeps_its_words_only_in_class_42() -> None:
    sql = "select reverse(ssn + 1) from customers"
    analysis = [*fields("42883", M="operator does not exist: text + integer"), ("P", "20")]
    assert MASKER.mask_message(analysis, sql) is None
    other = [*fields("22008", M="date field value out of range: 2024-13-01"), ("P", "8")]
    assert dict(MASKER.mask_message(other, sql) or [])["M"] == f"datetime_field_overflow: {WITHHELD}"
