"""Control flow: which masked values a statement's result depends on other than as outputs."""

from __future__ import annotations

import pytest

from broker.policy.facts import extract
from broker.policy.flow import MAX_IN_LIST, MAX_QUERY_DEPTH, UNKNOWN


def controls(sql: str) -> dict[str, set[str]]:
    """how -> sources, of the one statement in `sql`."""
    facts = extract(sql)
    assert facts.error is None, facts.error
    (statement,) = facts.statements
    found: dict[str, set[str]] = {}
    for how, sources in statement.controls:
        found.setdefault(how, set()).update(sources)
    return found


@pytest.mark.parametrize(
    ("sql", "how", "source"),
    [
        ("select id from customers where ssn like '6%'", "WHERE", "ssn"),
        ("select id from customers c join orders o on substr(c.ssn, 1, 1) = o.status", "JOIN ON", "ssn"),
        ("select c.id from customers c join customers d using (ssn)", "JOIN USING", "ssn"),
        ("select id from customers c natural join orders", "NATURAL JOIN", UNKNOWN),
        ("select count(*) from customers group by email", "GROUP BY", "email"),
        ("select count(*) from customers group by id having max(api_key) > 'm'", "HAVING", "api_key"),
        ("select id from customers order by card_number", "ORDER BY", "card_number"),
        ("select id, email from customers order by 2", "ORDER BY", "email"),
        ("select id, email as contact from customers order by contact", "ORDER BY", "email"),
        ("select distinct on (ssn) id from customers", "DISTINCT ON", "ssn"),
        ("select id from customers limit (select ascii(ssn) from customers limit 1)", "LIMIT", "ssn"),
        ("select id from customers offset (select length(api_key) from customers limit 1)", "OFFSET", "api_key"),
        ("select row_number() over (partition by phone) from customers", "window PARTITION BY / ORDER BY", "phone"),
        ("select rank() over w from customers window w as (order by ssn)", "window PARTITION BY / ORDER BY", "ssn"),
        ("select count(*) filter (where email like 'a%') from customers", "FILTER", "email"),
        ("select string_agg(full_name, ',' order by ssn) from customers", "aggregate ORDER BY", "ssn"),
        ("select case when ssn like '6%' then 1 end from customers", "CASE condition", "ssn"),
        ("select case substr(ssn, 1, 1) when '6' then 1 end from customers", "CASE condition", "ssn"),
        ("select generate_series(1, length(ssn)) from customers", "argument of generate_series()", "ssn"),
        ("select pg_advisory_lock(length(ssn)) from customers", "argument of pg_advisory_lock()", "ssn"),
        ("select lo_create(translate(ssn, '-', '')::oid) from customers", "argument of lo_create()", "ssn"),
        ("select set_config('x.a', 'v', ssn like '6%') from customers", "argument of set_config()", "ssn"),
        ("select myschema.lower(ssn) from customers", "argument of lower()", "ssn"),
        (
            "select count(*) from customers c, lateral (select 1 from orders tablesample bernoulli (ascii(c.ssn))) x",
            "TABLESAMPLE",
            "ssn",
        ),
        ("select count(*) from (select substr(ssn, 1, 1) < '5' from customers union select true) s", "UNION", "ssn"),
        ("select distinct substr(ssn, 1, 1) from customers", "DISTINCT", "ssn"),
        (
            "with recursive r(v) as (select ascii(ssn) from customers union select least(v + 1, 200) from r)"
            " select count(*) from r",
            "UNION",
            "ssn",
        ),
        ("explain select id from customers where ssn > '5'", "WHERE", "ssn"),
        # found by the second red-team round
        (
            "with d as (update customers set notes = notes where ssn like '6%' returning id) select id from d",
            "WHERE",
            "ssn",
        ),
        (
            "with d as (insert into orders (status) select ch from customers c, (select chr(g) ch from"
            " generate_series(32, 126) g) v where substr(c.ssn, 1, 1) = ch returning status) select * from d",
            "WHERE",
            "ssn",
        ),
        (
            "with recursive a as (select 1 from b where x like '6%'), b as (select ssn x from customers)"
            " select count(*) from a",
            "WHERE",
            "ssn",
        ),
        (
            "with recursive t(id, x) as (select id, ssn from customers union all select id, x from t where false)"
            " search breadth first by x set ord select id from t order by ord",
            "ORDER BY",
            "ssn",
        ),
        (
            "with recursive t(id, x) as (select id, ssn from customers union all select id, x from t where false)"
            " cycle x set c using p select id from t",
            "CYCLE",
            "ssn",
        ),
        (
            "select id from (select id, array[ssn]::text[] from customers) s where \"array\" > array['5']",
            "WHERE",
            "ssn",
        ),
        (
            "select count(*) over (rows between (select ascii(ssn) from customers limit 1) preceding and current row)"
            " from generate_series(1, 200) g",
            "window frame",
            "ssn",
        ),
        (
            "select sum(id) over w from customers"
            " window w as (rows (select ascii(ssn) from customers limit 1) preceding)",
            "window frame",
            "ssn",
        ),
        (
            "create table g1 (ssn text, k text generated always as (substr(ssn, 1, 1)) stored)",
            "a generated column",
            "ssn",
        ),
        ("create table pt (id int, ssn text) partition by list (substr(ssn, 1, 1))", "a partition key", "ssn"),
        ("create unique index on oc (substr(ssn, 1, 1))", "an index", "ssn"),
        ('create table lossy (ssn "char")', 'a column of type "char"', "ssn"),
        ("create table chk (ssn text check (substr(ssn, 1, 1) < '5'))", "a CHECK constraint", "ssn"),
        ("alter table t add constraint u unique (email)", "a unique key", "email"),
        ("insert into t (email) select email from customers on conflict (email) do nothing", "ON CONFLICT", "email"),
        ("select pg_sleep(ascii(ssn)) from customers", "argument of pg_sleep()", "ssn"),
        ("select 1 from customers c, lateral generate_series(1, ascii(c.ssn)) g", "function in FROM", "ssn"),
        ("select ssn from customers intersect select '1'", "INTERSECT", "ssn"),
        ("select id from customers except select id from customers where email like 'a%'", "WHERE", "email"),
        ("select exists (select 1 from customers where ssn like '6%')", "WHERE", "ssn"),
        ("select (select full_name from customers where api_key > 'm' limit 1)", "WHERE", "api_key"),
        ("select * from (select ssn x from customers) s where x like '6%'", "WHERE", "ssn"),
        ("with t as (select substr(ssn, 1, 1) x from customers) select count(*) from t where x = '6'", "WHERE", "ssn"),
        ("update customers set notes = 'x' where ssn like '6%'", "WHERE", "ssn"),
        ("delete from orders where customer_id in (select id from customers where email like 'a%')", "WHERE", "email"),
        ("insert into t select id from customers where ssn > '5'", "WHERE", "ssn"),
        (
            "merge into orders o using customers c on o.customer_id = c.id and c.ssn > '5'"
            " when matched then update set status = 'x'",
            "MERGE ... ON",
            "ssn",
        ),
        (
            "insert into customers (id) values (1) on conflict (id) do update set notes = 'x'"
            " where customers.api_key like 'a%'",
            "ON CONFLICT ... WHERE",
            "api_key",
        ),
        ("create table t as select id from customers where ssn like '6%'", "WHERE", "ssn"),
        ("declare c cursor for select id from customers order by ssn", "ORDER BY", "ssn"),
        ("copy (select id from customers where ssn like '6%') to stdout", "WHERE", "ssn"),
        ("prepare p as select id from customers where email like $1", "WHERE", "email"),
        ("explain analyze select id from customers where ssn like '6%'", "WHERE", "ssn"),
        ("select query_to_xml('select id from customers where ssn like ''6%''', true, true, '')", "WHERE", "ssn"),
        ("select id from customers c where c is not null", "WHERE", UNKNOWN),
        ("select id from customers c(a, b) where a > 1", "WHERE", UNKNOWN),
    ],
)
def test_control_positions_record_their_sources(sql: str, how: str, source: str) -> None:
    found = controls(sql)
    assert source in found.get(how, set()), found


@pytest.mark.parametrize(
    "sql",
    [
        "select id, full_name from customers where email = 'a@b.c'",
        "select id from customers where email = $1",
        "select id from customers where $1 = email",
        "select id from customers where email = $1::text",
        "select id from customers where ssn in ('1', '2', '3')",
        "select id from customers where ssn not in ('1', '2')",
        "select id from customers where ssn is null or api_key is not null",
        "select id from customers where not (ssn = '1') and (phone = '2' or email = '3')",
        "select count(ssn), count(distinct email), count(*) from customers",
        "select * from (select ssn from customers) s where ssn = '1'",
        "select o.id from orders o join customers c on c.id = o.customer_id where c.full_name like 'A%' order by 1",
        "select distinct email from customers",
        "select email from customers union select email from customers",
        "select id from customers where email <> 'a@b.c' and phone is distinct from '1'",
        "select id from customers where (email, phone) = ($1, $2)",
        "select id from customers where email = lower($1) or email = 'A' || $1",
        "select id from customers where email = 'x' collate \"C\"",
        "select lower(email), pg_catalog.upper(ssn) from customers",
        "select reverse(ssn) from customers",  # data flow only: the output is masked
    ],
)
def test_safe_forms_and_plain_outputs_record_no_masked_source(sql: str) -> None:
    masked = {"ssn", "email", "phone", "api_key", "card_number", UNKNOWN}
    found = {how: sources & masked for how, sources in controls(sql).items() if sources & masked}
    assert not found


def test_more_guesses_than_the_limit_count_as_reading_the_column() -> None:
    few = " or ".join(f"ssn = '{i}'" for i in range(MAX_IN_LIST))
    many = " or ".join(f"ssn = '{i}'" for i in range(MAX_IN_LIST + 1))
    ten = ", ".join(repr(str(i)) for i in range(10))
    spread = f"ssn in ({ten}) or exists (select 1 from customers d where d.ssn in ({ten}))"
    assert not controls(f"select id from customers where {few}")
    assert "ssn" in controls(f"select id from customers where {many}")[f"more than {MAX_IN_LIST} equality guesses"]
    assert controls(f"select id from customers where {spread}")  # counted across the statement
    long_list = ", ".join(repr(str(i)) for i in range(MAX_IN_LIST + 1))
    assert "ssn" in controls(f"select id from customers where ssn in ({long_list})")["WHERE"]


def test_guesses_are_counted_per_column() -> None:
    ids = " or ".join(f"id = {i}" for i in range(MAX_IN_LIST + 1))
    assert controls(f"select id from customers where email = $1 and ({ids})").get(
        f"more than {MAX_IN_LIST} equality guesses"
    ) == {"id"}  # only id is over the limit: not masked, so no review (the masker decides)
    rows = ", ".join(f"('g{i}', 'g{i}@x')" for i in range(MAX_IN_LIST + 1))
    found = controls(f"insert into customers (full_name, email) values {rows} on conflict (email) do nothing")
    assert "email" in found[f"more than {MAX_IN_LIST} equality guesses"]
    one = controls("insert into customers (full_name, email) values ('g', 'g@x') on conflict (email) do nothing")
    assert not one


def test_plain_definitions_record_nothing_masked() -> None:
    assert not controls("create table plain (id int primary key, note text check (note <> ''))").keys() - {
        "a unique key",
        "a CHECK constraint",
    }
    assert controls("create index on orders (created_at)") == {"an index": {"created_at"}}


def test_a_derived_value_compared_with_a_constant_is_not_safe() -> None:
    assert "ssn" in controls("select id from customers where substr(ssn, 1, 1) = '6'")["WHERE"]
    assert "email" in controls("select id from customers where lower(email) = 'a@b.c'")["WHERE"]
    assert "ssn" in controls("select id from customers where ssn = any('{1,2}')")["WHERE"]


def test_order_by_position_is_literal_sensitive() -> None:
    """``order by 1`` and ``order by 2`` share a statement shape: the verdict must not be
    cached by shape when a position decided it."""
    assert extract("select id, ssn from customers order by 2").literal_sensitive
    assert not extract("select id, ssn from customers order by id").literal_sensitive


def test_queries_nested_too_deep_fail_closed() -> None:
    sql = "select 1"
    for _ in range(MAX_QUERY_DEPTH + 2):
        sql = f"select * from ({sql}) s"
    found = controls(sql)
    assert UNKNOWN in found["a statement the gateway cannot follow"]
