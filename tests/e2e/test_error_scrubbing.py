"""Errors and notices of statements that read masked columns never quote the data (real proxy).

A value derived from a masked column can reach the client in any error class, not only data
exceptions (22) and constraint violations (23): cast to ``regclass`` it is a relation name
(42P01), to ``regproc`` a function name (42883), given to ``current_setting`` a setting name
(42704), raised in a function's NOTICE. Through the gateway the client gets the SQLSTATE and a
generic text instead; statements that read no masked column keep the server's own words, and
so do errors the server places in the statement's text (a misspelt column).
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

pytestmark = pytest.mark.e2e

WITHHELD = "details withheld because the statement reads masked columns"

# SQL -> the SQLSTATE PostgreSQL answers it with (customer 1 of the demo data).
FAILING = {
    "select reverse(api_key)::regclass from customers where id = 1": "42P01",
    "select reverse(ssn)::regproc from customers where id = 1": "42883",
    "select reverse(email)::regtype from customers where id = 1": "42601",  # a syntax error, at run time
    "select ('\"' || reverse(api_key) || '\"')::regclass from customers where id = 1": "42P01",
    "select reverse(phone)::regrole from customers where id = 1": "42704",
    "select x::regclass from customers c(i, n, e, p, s, x) limit 1": "42P01",  # renamed (customer 1 comes first)
    "select c::text::regclass from customers c where id = 1": "42602",  # whole row: invalid name
    "select reverse(api_key)::json from customers where id = 1": "22P02",  # data exceptions too
}


def _values(upstream) -> list[str]:
    with psycopg.connect(upstream.dsn("demo")) as admin:
        row = admin.execute("select ssn, email, phone, card_number, api_key from customers where id = 1").fetchone()
    assert row is not None
    out: list[str] = []
    for value in row:
        if value:
            out += [value, value[::-1], value[::-1].lower()]
    return out


def _all_text(err: psycopg.Error) -> str:
    d = err.diag
    parts = (str(err), d.message_primary, d.message_detail, d.message_hint, d.context, d.internal_query)
    return " ".join(p for p in parts if p)


def test_derived_values_in_any_error_class_are_withheld(gateway, upstream) -> None:
    values = _values(upstream)
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        for sql in list(FAILING)[:3]:  # straight from PostgreSQL the error quotes the value
            with pytest.raises(psycopg.Error) as raw:
                admin.execute(sql)
            assert any(v in _all_text(raw.value) for v in values), sql
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for sql, code in FAILING.items():
            for prepare in (False, True):
                with pytest.raises(psycopg.Error) as err:
                    conn.execute(sql, prepare=prepare)
                text = _all_text(err.value)
                assert err.value.sqlstate == code, (sql, err.value.sqlstate, text)
                assert WITHHELD in text and "********" in text, (sql, text)
                assert not [v for v in values if v in text], (sql, text)
                assert err.value.diag.message_detail is None and err.value.diag.context is None


def test_the_condition_is_named_and_named_errors_keep_their_text(gateway) -> None:
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UndefinedTable) as err:
            conn.execute("select reverse(api_key)::regclass from customers where id = 1")
        assert str(err.value).startswith("undefined_table: ********")
        # Placed by the server in the statement's own text: the agent sees what it misspelt.
        with pytest.raises(psycopg.errors.UndefinedColumn) as named:
            conn.execute("select reverse(api_key), no_such_column from customers")
        assert 'column "no_such_column" does not exist' in str(named.value)
        with pytest.raises(psycopg.errors.UndefinedTable) as table:
            conn.execute("select ssn from no_such_table")
        assert 'relation "no_such_table" does not exist' in str(table.value)
        # A statement that reads no masked column keeps the server's words.
        with pytest.raises(psycopg.errors.UndefinedTable) as own:
            conn.execute("select status::regclass from orders where id = 1")
        assert "does not exist" in str(own.value) and WITHHELD not in str(own.value)
        with pytest.raises(psycopg.errors.DivisionByZero) as plain:
            conn.execute("select 1 / 0")
        assert str(plain.value).startswith("division by zero")


def test_execute_of_a_prepared_statement_is_withheld_too(gateway, upstream) -> None:
    values = _values(upstream)
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        conn.execute("prepare leak as select reverse(api_key)::regclass from customers where id = 1")
        with pytest.raises(psycopg.errors.UndefinedTable) as err:
            conn.execute("execute leak")
        text = _all_text(err.value)
        assert WITHHELD in text and not [v for v in values if v in text], text


@pytest.fixture
def noisy_function(upstream):
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute(
            "create or replace function public.jg_note(v text) returns int language plpgsql as "
            "$$ begin raise notice 'got %', v using detail = 'value ' || v, hint = v; return 1; end $$"
        )
    yield "jg_note"
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute("drop function if exists public.jg_note(text)")


def test_notices_of_a_function_given_masked_values_are_withheld(gateway, upstream, noisy_function) -> None:
    values = _values(upstream)

    async def run() -> tuple[list[str], list[str]]:
        masked: list[str] = []
        plain: list[str] = []
        conn = await asyncpg.connect(gateway.dsn())
        try:
            conn.add_log_listener(lambda _c, msg: masked.append(" ".join(str(x) for x in (
                msg.message, msg.detail, msg.hint, msg.context) if x)))
            # A function given a masked value is refused outright (masking/inference: what it
            # does with it is not known); one given other values, in a statement that reads
            # masked columns, may still quote anything: its notice is withheld.
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="masking/inference"):
                await conn.execute("select jg_note(reverse(api_key)) from customers where id = 1")
            # asyncpg sends an argument-less execute as a simple Query.
            await conn.execute("select jg_note(full_name), api_key from customers where id = 1")
            await conn.execute("select jg_note(status) from orders where id = 1")
            await asyncio.sleep(0.05)
        finally:
            await conn.close()
        plain[:] = masked[1:]
        return masked[:1], plain

    masked, plain = asyncio.run(run())
    assert len(masked) == 1 and WITHHELD in masked[0] and "********" in masked[0], masked
    assert not [v for v in values if v in masked[0]], masked
    assert len(plain) == 1 and plain[0].startswith("got ") and WITHHELD not in plain[0], plain


@pytest.mark.parametrize(
    "sql",
    [
        "select current_setting(reverse(api_key)) from customers where id = 1",
        "select nextval(reverse(api_key)) from customers where id = 1",
    ],
)
def test_lookups_by_a_masked_value_are_refused_before_they_can_fail(gateway, sql: str) -> None:
    """Whether a setting or a sequence named by the value exists is an answer about the value:
    such calls go to review (masking/inference) and never reach the server."""
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="masking/inference"):
            conn.execute(sql)
