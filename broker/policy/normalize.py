"""Statement shape: the cache key that ignores literal values.

`shape(sql)` rewrites a statement so that two statements differing only in the *values* of
their literals get the same key: ``SELECT abalance FROM pgbench_accounts WHERE aid = 48213;``
and ``... WHERE aid = 17;`` both become ``SELECT abalance FROM pgbench_accounts WHERE aid =
\\x00n;``. The proxy classifies every statement, and pgbench-like traffic never repeats a raw
text, so a cache keyed by the text alone never hits.

Correctness rests on one property: **the key keeps every token of the statement verbatim
except the contents of literals, and it finds literals exactly where PostgreSQL's lexer
(scan.l) does**. Two statements with the same key then have the same parse tree up to literal
values (or one of them does not parse, which the server refuses anyway), so any decision that
never looked at a literal value holds for both. The classifier reports when it did look at one
(`facts.Facts.literal_sensitive`); such verdicts are cached under the exact text only.

What is replaced, following scan.l:

- numbers (``42``, ``1.5e3``, ``.5``, ``0x1F``, ``0o17``, ``1_000``) by ``\\x00n``;
- string literals by ``\\x00s``: ``'...'`` with ``''`` (standard_conforming_strings on, the
  only setting the policy lets a session use), ``E'...'`` with backslash escapes, dollar
  quotes ``$$...$$`` / ``$tag$...$tag$``; bit strings ``B'...'`` / ``X'...'`` by ``\\x00b``.
  A literal continued after a newline (``'a'`` newline ``'b'``, which PostgreSQL
  concatenates) is one literal, so it never looks like two literals on one line (a syntax
  error);
- ``--`` and nested ``/* */`` comments by one space (ORMs put request ids in comments).

Everything else is copied verbatim: identifiers, keywords, operators, whitespace, ``$1``
parameters, double-quoted identifiers (``"a""b"``), and digits that continue an identifier
(``t1``). Verbatim text can never make two different statements share a key.

`shape` gives up (returns None; the caller then keys by exact text) where being exact would
cost more than it saves:

- unterminated literals, identifiers or comments, and NUL characters;
- a number or literal glued to an identifier character (``123abc``, ``$$x$$abc``): scan.l
  calls that junk, and a dollar quote followed by ``$`` would desynchronise the scan;
- ``U&'...'`` / ``U&"..."``: their ``UESCAPE 'c'`` clause is a literal whose value changes
  what an *identifier* means (``U&"pg_read_fil!0065" UESCAPE '!'`` is ``pg_read_file``).

The placeholders start with NUL, which cannot occur in a PostgreSQL query string, so they
never collide with real text. One regex match skips all verbatim text up to the next
character that may start a literal or a comment (a quote, a digit, ``$``, ``--``, ``/*``),
so a pgbench statement costs three or four regex calls.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import cast

__all__ = ["shape"]

# scan.l: ident_start [A-Za-z\200-\377_], ident_cont [A-Za-z\200-\377_0-9\$]; in a str every
# non-ASCII character stands for bytes >= 0x80, hence the \x80-\U0010ffff ranges.
_IS = "A-Za-z_\x80-\U0010ffff"
_IC = "A-Za-z_0-9$\x80-\U0010ffff"
_ASCII_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")

_DIGITS = r"[0-9](?:_?[0-9])*+"
# scan.l {quotecontinue}: whitespace holding a newline (and "--" comments, not /* */)
# between two quoted parts. Each repetition eats a different character class, so failing
# matches cannot backtrack exponentially.
_CONTINUE = r"[ \t\f\v]*+(?:--[^\n\r]*+)?[\n\r](?:[ \t\n\r\f\v]|--[^\n\r]*+[\n\r])*+"
_SQ = r"'(?:[^']|'')*+'"
_EQ = r"'(?:[^'\\]|''|\\.)*+'"
_BQ = r"'[^']*+'"

# Text copied verbatim, up to the next character that may start a literal or a comment:
# runs of ordinary characters, double-quoted identifiers (not U&"...", see above), and the
# ".", "-", "/" that do not start a number or a comment ("..", scan.l's dot_dot, is one
# token: in "..9" the number is 9). Digits and "$" always stop it.
_VERBATIM = re.compile(
    r"""(?:[^'"$0-9\x00./-]++|(?<!&)"(?:[^"]|"")++"|\.\.|\.(?![0-9])|-(?!-)|/(?!\*))*+"""
)
_NUMBER = re.compile(
    rf"(?:0[xX](?:_?[0-9A-Fa-f])++|0[oO](?:_?[0-7])++|0[bB](?:_?[01])++"
    rf"|(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][-+]?{_DIGITS})?)"
    rf"(?![{_IC}.])"
)
# A quoted literal followed by this did not continue although scan.l would try to: the
# continuation is unterminated in the literal's own escaping mode, an error for PostgreSQL.
_FAILED_CONTINUATION = re.compile(rf"{_CONTINUE}'")
_STRING = re.compile(rf"{_SQ}(?:{_CONTINUE}{_SQ})*+")
_ESTRING = re.compile(rf"{_EQ}(?:{_CONTINUE}{_EQ})*+", re.DOTALL)
_BITS = re.compile(rf"{_BQ}(?:{_CONTINUE}{_BQ})*+")
_DOLLAR = re.compile(rf"(\$(?:[{_IS}][A-Za-z_0-9\x80-\U0010ffff]*+)?\$).*?\1", re.DOTALL)
_PARAM = re.compile(rf"\$[0-9]++(?![{_IC}])")
_QUOTED_IDENT = re.compile(r'"(?:[^"]|"")++"')  # "" alone is an error
_IDENT_TAIL = re.compile(rf"[{_IC}]*+")
_LINE_COMMENT = re.compile(r"--[^\n\r]*+")
_COMMENT_EDGE = re.compile(r"/\*|\*/")

NUMBER = "\x00n"
STRING = "\x00s"
BITS = "\x00b"


# The pattern can match the empty string, so it always matches: no None to handle. (Cast
# once here: a cast inside shape() builds a typing alias on every call.)
_SKIP = cast(Callable[[str, int], re.Match[str]], _VERBATIM.match)


def shape(sql: str) -> str | None:
    """The literal-free key of `sql`, or None when it must be keyed by its exact text."""
    skip = _SKIP
    size = len(sql)
    i = skip(sql, 0).end()
    if i == size:
        return sql
    parts: list[str] = []
    pos = 0  # start of the verbatim text not yet copied to parts
    while i < size:
        c = sql[i]
        if c == "$" or ("0" <= c <= "9"):
            if i and _is_ident(sql[i - 1]):  # t1, a$b: the rest of an identifier
                tail = _IDENT_TAIL.match(sql, i)
                i = skip(sql, tail.end() if tail else i + 1).end()
                continue
        if c == '"':
            if i > 1 and sql[i - 1] == "&" and sql[i - 2] in "uU":  # U&"...": see above
                return None
            token = _QUOTED_IDENT.match(sql, i)
            if token is None:
                return None
            i = skip(sql, token.end()).end()
            continue
        if c == "$":
            token = _PARAM.match(sql, i)
            if token is not None:
                i = skip(sql, token.end()).end()
                continue
            token = _DOLLAR.match(sql, i)
            placeholder = STRING
        elif c == "'":
            token, placeholder = _quoted_literal(sql, i)
            if token is not None and _FAILED_CONTINUATION.match(sql, token.end()):
                return None
        elif c == "-":
            token = _LINE_COMMENT.match(sql, i)
            placeholder = " "
        elif c == "/":
            end = _comment_end(sql, i + 2)
            if end < 0:
                return None
            parts.append(sql[pos:i])
            parts.append(" ")
            pos = end
            i = skip(sql, end).end()
            continue
        elif c == "\x00":
            return None
        else:  # a digit, or "." before a digit: a number
            token = _NUMBER.match(sql, i)
            placeholder = NUMBER
        if token is None:
            return None
        end = token.end()
        if end < size and placeholder != " " and _is_ident(sql[end]):
            return None
        parts.append(sql[pos:i])
        parts.append(placeholder)
        pos = end
        i = skip(sql, end).end()
    parts.append(sql[pos:])
    return "".join(parts)


def _quoted_literal(sql: str, i: int) -> tuple[re.Match[str] | None, str]:
    """The literal starting with the quote at `i`, judged by the prefix letter before it."""
    prefix = sql[i - 1] if i else " "
    if prefix == "&" and i > 1 and sql[i - 2] in "uU":
        return None, STRING  # U&'...': see the module docstring
    # A prefix letter counts only when it starts a token (scan.l's xestart, xbstart, ...):
    # in ``typee'x'`` the e ends the identifier ``typee``.
    if prefix in "eEbBxX" and not (i > 1 and _is_ident(sql[i - 2])):
        if prefix in "eE":
            return _ESTRING.match(sql, i), STRING
        return _BITS.match(sql, i), BITS
    return _STRING.match(sql, i), STRING


def _is_ident(c: str) -> bool:
    return c in _ASCII_IDENT or c >= "\x80"


def _comment_end(sql: str, pos: int) -> int:
    """Position after the ``*/`` closing a (nested) comment opened before `pos`, or -1."""
    depth = 1
    search = _COMMENT_EDGE.search
    while True:
        m = search(sql, pos)
        if m is None:
            return -1  # unterminated: PostgreSQL rejects it too
        depth += 1 if m.group() == "/*" else -1
        pos = m.end()
        if depth == 0:
            return pos
