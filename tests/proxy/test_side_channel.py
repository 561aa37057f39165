"""The side channel's pure parts: which statements get an estimate, and reading the plan."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.side_channel import copy_columns_query, plan_rows, wants_estimate

PLAN = (
    b'[{"Plan": {"Node Type": "ModifyTable", "Plan Rows": 0, '
    b'"Plans": [{"Node Type": "Seq Scan", "Plan Rows": 42}]}}]'
)


def test_a_write_is_estimated_by_the_rows_its_modify_table_reads():
    assert plan_rows(PLAN) == 42


def test_a_read_is_estimated_by_its_top_node():
    assert plan_rows(b'[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 7}}]') == 7


def test_an_unreadable_plan_has_no_estimate():
    for bad in (None, b"", b"[]", b'[{"Plan": {}}]', b"not json"):
        assert plan_rows(bad) is None


def test_only_single_writes_are_estimated():
    assert wants_estimate("/* c */ delete from t", 1)
    assert wants_estimate("with x as (select 1) update t set a = 1", 1)
    assert not wants_estimate("select 1", 1)
    assert not wants_estimate("delete from t; delete from u", 2)


def test_copy_columns_are_asked_for_without_running_the_copy():
    assert copy_columns_query(SimpleNamespace(query="select a from t", relation=None)) == (
        "SELECT * FROM (select a from t) AS q LIMIT 0"
    )
    assert copy_columns_query(SimpleNamespace(query=None, relation="public.t")) == "SELECT * FROM public.t LIMIT 0"
    assert copy_columns_query(SimpleNamespace(query=None, relation=None)) is None
