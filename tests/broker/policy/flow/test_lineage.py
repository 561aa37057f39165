"""Column lineage: which source columns each result column is derived from."""

from __future__ import annotations

import pytest

from broker.policy import Lineage, PolicyEngine
from broker.policy.facts import extract
from broker.policy.flow import UNKNOWN
from broker.policy.flow.scopes import DERIVED

SSN = frozenset({"ssn"})


def lineage(sql: str) -> Lineage | None:
    facts = extract(sql)
    assert facts.error is None, facts.error
    (statement,) = facts.statements
    return statement.lineage


@pytest.mark.parametrize(
    "sql",
    [
        "select * from orders",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "select id, total from orders",
        "select ssn from customers",
        "select c.ssn as ssn from customers c",
        "select count(ssn), count(distinct ssn), ssn is null from customers",
        "select count(*), now(), 1 from customers",
        "with t as (select ssn from customers) select * from t",
        "select ssn from (select ssn from customers) s",
        "insert into orders (total) values (1) returning *",
        "update orders set total = 1 where id = 1",
        "select id from customers c join orders o using (id)",
    ],
)
def test_bare_and_valueless_outputs_have_no_lineage(sql: str) -> None:
    assert lineage(sql) is None


@pytest.mark.parametrize(
    "sql",
    [
        "select reverse(ssn) from customers",
        "select substr(ssn, 1, 3) || substr(ssn, 4) from customers",
        "select ssn || '' from customers",
        "select ssn as x from customers",
        "select ssn::text from customers",
        "select (select ssn from customers limit 1) as x",
        "select x from (select reverse(ssn) x from customers) s",
        "select s.x from (select ssn as x from customers) s",
        "select array_agg(ssn) from customers",
        "select string_agg(reverse(ssn), ',') from customers",
        "select min(ssn) from customers",
        "with t as (select reverse(ssn) r from customers) select r from t",
        "with t(r) as (select ssn from customers) select r from t",
        "with t as (select ssn from customers) select upper(ssn) from t",
        "select r from customers c, lateral reverse(c.ssn) r",
        "select case when true then ssn end from customers",
        "values (ssn)",
        "copy (select reverse(ssn) from customers) to stdout",
        "update customers set full_name = 'x' where id = 1 returning reverse(ssn)",
        "select reverse(full_name) from customers union all select ssn from customers",
        "select * from (select reverse(ssn) r from customers) s",
    ],
)
def test_derived_outputs_name_their_sources(sql: str) -> None:
    found = lineage(sql)
    assert found is not None and not found.starred
    assert len(found.head) == 1
    sources = found.head[0]
    assert sources is not None and "ssn" in sources


def test_positions_around_stars() -> None:
    found = lineage("select upper(email) e, *, reverse(ssn) from customers")
    assert found == Lineage(
        head=(frozenset({"email"}),),
        tail=(SSN,),
        starred=True,
        named=(("e", frozenset({"email"})), ("reverse", SSN)),
    )
    # Between two stars the position is unknown: matched by the name the result gives it.
    between = lineage("select a.*, reverse(ssn) r, b.* from customers a, orders b")
    assert between is not None and between.head == () and between.tail == ()
    assert between.loose == (("r", SSN),)
    # A star over a subquery without stars expands to its outputs.
    expanded = lineage("select * from (select id, reverse(ssn) r from customers) s")
    assert expanded is not None and expanded.head == (None, SSN) and not expanded.starred


def test_unknowable_columns_fail_closed() -> None:
    renamed = lineage("select * from customers c(a, b)")
    assert renamed is not None and renamed.loose == (
        ("a", frozenset({UNKNOWN})),
        ("b", frozenset({UNKNOWN})),
    )
    # A later branch's star could put any column under an earlier branch's name.
    union = lineage("select * from orders union all select * from customers")
    assert union is not None and union.loose == ((None, frozenset({UNKNOWN})),)
    # A recursive CTE is followed to a fixpoint: b takes a's sources in the second round.
    recursive = lineage(
        "with recursive t(a, b) as (select ssn, '1' from customers"
        " union all select b, a from t where false) select b from t"
    )
    assert recursive is not None and recursive.head[0] is not None and "ssn" in recursive.head[0]


def test_correlated_and_outer_names_are_unioned() -> None:
    found = lineage("select (select x from orders limit 1) from (select reverse(ssn) x from customers) s")
    assert found is not None and found.head[0] is not None and "ssn" in found.head[0]


def test_verdicts_carry_lineage_including_multi_statement_and_shadow() -> None:
    engine = PolicyEngine.preset("agent-safe")
    verdict = engine.classify("select reverse(ssn) from customers where id = 1")
    assert verdict.lineage is not None and verdict.lineage.head == (SSN,)
    # Same shape, other literal: the cached verdict's lineage is still right.
    assert engine.classify("select reverse(ssn) from customers where id = 2").lineage == verdict.lineage
    assert engine.classify("select id from customers where id = 1").lineage is None
    multi = engine.classify("select 1; select reverse(ssn) from customers")
    assert multi.lineage is not None and multi.lineage.starred
    assert multi.lineage.loose == (("reverse", SSN),)
    observe = PolicyEngine.preset("observe").classify("select upper(email) from customers")
    assert observe.lineage is not None and observe.lineage.head == (frozenset({"email"}),)


def stored(sql: str) -> dict[str, frozenset[str]]:
    facts = extract(sql)
    assert facts.error is None, facts.error
    return {where: sources for statement in facts.statements for where, sources in statement.stored}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("create table x as select reverse(api_key) r, id, ssn from customers", {"x.r": {"api_key"}}),
        ("create table x (a, b) as select ssn, id from customers", {"x.a": {"ssn"}, "x.b": {"id"}}),
        ("select api_key as k into temp t from customers", {"t.k": {"api_key"}}),
        ("create view v as select email e from customers", {"v.e": {"email"}}),
        ("create view v (a) as select email from customers", {"v.a": {"email"}}),
        ("create materialized view mv as select upper(email) from customers", {"mv.upper": {"email"}}),
        ("insert into notes (body) select api_key from customers", {"notes.body": {"api_key"}}),
        ("insert into notes select api_key from customers", {"notes": {"api_key"}}),  # columns unnamed
        ("insert into notes select * from orders", {"notes.*": {UNKNOWN}}),
        (
            "update orders set status = c.ssn from customers c where c.id = orders.customer_id",
            {"orders.status": {"ssn"}},
        ),
        (
            "insert into t (id, api_key) select id, api_key from customers "
            "on conflict (id) do update set notes = excluded.api_key",
            {"t.notes": {"api_key"}},
        ),
        (
            "with s as (select reverse(api_key) k from customers) insert into t (n) select k from s",
            {"t.n": {"api_key"}},
        ),
        (
            "with s as (select ssn from customers), i as (insert into t (n) select ssn from s returning 1) select 1",
            {"t.n": {"ssn"}},
        ),
        ("prepare p as insert into t (n) select email from customers", {"t.n": {"email"}}),
        ("explain analyze create table x as select upper(email) e from customers", {"x.e": {"email"}}),
        ("create table x as execute p", {"x": {UNKNOWN}}),
        # Sinks: a setting read back by current_setting, a notification's payload.
        ("select set_config('my.k', reverse(api_key), false) from customers", {"setting my.k": {"api_key"}}),
        ("select 1 from customers where set_config('my.k', ssn, false) is not null", {"setting my.k": {"ssn"}}),
        (
            "select pg_notify('ch', c.ssn) from orders o join customers c on c.id = o.customer_id",
            {"notification on ch": {"ssn"}},
        ),
        ("select count(*) from customers group by set_config('k', card_number, false)", {"setting k": {"card_number"}}),
        ("select lo_from_bytea(0, convert_to(api_key, 'UTF8')) from customers", {"large object ?": {"api_key"}}),
        ("select lo_put(42, 0, convert_to(ssn, 'UTF8')) from customers", {"large object ?": {"ssn"}}),
        ("select setval('s', length(ssn)) from customers", {"sequence s": {"ssn"}}),
        (
            "update orders set status = 'x' where id = 1"
            " and set_config('a.b', (select email from customers), true) > ''",
            {"setting a.b": {"email"}},
        ),
    ],
)
def test_values_stored_under_other_names(sql: str, expected: dict[str, set[str]]) -> None:
    found = {k: v - {DERIVED} for k, v in stored(sql).items()}
    assert found == {k: frozenset(v) for k, v in expected.items()}


@pytest.mark.parametrize(
    ("sql", "where", "derived"),
    [
        ("insert into customers (phone) select substr(ssn, 1, 1) from customers", "customers.phone", True),
        ("update customers set email = substr(ssn, 1, 1) || '@x.invalid'", "customers.email", True),
        ("update customers set ssn = substr(ssn, 1, 1)", "customers.ssn", True),  # then ssn = '6' bisects
        ("insert into customers (email) select lower(email) from customers", "customers.email", True),
        ("insert into t (phone) select ssn from customers", "t.phone", False),  # copied, renamed
        ("insert into t (k) select x from (select reverse(api_key) x from customers) s", "t.k", True),
        ("insert into t (k) select x from (select api_key x from customers) s", "t.k", False),
    ],
)
def test_computed_values_are_marked_as_such(sql: str, where: str, derived: bool) -> None:
    """A computed value must not be stored even under a masked name (a safe-form filter on it
    would answer for its source): `stored` marks it `DERIVED`."""
    assert (DERIVED in stored(sql)[where]) is derived


@pytest.mark.parametrize(
    "sql",
    [
        "create table x as select * from customers",  # same column names: still masked on read
        "create table x as select id, ssn from customers",
        "insert into notes (api_key) select api_key from customers",
        "insert into notes (a, b) values ('x', 1)",
        "update orders set status = 'x' where id = 4",
        "update customers set email = email where id = 1",
        "select reverse(api_key) from customers",  # returned, so masked: not stored
        "delete from customers where id = 1",
        "explain create table x as select upper(email) e from customers",  # not run
        "select set_config('search_path', 'public', false), pg_notify('ch', 'done')",
    ],
)
def test_writes_that_keep_names_or_store_no_column_store_nothing(sql: str) -> None:
    assert stored(sql) == {}


def test_a_cursor_carries_its_querys_lineage_and_fetch_names_it() -> None:
    facts = extract("declare c cursor for select reverse(ssn) r from customers; fetch 5 from c; close c; close all")
    declare, fetch, close, close_all = facts.statements
    assert declare.declares == ["c"] and declare.lineage == Lineage(head=(SSN,), named=(("r", SSN),))
    assert fetch.fetches == ["c"] and close.closes == ["c"] and close_all.closes == [None]
    assert extract("move 5 in c").statements[0].fetches == []  # MOVE returns no rows


@pytest.mark.parametrize(
    "sql",
    [
        "select reverse(c::text) from customers c",
        "select translate(row(c.*)::text, '0', 'a') from customers c",
        "select md5(to_json(c)::text) from customers c",
        "select reverse(x) from (select c::text x from customers c) s",
        "select reverse(s.c::text) from (select c from customers c) s",
    ],
)
def test_a_rewritten_whole_row_is_masked_whole(sql: str) -> None:
    found = lineage(sql)
    assert found is not None and found.head[0] is not None and UNKNOWN in found.head[0], found


@pytest.mark.parametrize(
    "sql",
    [
        "select c from customers c",
        "select row_to_json(c) from customers c",
        "select json_agg(c), to_jsonb(c)::text from customers c",
        "select c::text as t from customers c",
    ],
)
def test_a_whole_row_shown_as_is_is_left_to_the_content_detectors(sql: str) -> None:
    found = lineage(sql)
    assert found is None or all(UNKNOWN not in (sources or ()) for sources in found.head), found


@pytest.mark.parametrize(
    ("sql", "sources"),
    [
        # PostgreSQL names ARRAY[...] "array" and ROW(...) "row" even under a cast
        ('select s."array" from (select array[reverse(ssn)]::text[] from customers) s', {"ssn"}),
        ('select s."row" from (select row(reverse(ssn))::text from customers) s', {"ssn"}),
        # a cast with a length cuts values below what the detectors recognise: masked whole
        ("select c::varchar(40) from customers c", {UNKNOWN}),
        # a CTE that WITH RECURSIVE lets an earlier CTE read
        ("with recursive a as (select * from b), b as (select reverse(ssn) x from customers) select x from a", {"ssn"}),
        # SEARCH and CYCLE add columns that hold the values they name
        (
            "with recursive t(id, x) as (select id, reverse(ssn) from customers union all"
            " select id, x from t where false) cycle x set c using p select p from t",
            {"ssn"},
        ),
    ],
)
def test_names_postgresql_gives_are_followed(sql: str, sources: set[str]) -> None:
    found = lineage(sql)
    assert found is not None and found.head and found.head[0] is not None
    assert sources <= found.head[0], found
