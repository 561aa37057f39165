"""Values rewritten from sensitive columns stay masked through the real proxy (lineage).

Runs the corpus's masking cases (tests/corpus/bypass.yaml, ``note: masking``) against the
seeded demo data: no raw SSN, e-mail, phone, card number or API key, nor its reverse, upper
or lower case, md5 or digit-translated form, may come back; plain reads and ``count(ssn)``
stay untouched.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import asyncpg
import psycopg
import pytest
import yaml

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).parents[2] / "tests" / "corpus" / "bypass.yaml"
CASES = [c["sql"] for c in yaml.safe_load(CORPUS.read_text(encoding="utf-8")) if c.get("note") == "masking"]
_DIGITS = str.maketrans("0123456789", "abcdefghij")


def _forbidden(upstream) -> set[str]:
    with psycopg.connect(upstream.dsn("demo")) as admin:
        rows = admin.execute("select ssn, email, phone, card_number, api_key from customers").fetchall()
    out: set[str] = set()
    for row in rows:
        for value in row:
            if not value:
                continue
            out |= {value, value[::-1], value.upper(), value.lower()}
            out.add(hashlib.md5(value.encode()).hexdigest())
            if any(c.isdigit() for c in value):
                out.add(value.translate(_DIGITS))
    return out


def _text(rows) -> str:
    return "\n".join(" | ".join(str(v) for v in row) for row in rows)


def test_corpus_has_the_masking_cases() -> None:
    assert len(CASES) >= 12


def test_derived_values_never_leave_the_gateway(gateway, upstream) -> None:
    forbidden = _forbidden(upstream)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        raw = {sql: _text(admin.execute(sql).fetchall()) for sql in CASES}
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for sql in CASES:
            # Sanity: straight from PostgreSQL these leak, so the check below means something.
            assert any(value in raw[sql] for value in forbidden), sql
            for prepare in (False, True):
                text = _text(conn.execute(sql, prepare=prepare).fetchall())
                leaked = [value for value in forbidden if value in text]
                assert not leaked, (sql, leaked[:3])
        with conn.cursor() as cur:
            with cur.copy("copy (select id, reverse(ssn), upper(email) from customers) to stdout") as copy:
                data = b"".join(bytes(chunk) for chunk in copy).decode()
        assert data.count("\n") == 200 and "********" in data
        assert not [value for value in forbidden if value in data]


def test_plain_reads_and_counts_are_not_masked(gateway, upstream) -> None:
    plain = "select id, status, amount, sum(amount) over () from orders order by id"
    with psycopg.connect(upstream.dsn("demo")) as admin:
        orders = admin.execute(plain).fetchall()
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        assert conn.execute(plain).fetchall() == orders
        assert conn.execute("select count(ssn), count(distinct ssn) from customers").fetchone() == (200, 200)
        assert conn.execute("select length(full_name) > 0 from customers where id = 1").fetchone() == (True,)


async def test_binary_results_of_derived_values_are_masked(gateway, upstream) -> None:
    forbidden = _forbidden(upstream)
    conn = await asyncpg.connect(gateway.dsn())
    try:
        row = await conn.fetchrow(
            "select reverse(ssn) r, upper(email) e, array_agg(ssn) over () a, length(ssn) n from customers where id = 1"
        )
        assert row["r"] == "********" and row["e"] == "********"
        assert row["a"] is None and row["n"] is None
        assert not [v for v in forbidden if v in repr(tuple(row))]
    finally:
        await conn.close()
