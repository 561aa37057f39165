"""Writes judged by their blast radius (proxy/rehearsal.py), through the real proxy against
the real PostgreSQL.

An allowed write whose row count its text does not bound runs once, inside a transaction or
savepoint the gateway owns, with its answers held until the gateway has counted the rows it
changed (pg_stat_xact_user_tables, per table). Each test here would fail if that broke: the
counts are exact (CTEs, MERGE-like upserts, triggers), a write over the limit leaves nothing
changed whether it is denied or still waiting, an approved one runs exactly once, the
nextval trick cannot make a rehearsal and a later run differ, and what a client sees under
the limit is byte for byte what PostgreSQL sends it directly.

The module runs its own gateway in front of a fresh copy of the demo database, logging in
upstream as a login role of its own (a member of demo_rw), with a reviewer that records
what it was shown and denies unless told to approve.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from proxy.protocol import messages as m
from tests.e2e.conftest import Gateway, _resource, start_gateway, stop_gateway
from tests.e2e.scratch import TestReviewer, scratch_database
from tests.wire_client import SYNC, WireClient, bind, execute, parse, query

pytestmark = pytest.mark.e2e

RESOURCE = "rehearse"
POLICY = """
max_rows_without_review: 100
max_rows_per_table:
  rh_big: 1000
"""


@dataclass
class Env:
    gw: Gateway
    upstream: Upstream
    db: str
    login: str
    password: str
    token: str
    reviewer: TestReviewer
    sizes: dict[str, int] = field(default_factory=dict)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.upstream.dsn(self.db), autocommit=True)

    def dsn(self) -> str:
        return self.gw.dsn(RESOURCE, token=self.token)

    def agent(self, **kw: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn(), **kw)

    def wire(self) -> WireClient:
        return WireClient.connect("127.0.0.1", self.gw.port, user="agent", database=RESOURCE, password=self.token)

    def direct(self) -> WireClient:
        return WireClient.connect(
            self.upstream.host, self.upstream.port, user=self.login, database=self.db, password=self.password
        )

    def fingerprint(self) -> dict[str, Any]:
        """What the tests may change, as the admin sees it."""
        with self.admin() as admin:
            return {
                table: admin.execute(
                    f"select count(*), md5(string_agg(t::text, ',' order by t::text)) from {table} t"
                ).fetchone()
                for table in ("customers", "orders", "rh_items", "rh_audit", "rh_big", "rh_copy")
            }


@pytest.fixture(scope="module")
def env(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Env]:
    reviewer = TestReviewer()
    with scratch_database(upstream, demo_roles, "jg_rh") as scratch:
        with psycopg.connect(upstream.dsn(scratch.db), autocommit=True) as admin:
            admin.execute("create table rh_items (id int primary key, v text)")
            admin.execute("create table rh_audit (item int, n int)")
            admin.execute("create table rh_big (id int primary key, v text)")
            admin.execute("create table rh_copy (id int, v text)")
            admin.execute("create sequence rh_seq")
            # Every update of an item writes three audit rows: its writes count too.
            admin.execute(
                "create function rh_audit_it() returns trigger language plpgsql as $$ begin"
                " insert into rh_audit select new.id, g from generate_series(1, 3) g; return new; end $$"
            )
            admin.execute(
                "create trigger rh_items_audit after update on rh_items for each row execute function rh_audit_it()"
            )
            admin.execute(
                "grant select, insert, update, delete on rh_items, rh_audit, rh_big, rh_copy to public;"
                " grant usage on sequence rh_seq to public"
            )
            admin.execute("create table rh_orders_saved as select * from orders")
            sizes = {
                "customers": admin.execute("select count(*) from customers").fetchone()[0],  # type: ignore[index]
                "orders": admin.execute("select count(*) from orders").fetchone()[0],  # type: ignore[index]
            }
        with tempfile.TemporaryDirectory(prefix="jitgate-rehearsal-") as tmp:
            policy = Path(tmp) / "policy.yaml"
            policy.write_text(POLICY)
            resource = _resource(upstream, scratch.login, scratch.password, dbname=scratch.db, policy=str(policy))
            extra = {RESOURCE: resource}
            gw = start_gateway(upstream, demo_roles, Path(tmp), extra=extra, review=reviewer)
            try:
                token = gw.issue(RESOURCE)
                yield Env(gw, upstream, scratch.db, scratch.login, scratch.password, token, reviewer, sizes)
            finally:
                stop_gateway(gw)


@pytest.fixture(autouse=True)
def _pristine(env: Env) -> Iterator[None]:
    with env.admin() as admin:
        admin.execute("delete from rh_items; insert into rh_items select g, 'v' from generate_series(1, 50) g")
        admin.execute("delete from rh_audit; delete from rh_copy")
        admin.execute("delete from rh_big; insert into rh_big select g, 'v' from generate_series(1, 500) g")
        admin.execute("delete from orders; insert into orders select * from rh_orders_saved")
        admin.execute("update customers set notes = null where notes is not null")
        admin.execute("select setval('rh_seq', 1, false)")
        admin.execute("analyze")
    env.reviewer.reset()
    yield


def recorded_approvals(env: Env, sql: str) -> list[str | None]:
    """The approval id of every recorded run of `sql` in this module's sessions, oldest first."""

    async def read() -> list[tuple[Any, str | None]]:
        await env.gw.recorder.flush()
        found = []
        for info in await env.gw.store.sessions.list_sessions(limit=1000):
            detail = await env.gw.store.sessions.get_session(info.id)
            assert detail is not None
            found += [(st.started_at, st.approval_id) for st in detail.statements if st.sql == sql]
        return sorted(found, key=lambda item: item[0])

    return [approval for _, approval in env.gw.call(read())]


def _refused(exc: BaseException) -> None:
    assert getattr(exc, "sqlstate", None) == "42501", exc


# ------------------------------------------------------------------ exact counts, parked


EXAMPLES = [
    # (statement, table, rows it changes: customers/orders sizes filled in below)
    ("update customers set notes = 'x' where coalesce(true, false)", "customers", "customers"),
    ("with d as (delete from orders where id is not null returning 1) select count(*) from d", "orders", "orders"),
    (
        "insert into orders (id, customer_id, status, amount) select id, customer_id, status, amount from orders"
        " on conflict (id) do update set status = 'rewritten'",
        "orders",
        "orders",
    ),
    ("update rh_items set v = 'x' where id > 0", "rh_audit", 150),  # 50 items, 3 audit rows each
    ("insert into rh_copy select id, v from rh_items cross join generate_series(1, 3)", "rh_copy", 150),
]


@pytest.mark.parametrize(
    ("text", "table", "changed"), EXAMPLES, ids=["coalesce", "cte-delete", "upsert", "trigger", "insert-select"]
)
def test_over_the_limit_is_parked_with_the_exact_count_and_nothing_changes(
    env: Env, text: str, table: str, changed: Any
) -> None:
    """Each write the text does not bound is counted per table; over 100 rows it is parked
    (never relayed), and the denial leaves every table as it was."""
    rows = env.sizes[changed] if isinstance(changed, str) else changed
    before = env.fingerprint()
    with env.agent(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(text)
        _refused(caught.value)
        assert "denied by the test reviewer" in str(caught.value)
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
    assert env.fingerprint() == before
    (seen,) = env.reviewer.seen
    assert seen.rule == "gateway/blast-radius"
    blast = seen.blast
    assert blast is not None and not blast.estimated
    counts = {change.table.removeprefix("public."): change.rows for change in blast.changes}
    assert counts[table] == rows, counts
    if table == "rh_audit":
        assert counts == {"rh_items": 50, "rh_audit": 150}
    assert f"would change {rows:,}" in blast.text and table in blast.text


def test_card_text_names_rows_of_table(env: Env) -> None:
    with env.agent(autocommit=True) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute("with d as (delete from orders where id is not null returning 1) select count(*) from d")
    (seen,) = env.reviewer.seen
    n = env.sizes["orders"]
    assert f"would change {n:,} of {n:,} rows of orders" in seen.blast.text
    details = seen.blast.details()
    assert details["row_count"] == "rehearsed"
    assert details["rows_changed"] == [{"table": "public.orders", "rows": n, "of": n, "limit": 100}]


def test_under_the_limit_runs_once_and_returns_its_rows(env: Env) -> None:
    with env.agent(autocommit=True) as conn:
        got = conn.execute("update orders set status = 'held' where id <= 7 returning id, status").fetchall()
        assert sorted(got) == [(i, "held") for i in range(1, 8)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert env.reviewer.seen == []
    with env.admin() as admin:
        assert admin.execute("select count(*) from orders where status = 'held'").fetchone() == (7,)


def test_per_table_limit(env: Env) -> None:
    """rh_big may change 1000 rows at once; the default (100) still holds elsewhere."""
    with env.agent(autocommit=True) as conn:
        assert conn.execute("update rh_big set v = 'w' where id is not null").rowcount == 500
    assert env.reviewer.seen == []
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_big where v = 'w'").fetchone() == (500,)


def test_where_less_write_goes_to_review_without_rehearsal(env: Env) -> None:
    before = env.fingerprint()
    with env.agent(autocommit=True) as conn, pytest.raises(psycopg.Error):
        conn.execute("delete from rh_items")
    (seen,) = env.reviewer.seen
    assert seen.blast is None and seen.rule != "gateway/blast-radius"
    assert env.fingerprint() == before


# ------------------------------------------------------------------ approval runs it once


def test_approval_runs_the_statement_once(env: Env) -> None:
    text = "insert into rh_copy select id, v from rh_big"
    env.reviewer.approve.append(text)
    with env.agent(autocommit=True) as conn:
        conn.execute("set application_name = 'x'")  # (something before it in the session)
        assert conn.execute(text).rowcount == 500
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_copy").fetchone() == (500,)
    (seen,) = env.reviewer.seen
    assert [(c.table, c.rows) for c in seen.blast.changes] == [("public.rh_copy", 500)]
    assert recorded_approvals(env, text)[-1] == "test-approval-1"  # the run, under its approval


def test_approval_of_a_cte_delete_deletes_once(env: Env) -> None:
    text = "with d as (delete from orders where id is not null returning 1) select count(*) from d"
    env.reviewer.approve.append(text)
    with env.agent(autocommit=True) as conn:
        assert conn.execute(text).fetchone() == (env.sizes["orders"],)
    with env.admin() as admin:
        assert admin.execute("select count(*) from orders").fetchone() == (0,)


def test_nothing_changed_while_parked(env: Env) -> None:
    """While a reviewer looks at it, the rehearsed write is already rolled back: other
    sessions see no change and are not blocked by its locks."""
    env.reviewer.hold = 1.5
    before = env.fingerprint()
    errors: list[BaseException] = []

    def agent() -> None:
        try:
            with env.agent(autocommit=True) as conn:
                conn.execute("update rh_items set v = 'parked' where id > 0")
        except psycopg.Error as exc:
            errors.append(exc)

    thread = threading.Thread(target=agent)
    thread.start()
    deadline = time.monotonic() + 10
    while not env.reviewer.seen and time.monotonic() < deadline:
        time.sleep(0.02)
    assert env.reviewer.seen
    with env.admin() as admin:
        admin.execute("set lock_timeout = '500ms'")
        admin.execute("select id from rh_items for update nowait")  # no lock left behind
    assert env.fingerprint() == before
    thread.join(10)
    assert errors and getattr(errors[0], "sqlstate", None) == "42501"


# ------------------------------------------------------------------ non-transactional tricks


def test_nextval_trick_does_not_escape_review(env: Env) -> None:
    """The rehearsal is the execution: a statement whose rows depend on a sequence is
    counted as it runs, so it cannot touch nothing when counted and everything later."""
    text = "delete from orders where (select nextval('rh_seq')) > 3"
    with env.agent(autocommit=True) as conn:
        for _ in range(3):
            assert conn.execute(text).rowcount == 0  # nextval 1, 2, 3: nothing, as directly
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(text)  # nextval 4: every row, counted in the run itself
        _refused(caught.value)
    (seen,) = env.reviewer.seen
    assert [(c.table, c.rows) for c in seen.blast.changes] == [("public.orders", env.sizes["orders"])]
    with env.admin() as admin:
        assert admin.execute("select count(*) from orders").fetchone() == (env.sizes["orders"],)
        assert admin.execute("select last_value from rh_seq").fetchone() == (4,)  # (not undone)


# ------------------------------------------------------------------ extended protocol


def test_extended_protocol_asyncpg(env: Env) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(env.dsn(), statement_cache_size=10)
        try:
            assert await conn.execute("update rh_items set v = $1 where id <= $2", "a", 10) == "UPDATE 10"
            got = await conn.fetch("update orders set status = $1 where id <= $2 returning id", "b", 3)
            assert sorted(r["id"] for r in got) == [1, 2, 3]
            with pytest.raises(asyncpg.PostgresError) as caught:
                await conn.execute("update orders set status = $1 where id > $2", "c", 0)
            assert caught.value.sqlstate == "42501"
            async with conn.transaction():
                assert await conn.execute("update rh_items set v = $1 where id <= $2", "t", 5) == "UPDATE 5"
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()

    asyncio.run(main())
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_items where v = 't'").fetchone() == (5,)
        assert admin.execute("select count(*) from orders where status = 'c'").fetchone() == (0,)
        assert admin.execute("select count(*) from rh_audit").fetchone() == (45,)
    (seen,) = env.reviewer.seen
    assert seen.blast.changes[0].rows == env.sizes["orders"]


def test_extended_protocol_psycopg_in_a_transaction(env: Env) -> None:
    before = env.fingerprint()
    with env.agent() as conn:  # psycopg: a transaction, server-side parameters
        assert conn.execute("update rh_big set v = %s where id <= %s", ("p", 10)).rowcount == 10
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("update orders set status = %s where id > %s", ("p", 0))
        _refused(caught.value)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
    assert env.fingerprint() == before
    with env.agent() as conn:
        conn.execute("update rh_big set v = %s where id <= %s", ("q", 10))
        conn.execute("update rh_items set v = %s where id <= %s", ("q", 2))
        conn.commit()
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_big where v = 'q'").fetchone() == (10,)
        assert admin.execute("select count(*) from rh_audit").fetchone() == (6,)


def test_executemany_is_one_unit(env: Env) -> None:
    """asyncpg's executemany pipelines Bind/Execute pairs to one Sync: counted together."""

    async def main() -> None:
        conn = await asyncpg.connect(env.dsn())
        try:
            await conn.executemany("update rh_big set v = $1 where id = $2", [("m", i) for i in range(1, 21)])
            with pytest.raises(asyncpg.PostgresError):
                await conn.executemany(
                    "update orders set status = $1 where customer_id = $2", [("m", i) for i in range(1, 201)]
                )
        finally:
            await conn.close()

    asyncio.run(main())
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_big where v = 'm'").fetchone() == (20,)
        assert admin.execute("select count(*) from orders where status = 'm'").fetchone() == (0,)


# ------------------------------------------------------------------ what the client sees


def _exchange(client: WireClient, *batches: bytes) -> list[tuple[str, bytes]]:
    out = []
    for batch in batches:
        client.send(batch)
        out.extend((msg.kind, msg.body) for msg in client.read(ready=1).messages)
    return out


SEQUENCES = {
    "returning": [query("update orders set status = 'r' where id <= 4 returning id, status, amount")],
    "cte": [query("with u as (update rh_big set v = 'c' where id <= 9 returning id) select count(*) from u")],
    "error": [query("update orders set amount = amount / 0 where id <= 3")],
    "error-in-block": [
        query("begin"),
        query("update orders set amount = amount / 0 where id <= 3"),
        query("select 1"),
        query("rollback"),
    ],
    "in-block": [query("begin"), query("update rh_big set v = 'b' where id <= 3 returning id"), query("commit")],
    "extended": [
        parse("", "update rh_big set v = $1 where id <= $2 returning id") + bind("", "", ["e", "4"]) + execute() + SYNC
    ],
    "extended-error": [
        parse("", "update orders set amount = amount / $1 where id <= 2") + bind("", "", ["0"]) + execute() + SYNC
    ],
    "extended-in-block": [
        query("begin"),
        parse("s1", "update rh_big set v = $1 where id <= $2") + bind("", "s1", ["x", "5"]) + execute() + SYNC,
        bind("", "s1", ["y", "6"]) + execute() + SYNC,
        query("commit"),
    ],
}


@pytest.mark.parametrize("name", sorted(SEQUENCES))
def test_answers_are_what_postgresql_sends(env: Env, name: str) -> None:
    """Under the limit, and when the write fails, the client gets byte for byte what
    PostgreSQL sends for the same messages directly (its ReadyForQuery status included)."""
    batches = SEQUENCES[name]
    with env.direct() as direct:
        expected = _exchange(direct, *batches)
    _pristine_rows(env)
    with env.wire() as through:
        got = _exchange(through, *batches)
    assert env.reviewer.seen == [], [seen.blast for seen in env.reviewer.seen]
    assert got == expected


def _pristine_rows(env: Env) -> None:
    with env.admin() as admin:
        admin.execute("delete from rh_big; insert into rh_big select g, 'v' from generate_series(1, 500) g")
        admin.execute("delete from orders; insert into orders select * from rh_orders_saved")


# ------------------------------------------------------------------ adversity


def test_cancel_during_a_rehearsal_changes_nothing(env: Env) -> None:
    before = env.fingerprint()
    with env.wire() as client:
        client.send(query("update rh_big set v = 'slow' where id <= 50 and pg_sleep(0.05) is not null"))
        time.sleep(0.5)
        assert client.backend_key is not None
        pid, key = client.backend_key
        with socket.create_connection(("127.0.0.1", env.gw.port)) as cancel:
            cancel.sendall(m.build_cancel_request(pid, key))
        got = client.read(ready=1, timeout=15)
        assert [msg.kind for msg in got.messages] == ["E", "Z"], got.messages
        assert dict(m.parse_fields(got.messages[0].body))["C"] == "57014"
        assert got.messages[1].body == b"I"
        client.send(query("select 1"))
        assert [msg.kind for msg in client.read(ready=1).messages] == ["T", "D", "C", "Z"]
    assert env.fingerprint() == before


def test_statement_timeout_during_a_rehearsal(env: Env) -> None:
    before = env.fingerprint()
    with env.agent(autocommit=True) as conn:
        conn.execute("set statement_timeout = 300")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("update rh_big set v = 'slow' where id <= 50 and pg_sleep(0.05) is not null")
        conn.execute("reset statement_timeout")
        assert conn.execute("update rh_big set v = 'fast' where id <= 2").rowcount == 2
    assert env.fingerprint()["rh_big"] != before["rh_big"]
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_big where v = 'slow'").fetchone() == (0,)


def test_disconnect_during_a_rehearsal_rolls_back(env: Env) -> None:
    before = env.fingerprint()
    client = env.wire()
    client.send(query("update rh_big set v = 'gone' where id <= 40 and pg_sleep(0.05) is not null"))
    time.sleep(0.5)
    client.sock.close()
    deadline = time.monotonic() + 10
    with env.admin() as admin:
        while time.monotonic() < deadline:
            busy = admin.execute(
                "select count(*) from pg_stat_activity where datname = current_database() and query like '%gone%'"
                " and pid <> pg_backend_pid()"
            ).fetchone()
            if busy == (0,):
                break
            time.sleep(0.1)
    assert env.fingerprint() == before


def test_concurrent_rehearsals_do_not_deadlock(env: Env) -> None:
    """Two sessions rehearsing overlapping updates: the second waits for the first's row
    locks, as it would directly, and both finish. The rows are locked in id order (FOR
    UPDATE in a sub-select): a plain scan's order follows where each row version lies, so
    two scans can lock in different orders and deadlock directly too; the rehearsal must
    add no lock of its own that could."""
    results: list[Any] = []

    def writer(tag: str) -> None:
        try:
            with env.agent(autocommit=True) as conn:
                for _ in range(5):
                    results.append(
                        conn.execute(
                            "update rh_big set v = %s where id in"
                            " (select id from rh_big where id <= 60 order by id for update)"
                            " and pg_sleep(0.001) is not null",
                            (tag,),
                        ).rowcount
                    )
        except Exception as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=writer, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [60] * 10


def test_fallback_estimate_for_transaction_control(env: Env) -> None:
    """A Query holding BEGIN/COMMIT cannot be rehearsed (the gateway cannot own its
    transaction): the planner's estimate decides, marked as such on the card."""
    before = env.fingerprint()
    with env.agent(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("begin; update orders set status = 'est' where id is not null; commit")
        _refused(caught.value)
        conn.execute("update orders set status = 'fine' where id = 1; select 1")
    (seen,) = env.reviewer.seen
    assert seen.blast.estimated and "planner estimate" in seen.blast.text
    assert seen.blast.changes[0].rows >= 100
    after = env.fingerprint()
    assert {k: v for k, v in after.items() if k != "orders"} == {k: v for k, v in before.items() if k != "orders"}
    with env.admin() as admin:
        assert admin.execute("select count(*) from orders where status = 'est'").fetchone() == (0,)
    with env.agent(autocommit=True) as conn:
        conn.execute("begin; update rh_big set v = 'small' where id <= 2; commit")  # rh_big may change 1000
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_big where v = 'small'").fetchone() == (2,)


def test_fallback_cannot_be_talked_down(env: Env) -> None:
    """The planner misjudges `s || '' = s` (a few rows of 406): not rehearsable, the
    write is held to its table's size, an UPDATE's upper bound, and parked."""
    with env.agent(autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("begin; update orders set status = 'g' where status || '' = status; commit")
        _refused(caught.value)
    (seen,) = env.reviewer.seen
    (change,) = seen.blast.changes
    assert change.rows < 100 and change.bound == env.sizes["orders"], change
    assert f"up to {env.sizes['orders']:,}" in seen.blast.text
    with env.admin() as admin:
        assert admin.execute("select count(*) from orders where status = 'g'").fetchone() == (0,)


def test_fallback_on_a_table_never_analysed(env: Env) -> None:
    """ANALYZE needs ownership: the gateway says it could not, and parks (no bound)."""
    with env.admin() as admin:
        admin.execute("drop table if exists rh_fresh")
        admin.execute("create table rh_fresh as select g as id from generate_series(1, 300) g")
        admin.execute("grant select, delete on rh_fresh to public")
    try:
        with env.agent(autocommit=True) as conn:
            with pytest.raises(psycopg.Error):
                conn.execute("begin; delete from rh_fresh where id > 0; commit")
        (seen,) = env.reviewer.seen
        assert seen.blast.estimated and "never analysed and this role may not analyse it" in seen.blast.text
        with env.admin() as admin:
            assert admin.execute("select count(*) from rh_fresh").fetchone() == (300,)
    finally:
        with env.admin() as admin:
            admin.execute("drop table rh_fresh")


def test_pipelined_queries_are_rehearsed_one_at_a_time(env: Env) -> None:
    with env.wire() as client:
        client.send(
            query("update rh_big set v = '1' where id <= 3"),
            query("update orders set status = 'p' where id is not null"),
            query("update rh_big set v = '2' where id <= 4"),
        )
        got = client.read(ready=3)
    kinds = [(msg.kind, msg.body) for msg in got.messages if msg.kind in "CEZ"]
    assert kinds[0] == ("C", b"UPDATE 3\0")
    assert kinds[2][0] == "E" and dict(m.parse_fields(kinds[2][1]))["C"] == "42501"
    assert kinds[4] == ("C", b"UPDATE 4\0")
    with env.admin() as admin:
        assert admin.execute("select count(*) from orders where status = 'p'").fetchone() == (0,)
        assert admin.execute("select count(*) from rh_big where v = '2'").fetchone() == (4,)


def test_bind_alone_then_execute_later_is_judged_again(env: Env) -> None:
    """A Bind rehearsed alone counts nothing: its Execute in a later batch (a named portal,
    inside a transaction) must not run on that count."""
    before = env.fingerprint()
    with env.wire() as client:
        client.send(query("begin"))
        client.read(ready=1)
        client.send(parse("s1", "update orders set status = 'bp' where id > $1") + bind("p1", "s1", ["0"]) + SYNC)
        assert [msg.kind for msg in client.read(ready=1).messages] == ["1", "2", "Z"]
        client.send(execute("p1") + SYNC)
        got = client.read(ready=1)
        kinds = [msg.kind for msg in got.messages]
        assert kinds == ["E", "Z"], got.messages
        assert dict(m.parse_fields(got.messages[0].body))["C"] == "42501"
        client.send(query("commit"))
        client.read(ready=1)
    assert env.fingerprint() == before
    (seen,) = env.reviewer.seen
    assert seen.blast is not None and seen.blast.estimated


def test_the_record_holds_what_happened(env: Env) -> None:
    """A kept write is recorded once, with its rows; a parked one is not recorded as run (the
    refusal is, and an approved run is)."""
    token = env.gw.issue(RESOURCE, principal="agent:recorded-rehearsal")
    with psycopg.connect(env.gw.dsn(RESOURCE, token=token), autocommit=True) as conn:
        conn.execute("update rh_big set v = 'kept' where id <= 3")
        with pytest.raises(psycopg.Error):
            conn.execute("update orders set status = 'parked' where id is not null")

    async def fetch() -> Any:
        sessions = await env.gw.store.sessions.list_sessions(limit=200)
        mine = [s for s in sessions if s.principal == "agent:recorded-rehearsal"]
        return await env.gw.store.sessions.get_session(mine[0].id)

    deadline = time.monotonic() + 10
    while True:
        env.gw.flush()
        detail = env.gw.call(fetch())
        if detail.session.ended_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    recorded = [(s.sql, s.decision, s.rows) for s in detail.statements]
    assert ("update rh_big set v = 'kept' where id <= 3", "allow", 3) in recorded
    parked = [r for r in recorded if "parked" in r[0]]
    assert [r[1] for r in parked] == ["review"], recorded


def test_a_result_too_large_to_hold_is_parked(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers are held until the count is known; past the cap they cannot be, and the
    write is treated as over its limit (fail closed)."""
    import proxy.rehearsal

    monkeypatch.setattr(proxy.rehearsal, "MAX_HELD_BYTES", 10_000)
    before = env.fingerprint()
    with env.agent(autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute("update rh_big set v = repeat('x', 100) where id <= 500 returning v")  # 500 < 1000
    _refused(caught.value)
    (seen,) = env.reviewer.seen
    assert "larger than the gateway holds" in seen.blast.text
    assert env.fingerprint() == before


def test_approved_extended_unit_runs_once_inside_a_transaction(env: Env) -> None:
    """Parked from inside the client's transaction (rolled back to the gateway's savepoint),
    approved, it runs once in that same transaction, which the client then commits."""
    text = "insert into rh_copy (id, v) select id, v from rh_big where id > %s"
    env.reviewer.approve.append(text.replace("%s", "$1"))
    with env.agent() as conn:  # psycopg: a transaction, server-side parameters
        conn.execute("update rh_items set v = %s where id <= %s", ("tx", 2))
        assert conn.execute(text, (0,)).rowcount == 500
        conn.commit()
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_copy").fetchone() == (500,)
        assert admin.execute("select count(*) from rh_items where v = 'tx'").fetchone() == (2,)
    (seen,) = env.reviewer.seen
    assert [(c.table, c.rows) for c in seen.blast.changes] == [("public.rh_copy", 500)]

    async def main() -> None:
        conn = await asyncpg.connect(env.dsn())
        try:
            sql_text = "delete from rh_copy where id > $1"
            env.reviewer.approve.append(sql_text)
            assert await conn.execute(sql_text, 0) == "DELETE 500"
            assert recorded_approvals(env, sql_text)[-1] == "test-approval-2"  # an approved unit
        finally:
            await conn.close()

    asyncio.run(main())
    with env.admin() as admin:
        assert admin.execute("select count(*) from rh_copy").fetchone() == (0,)


# ------------------------------------------------------------------ found by red-teaming


def _grant_all(admin: psycopg.Connection[Any], *tables: str) -> None:
    for table in tables:
        admin.execute(sql.SQL("grant all on {} to public").format(sql.Identifier(table)))


def test_a_write_the_fallback_cannot_explain_is_not_hidden_behind_a_small_one(env: Env) -> None:
    """A string with BEGIN/COMMIT falls back to the planner; a small write beside an
    ``EXPLAIN ANALYZE <write>`` (or ``EXECUTE p``) must not stand for the whole string."""
    before = env.fingerprint()
    with env.agent(autocommit=True) as conn:
        for text in (
            "begin; update orders set status = 'a' where id = 4;"
            " explain analyze update orders set status = 'zz' where id is not null; commit",
        ):
            with pytest.raises(psycopg.Error) as caught:
                conn.execute(text)
            _refused(caught.value)
    assert env.fingerprint() == before


def test_the_fallback_bound_does_not_hold_over_cascades(env: Env) -> None:
    """A foreign key that cascades writes rows the plan does not show: one row of the parent
    by its key, 150 of the child."""
    with env.admin() as admin:
        admin.execute("create table rh_par (id int primary key)")
        admin.execute("create table rh_kid (pid int references rh_par on delete cascade on update cascade)")
        admin.execute("insert into rh_par values (1); insert into rh_kid select 1 from generate_series(1, 150)")
        admin.execute("analyze rh_par; analyze rh_kid")
        _grant_all(admin, "rh_par", "rh_kid")
    try:
        with env.agent(autocommit=True) as conn:
            for text in (
                "begin; delete from rh_par where id = 1; commit",
                "begin; update rh_par set id = 3 where id = 1; commit",
            ):
                with pytest.raises(psycopg.Error) as caught:
                    conn.execute(text)
                _refused(caught.value)
        with env.admin() as admin:
            assert admin.execute("select count(*) from rh_kid where pid = 1").fetchone() == (150,)
    finally:
        with env.admin() as admin:
            admin.execute("drop table if exists rh_kid, rh_par")


def test_partitions_count_as_their_partitioned_table(env: Env) -> None:
    """Three partitions of 60 rows each are one table of 180 for the limit (100)."""
    with env.admin() as admin:
        admin.execute("create table rh_pt (id int, v text) partition by range (id)")
        for i in range(3):
            admin.execute(f"create table rh_pt_{i} partition of rh_pt for values from ({i * 60}) to ({i * 60 + 60})")
        admin.execute("insert into rh_pt select g, 'v' from generate_series(0, 179) g")
        _grant_all(admin, "rh_pt", "rh_pt_0", "rh_pt_1", "rh_pt_2")
    try:
        with env.agent(autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("update rh_pt set v = 'zz' where id is not null")
            _refused(caught.value)
        assert any("180" in seen.blast.text and "rh_pt" in seen.blast.text for seen in env.reviewer.seen)
        with env.admin() as admin:
            assert admin.execute("select count(*) from rh_pt where v = 'zz'").fetchone() == (0,)
    finally:
        with env.admin() as admin:
            admin.execute("drop table if exists rh_pt")
