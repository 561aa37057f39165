"""The shape lexer: literals out, everything else verbatim, token boundaries as scan.l has
them. The fuzz test compares it with PostgreSQL's own scanner (pglast.parser.scan)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pglast import parser as pg

from broker.policy.normalize import shape

N, S, B = "\x00n", "\x00s", "\x00b"


@pytest.mark.parametrize(
    ("sql", "key"),
    [
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            f"SELECT abalance FROM pgbench_accounts WHERE aid = {N};",
        ),
        (
            "select 1, 1.5, .5, 1e10, 1.5E-3, 0x1F, 0o17, 0b101, 1_000",
            f"select {N}, {N}, {N}, {N}, {N}, {N}, {N}, {N}, {N}",
        ),
        ("select 'it''s'", f"select {S}"),
        ("select E'it\\'s', e'\\\\'", f"select E{S}, e{S}"),
        ("select $$a 'b' $c$$, $tag$ $$ $tag$", f"select {S}, {S}"),
        ("select B'101', x'1F'", f"select B{B}, x{B}"),
        ("select n'x'", f"select n{S}"),
        ("select 'a'\n'b'", f"select {S}"),  # one literal, continued on the next line
        ("select 'a' -- note\n 'b'", f"select {S}"),
        ("select 'a' 'b'", f"select {S} {S}"),  # two literals on one line: a syntax error
        ("select 'a' /* c */\n'b'", f"select {S}  \n{S}"),  # /* */ does not continue a literal
        ('select "a""b", "Mixed" from "T"', 'select "a""b", "Mixed" from "T"'),
        ("select t1.c2, x$1 from s.t3", "select t1.c2, x$1 from s.t3"),
        ("select $1, $12::int", "select $1, $12::int"),
        ("select 1 -- trailing", f"select {N}  "),
        ("select /* a /* nested */ comment */ 1", f"select   {N}"),
        ("select a-b, a/b, a.b, -1", f"select a-b, a/b, a.b, -{N}"),
        ("select typee'x'", f"select typee{S}"),  # the e ends an identifier: no E-string
        ("select a..9", f"select a..{N}"),  # ".." is one token: the number is 9, not .9
        ('select "x"', 'select "x"'),
        ("", ""),
        ("BEGIN", "BEGIN"),
    ],
)
def test_shape(sql: str, key: str) -> None:
    assert shape(sql) == key


def test_literal_values_share_a_shape() -> None:
    a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;")
    b = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 17;")
    assert a == b
    assert shape("select * from t where a = 'x'") == shape("select * from t where a = $$y$$")
    assert shape("select * from t /* req=1 */") == shape("select * from t /* req=2 */")


def test_structure_does_not_share_a_shape() -> None:
    assert shape("select * from a where x = 1") != shape("select * from b where x = 1")
    assert shape('select "A"') != shape('select "a"')
    assert shape("select 'a'\n'b'") != shape("select 'a' 'b'")
    assert shape("select E'x'") != shape("select 'x'")


@pytest.mark.parametrize(
    "sql",
    [
        "select 'unterminated",
        'select "unterminated',
        "select $$unterminated",
        "select /* unterminated",
        "select 123abc",  # trailing junk
        "select 1.2.3",
        "select 0x",
        "select $1abc",
        "select $$x$$abc",  # a literal glued to an identifier
        "select 'x'abc",
        "select U&'\\0041'",  # UESCAPE could change meaning: never share
        "select U&\"d!0061t\" UESCAPE '!'",
        'select u&"x"',
        "select 1\x00",
        'select ""',  # a zero-length identifier is an error
        "select E'\\'' \n'unterminated",  # the continuation is unterminated in E mode
    ],
)
def test_gives_up(sql: str) -> None:
    assert shape(sql) is None


# -- against PostgreSQL's scanner ----------------------------------------------------------

_LITERALS = {"SCONST": S, "ICONST": N, "FCONST": N, "BCONST": B, "XCONST": B}


def _expected(sql: str) -> str | None:
    """The key built from pglast's tokens; None if the scanner rejects the text."""
    try:
        tokens = pg.scan(sql)
    except pg.ParseError:
        return None
    out, pos = [], 0
    for token in tokens:
        start, end = token.start, token.end + 1
        out.append(sql[pos:start])
        text = sql[start:end]
        if token.name in ("USCONST", "UIDENT"):
            return None
        if token.name in _LITERALS:
            prefix = text[0] if text[0] in "eEbBxX" else ""
            out.append(prefix + _LITERALS[token.name])
        elif token.name in ("C_COMMENT", "SQL_COMMENT"):
            out.append(" ")
        else:
            out.append(text)
        pos = end
    out.append(sql[pos:])
    return "".join(out)


_PIECES = st.sampled_from(
    [
        "'", "''", "'a'", '"', '""', '"x"', "$", "$$", "$a$", "$1", "E", "e", "B", "X", "N",
        "U&", "u", "&", "-", "--", "/", "/*", "*/", "*", ".", "0", "1", "9", "1.5", "0x1F",
        "1e5", "e+", "_", "a", "t1", "select", " ", "  ", "\n", "\t", "\\", ":", ";", "(",
        ")", ",", "=", "+", "<>",
    ]
)  # fmt: skip


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECES, max_size=24).map("".join))
def test_matches_postgres_scanner(sql: str) -> None:
    key = shape(sql)
    expected = _expected(sql)
    # Giving up is always allowed (the statement is then keyed exactly). Text PostgreSQL's
    # scanner rejects may get a key: an invalid escape in E'...' is an error of the literal's
    # value, and the server refuses such a statement whatever verdict it shares.
    if key is None or expected is None:
        return
    assert key == expected, sql
