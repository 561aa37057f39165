"""Red-team checks of text COPY TO STDOUT masking through the gateway.

Runs of tab-delimited lines (proxy.protocol.rowrun.mask_text_run) must send what the
per-line TextCopyPlan sends, byte for byte, whatever the COPY options; and no COPY option
may let a value masked by name reach the client as it is.
"""

from __future__ import annotations

import psycopg
import pytest

# Over 64 rows (one run), NULLs, escapes, secrets the scanner finds in `notes`.
_ROWS = "(select c.*, g from customers c cross join generate_series(1, 40) g order by g, c.id)"


def _copy(dsn: str, statement: str) -> bytes | tuple[str, str]:
    try:
        with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
            return b"".join(bytes(chunk) for chunk in copy)
    except psycopg.Error as exc:
        return type(exc).__name__, str(exc)


def _masked_values(upstream) -> list[str]:
    with psycopg.connect(upstream.dsn("demo")) as conn:
        rows = conn.execute("select email, ssn, card_number, api_key, password_hash from customers").fetchall()
    return [v for row in rows for v in row if v]


@pytest.mark.parametrize("options", ["", "(header)", "(null '\\x')", "(null '')", "(delimiter '|')"])
def test_no_value_masked_by_name_reaches_the_client_whatever_the_text_copy_options(gateway, upstream, options) -> None:
    # Tab-delimited lines past the header go in runs (proxy.protocol.rowrun), the others one
    # by one; tests/proxy/test_rowrun.py holds the two to the same bytes.
    out = _copy(gateway.dsn(), f"copy {_ROWS} to stdout {options}")
    assert isinstance(out, bytes) and out.count(b"\n") >= 40 * 20
    for secret in _masked_values(upstream):
        assert secret.encode() not in out


def test_a_copy_encoding_that_embeds_ascii_is_refused(gateway, upstream) -> None:
    # In SJIS the parser would see ポ's 0x7C as a delimiter (one field more) and 表's 0x5C as
    # escaping the delimiter after it (one field less): the count matches, and the ssn would
    # be read as the int column `n`, sent as it is.
    statement = (
        "copy (select 'ポ' as a, ssn, 7 as n, '表' as b, 8 as m from customers where ssn is not null)"
        " to stdout (delimiter '|', encoding 'SJIS')"
    )
    out = _copy(gateway.dsn(), statement)
    assert not isinstance(out, bytes) and "ENCODING" in out[1], out
    latin1 = _copy(gateway.dsn(), "copy (select ssn from customers) to stdout (encoding 'latin1')")
    assert isinstance(latin1, bytes) and latin1
    for secret in _masked_values(upstream):
        assert secret.encode() not in latin1


def test_a_null_string_a_value_could_equal_is_refused(gateway) -> None:
    # Else `NULL 'ann@example.com'` would pass that address as NULL, unmasked, where it is.
    out = _copy(gateway.dsn(), "copy customers (email) to stdout (null 'ann@example.com')")
    assert not isinstance(out, bytes) and "NULL string" in out[1], out
