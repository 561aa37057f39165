"""Masked values cannot be read back through control flow (real proxy, real PostgreSQL).

Masking follows what a query outputs; these statements output nothing masked and still read
every masked value: one character per row (row selection), by bisection (``like '6%'``),
through ORDER BY, a CASE condition, LIMIT, a window, an aggregate's FILTER or ORDER BY, the
arguments of set-returning functions. Each test first shows the value coming straight from
PostgreSQL, so the check through the gateway means something, then shows the gateway refusing
the statement (``masking/inference``: review, and this gateway has no approvals service, so
42501), in the simple and the extended protocol, text and binary. The safe forms (equality
with a constant or parameter, short IN lists, IS NULL, counts) still run, with the server's
own answer.
"""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg
import pytest

pytestmark = pytest.mark.e2e

# Spells customer 1's SSN one character per row: no output is derived from it.
SPELL_SSN = (
    "select pos, ch from customers c, generate_series(1, 11) pos,"
    " (select chr(g) ch from generate_series(32, 126) g) v"
    " where c.id = 1 and substr(c.ssn, pos, 1) = ch order by pos"
)
# Every customer's API key, e-mail and card number at once, one string per column.
SPELL_ALL = (
    "select c.id,"
    " (select string_agg(ch, '' order by pos) from generate_series(1, 64) pos,"
    "   (select chr(g) ch from generate_series(32, 126) g) v where substr(c.{col}, pos, 1) = ch) spelled"
    " from customers c order by c.id"
)
# Other channels: each SQL returns something from which the column's value (or a bit of it)
# of customer 1 follows, with no output derived from it.
CHANNELS = {
    "bisection": "select count(*) from customers where id = 1 and ssn like '{first}%'",
    "case": "select id, case when api_key like '{first}%' then 1 end hit from customers where id = 1",
    "length": "select count(*) from customers where id = 1 and length(api_key) = {length}",
    "order by": "select id from customers order by card_number limit 3",
    "order by position": "select id, email from customers order by 2 limit 3",
    "limit": "select count(*) from (select 1 from customers limit (select ascii(ssn) from customers where id = 1)) s",
    "filter": "select count(*) filter (where phone like '{first}%') from customers where id = 1",
    "window": "select id, row_number() over (order by ssn) from customers order by 2 limit 3",
    "set-returning": "select count(*) from (select generate_series(1, ascii(api_key)) from customers where id = 1) s",
    "exists": "select exists (select 1 from customers where id = 1 and email like '{first}%')",
    "intersect": "select count(*) from (select ssn from customers intersect select '{value}') s",
    "derived equality": (
        "select count(*) from (select substr(ssn, 1, 1) x from customers where id = 1) s where x = '{first}'"
    ),
    "many guesses": "select id from customers where " + " or ".join(f"ssn = '{{value}}{i}'" for i in range(17)),
    "update where": "update customers set notes = notes where id = 1 and ssn like '{first}%'",
    # Found by red-teaming: state another statement reads back, dedup as a comparison,
    # sampling, the planner's statistics.
    "advisory lock": "select pg_advisory_xact_lock(translate(ssn, '-', '')::bigint) from customers where id = 1",
    "large object": "select lo_create(translate(ssn, '-', '')::oid) from customers where id = 1",
    "set_config is_local": "select set_config('x.a', 'v', ssn like '{first}%') from customers where id = 1",
    "union": "select count(*) from (select substr(ssn, 1, 1) < '5' from customers where id = 1 union select true) s",
    "recursive union": (
        "with recursive r(v) as (select ascii(substr(ssn, 1, 1)) from customers where id = 1"
        " union select least(v + 1, 200) from r) select 201 - count(*) from r"
    ),
    "tablesample": (
        "select count(*) from customers c, lateral (select 1 from orders"
        " tablesample bernoulli ((ascii(c.ssn) - 48) * 10) repeatable (0)) x where c.id = 1"
    ),
    "explain": "explain select 1 from customers where ssn > '{first}'",
}
SAFE = [
    ("select id, full_name from customers where email = '{email}'", ()),
    ("select id from customers where ssn in ('{value}', '000-00-0000')", ()),
    ("select count(*) from customers where api_key is null", ()),
    ("select count(ssn), count(distinct email) from customers", ()),
    (
        "select o.id from orders o join customers c on c.id = o.customer_id where c.full_name like 'A%' order by o.id",
        (),
    ),
]


def _customer_one(upstream) -> dict[str, str]:
    with psycopg.connect(upstream.dsn("demo")) as admin:
        row = admin.execute("select ssn, email, api_key, card_number, phone from customers where id = 1").fetchone()
    assert row is not None and all(row)
    ssn, email, api_key, card, phone = row
    return {"value": ssn, "first": ssn[0], "email": email, "api_key": api_key, "card": card, "phone": phone,
            "length": str(len(api_key))}  # fmt: skip


def _render(sql: str, one: dict[str, str]) -> str:
    return sql.format(**one)


def _refused(conn: psycopg.Connection, sql: str, **kw: object) -> psycopg.Error:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        conn.execute(sql, **kw)  # type: ignore[arg-type]
    assert "masking/inference" in str(err.value) or "jitgate" in str(err.value)
    return err.value


def test_the_issue_query_spells_the_ssn_directly_and_is_refused_through_the_gateway(gateway, upstream) -> None:
    one = _customer_one(upstream)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        spelled = "".join(ch for _, ch in admin.execute(SPELL_SSN).fetchall())
    assert spelled == one["value"]  # straight from PostgreSQL: the whole SSN
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for prepare in (False, True):
            err = _refused(conn, SPELL_SSN, prepare=prepare)
            assert err.diag.sqlstate == "42501"
        # The refusal names the column and how, for the agent (and the approver's card).
        text = str(err)
        assert "ssn" in text and "WHERE" in text, text
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on


@pytest.mark.parametrize("column", ["api_key", "email", "card_number"])
def test_every_customer_at_once_is_refused_in_text_and_binary(gateway, upstream, column: str) -> None:
    sql = SPELL_ALL.format(col=column)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        raw = dict(admin.execute(sql).fetchall())
        stored = dict(admin.execute(f"select id, {column} from customers").fetchall())
    assert raw[1] == stored[1] and sum(raw[i] == stored[i] for i in stored) >= 190
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for binary in (False, True):
            for prepare in (False, True):
                with conn.cursor(binary=binary) as cur, pytest.raises(psycopg.errors.InsufficientPrivilege):
                    cur.execute(sql, prepare=prepare)


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_each_channel_leaks_directly_and_is_refused_through_the_gateway(gateway, upstream, channel: str) -> None:
    one = _customer_one(upstream)
    sql = _render(CHANNELS[channel], one)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        admin.execute(sql)  # runs directly (and, by its construction above, answers from the value)
        admin.rollback()
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for prepare in (False, True):
            err = _refused(conn, sql, prepare=prepare)
            assert err.diag.sqlstate == "42501"


def test_bisection_answers_from_the_value_directly(upstream) -> None:
    """The channels above are channels: straight from PostgreSQL they answer from the value."""
    one = _customer_one(upstream)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        hit = admin.execute(_render(CHANNELS["bisection"], one)).fetchone()
        miss = admin.execute(CHANNELS["bisection"].format(first="~")).fetchone()
        length = admin.execute(_render(CHANNELS["length"], one)).fetchone()
    assert hit == (1,) and miss == (0,) and length == (1,)


def test_asyncpg_extended_protocol_is_refused_too(gateway, upstream) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(gateway.dsn())
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch("select id from customers where ssn like $1", "6%")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(SPELL_SSN)
            # A bound parameter in a safe form is fine.
            rows = await conn.fetch("select id from customers where email = $1", one["email"])
            assert [r["id"] for r in rows] == [1]
        finally:
            await conn.close()

    one = _customer_one(upstream)
    asyncio.run(run())


def test_safe_forms_run_and_answer_as_postgresql_does(gateway, upstream) -> None:
    one = _customer_one(upstream)
    with psycopg.connect(upstream.dsn("demo")) as admin, psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        for template, _ in SAFE:
            sql = _render(template, one)
            assert conn.execute(sql).fetchall() == admin.execute(sql).fetchall(), sql
        prepared = conn.execute("select id from customers where email = %s", (one["email"],), prepare=True)
        assert prepared.fetchall() == [(1,)]


def test_nothing_changed_by_a_refused_write(gateway, upstream) -> None:
    one = _customer_one(upstream)
    sql = "update customers set notes = 'leaked' where ssn like '{first}%'".format(**one)
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        _refused(conn, sql)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        assert admin.execute("select count(*) from customers where notes = 'leaked'").fetchone() == (0,)


@pytest.mark.parametrize(
    "template",
    [
        "select count(nullif(substr(ssn, 1, 1), '{guess}')) from customers where id = 1",
        "select nullif(substr(ssn, 1, 1), '{guess}') is null from customers where id = 1",
        "select bool_or(ssn like '{guess}%') from customers where id = 1",
    ],
)
def test_computed_counts_and_null_tests_are_masked_outputs(gateway, upstream, template: str) -> None:
    """Allowed (the value only flows into the output), but that output is masked: the answer
    through the gateway is the same whether the guess is right or wrong."""
    one = _customer_one(upstream)
    right, wrong = template.format(guess=one["first"]), template.format(guess="~")
    with psycopg.connect(upstream.dsn("demo")) as admin:
        assert admin.execute(right).fetchone() != admin.execute(wrong).fetchone()  # a channel, directly
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        assert conn.execute(right).fetchone() == conn.execute(wrong).fetchone()



def test_an_advisory_lock_key_spells_the_value_directly(upstream) -> None:
    """The lock's key is state any statement can read back (pg_locks), in full."""
    one = _customer_one(upstream)
    with psycopg.connect(upstream.dsn("demo")) as admin:
        admin.execute(_render(CHANNELS["advisory lock"], one))
        row = admin.execute(
            "select (classid::bigint << 32) | objid::bigint from pg_locks"
            " where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None and row[0] == int(one["value"].replace("-", ""))


def test_computed_values_are_not_stored_under_masked_names(gateway, upstream) -> None:
    """Stored under a masked name a value reads back masked, but a safe-form filter on it
    (``where phone = '6'``) would answer for its source: such a write goes to review."""
    spell = (
        "insert into customers (full_name, email, phone) select 'pos' || g, 'probe' || g || '@probe.invalid',"
        " substr(c.ssn, g, 1) from customers c, generate_series(1, 11) g where c.id = 1"
    )
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="stored-unmasked"):
            conn.execute(spell)
        # Even from itself alone: in a transaction, set ssn = substr(ssn, 1, 1), filter, roll back.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="stored-unmasked"):
            conn.execute("update customers set ssn = substr(ssn, 1, 1) where id = 1")
        # A copy under a masked name runs.
        assert conn.execute("update customers set email = email where id = 1").statusmessage == "UPDATE 1"
    with psycopg.connect(upstream.dsn("demo")) as admin:
        assert admin.execute("select count(*) from customers where full_name like 'pos%'").fetchone() == (0,)
