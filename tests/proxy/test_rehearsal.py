"""The pure parts of the rehearsal (proxy/rehearsal.py): which writes are rehearsed, the
limits a policy file gives them, the card's text, and the planner fallback's plan reading.
The wire behaviour is tested end to end in tests/e2e/test_rehearsal.py."""

from __future__ import annotations

import json

import pytest

from broker.policy import PolicyEngine
from broker.policy.model import RowLimits
from proxy.rehearsal import AFTER, BEFORE, BlastRadius, Rehearsal, TableChange, limit_for
from proxy.side_channel import write_rows

UNBOUNDED = [
    "update customers set notes = 'x' where coalesce(true, false)",
    "with d as (delete from orders where id is not null returning 1) select count(*) from d",
    "insert into orders (id, customer_id, status, amount) select id, customer_id, status, amount from orders"
    " on conflict (id) do update set status = 'x'",
    "insert into orders (id, customer_id, status, amount) values (1, 1, 'a', 1)"
    " on conflict (id) do update set status = 'x'",
    "insert into t select 1",
    "delete from orders where (select nextval('s')) > 5",
    "explain analyze update t set a = 1 where b",
    "select 1; update t set a = 1 where b = 2",
]
BOUNDED = [
    "insert into t (a) values (1), (2)",
    "insert into t default values",
    "insert into t (a) values (1) on conflict do nothing",
    "select * from t where a = 1",
    "explain update t set a = 1 where b",
]


@pytest.mark.parametrize("sql", UNBOUNDED)
def test_unbounded_writes_are_rehearsed(sql: str) -> None:
    assert PolicyEngine.preset("agent-safe").classify(sql).rehearse == RowLimits()


@pytest.mark.parametrize("sql", BOUNDED)
def test_bounded_statements_are_not(sql: str) -> None:
    assert PolicyEngine.preset("agent-safe").classify(sql).rehearse is None


def test_limits_from_the_policy_file() -> None:
    engine = PolicyEngine.from_yaml(
        "max_rows_without_review: 5\n"
        "max_rows_per_table: {orders: 1000, 'staging.*': 7}\n"
        "resources:\n  prod: {max_rows_without_review: 2}\n"
    )
    top = engine.classify("update t set a = 1 where b")
    assert top.rehearse == RowLimits(5, (("orders", 1000), ("staging.*", 7)))
    prod = engine.classify("update t set a = 1 where b", "prod")
    assert prod.rehearse == RowLimits(2, (("orders", 1000), ("staging.*", 7)))
    limits = prod.rehearse
    assert limit_for(limits, "public.orders") == 1000
    assert limit_for(limits, "staging.load") == 7
    assert limit_for(limits, "public.customers") == 2


def test_bad_limit_is_reported_with_its_key() -> None:
    from broker.policy import PolicyConfigError

    with pytest.raises(PolicyConfigError) as caught:
        PolicyEngine.from_yaml("max_rows_without_review: -1\n")
    assert "max_rows_without_review" in str(caught.value)


def test_prepared_write_executed_by_name_is_rehearsed() -> None:
    from proxy.decide import Context, decide

    engine = PolicyEngine.preset("agent-safe")
    inner = engine.classify("prepare p as update t set a = 1 where b")

    class Names:
        def prepared(self, name: str):  # noqa: ANN201
            return inner.prepares[0][1]

        def cursor_rows(self, name: str):  # noqa: ANN201
            return None

    verdict = decide(engine.classify("execute p"), Context(names=Names()))
    assert verdict.rehearse is not None


def test_card_text() -> None:
    blast = BlastRadius((TableChange("public.orders", 406, 406, 100), TableChange("public.audit", 3, None, 100)))
    assert blast.over
    assert blast.text == "would change 406 of 406 rows of orders; would change 3 rows of audit"
    details = blast.details()
    assert details["row_count"] == "rehearsed"
    assert details["rows_changed"][0] == {"table": "public.orders", "rows": 406, "of": 406, "limit": 100}
    estimated = BlastRadius((TableChange("public.orders", 400, 406, 100),), estimated=True, note="not rehearsed: x")
    assert estimated.text == "would change about 400 of 406 rows of orders (planner estimate; not rehearsed: x)"
    talked_down = TableChange("public.orders", 2, 406, 100, bound=406)
    assert talked_down.over and talked_down.describe(estimated=True).endswith("orders, up to 406")


def test_counts_are_differences_per_table() -> None:
    rehearsal = Rehearsal(b"T", 0, "", None, b"")  # type: ignore[arg-type]
    rehearsal.row([b"10", b"500", None, None, None], 1)  # BEFORE: 500 already pending
    rehearsal.row([b"10", b"906", b"public", b"orders", b"406"], 2)  # AFTER
    rehearsal.row([b"11", b"3", b"public", b"audit", b"-1"], 2)
    blast = rehearsal.blast(RowLimits(100))
    assert [(c.table, c.rows, c.size) for c in blast.changes] == [("public.audit", 3, -1), ("public.orders", 406, 406)]
    rehearsal.row([b"0", b"0", None, None, None], 2)
    assert rehearsal.not_counting


def test_own_queries_cannot_be_redirected_by_search_path() -> None:
    """A session may put its own operators ahead of pg_catalog's: every one is qualified."""
    for text in (BEFORE, AFTER):
        assert " + " not in text and " > " not in text and " = " not in text
        assert "pg_catalog.pg_stat_xact_user_tables" in text


def _plan(plan: dict) -> bytes:
    return json.dumps([{"Plan": plan}]).encode()


def test_write_rows_reads_modify_table_nodes() -> None:
    scan = {"Node Type": "Seq Scan", "Plan Rows": 406}
    update = {"Node Type": "ModifyTable", "Relation Name": "orders", "Plans": [scan]}
    assert write_rows(_plan(update)) == (406, "orders")
    cte = {
        "Node Type": "Aggregate", "Plan Rows": 1,
        "Plans": [{**update, "Parent Relationship": "InitPlan"}, {"Node Type": "CTE Scan", "Plan Rows": 406}],
    }
    assert write_rows(_plan(cte)) == (406, "orders")  # not the aggregate's one row
    assert write_rows(_plan({"Node Type": "Result", "Plan Rows": 1})) is None
    assert write_rows(b"not json") is None


def test_approval_card_details() -> None:
    from broker.policy.model import Decision, Verdict
    from proxy.approvals import _details

    verdict = Verdict(Decision.REVIEW, "gateway/blast-radius", "x", tables=("orders",))
    blast = BlastRadius((TableChange("public.orders", 406, 406, 100),))
    details = _details(verdict, None, blast)
    assert details["blast_radius"] == "would change 406 of 406 rows of orders"
    assert details["row_count"] == "rehearsed" and "row_estimate" not in details
    guessed = BlastRadius((TableChange("public.orders", 380, 406, 100),), estimated=True, note="not rehearsed: y")
    details = _details(verdict, None, guessed)
    assert details["row_count"] == "estimated" and details["row_estimate"] == 380
    assert "planner estimate" in str(details["blast_radius"])


def test_write_nodes_name_a_single_key_lookup() -> None:
    """The fallback's bound: a write whose rows come from one equality on an index may be
    bounded by one row (if that index is unique on that column alone: asked on the side
    channel); anything else is bounded by its table."""
    from proxy.side_channel import write_nodes

    def update(cond: str, node: str = "Index Scan") -> bytes:
        scan = {"Node Type": node, "Index Name": "orders_pkey", "Index Cond": cond, "Plan Rows": 1}
        return _plan({"Node Type": "ModifyTable", "Operation": "Update", "Relation Name": "orders", "Plans": [scan]})

    assert write_nodes(update("(id = 4)")) == [("Update", "orders", 1, "orders_pkey")]
    assert write_nodes(update("(id = '4'::integer)")) == [("Update", "orders", 1, "orders_pkey")]
    for loose in ("(id > 4)", "((id = 4) OR (id = 5))", "(id = ANY ('{1,2}'::integer[]))"):
        assert write_nodes(update(loose)) == [("Update", "orders", 1, None)], loose
    assert write_nodes(update("(id = 4)", node="Bitmap Heap Scan")) == [("Update", "orders", 1, None)]
