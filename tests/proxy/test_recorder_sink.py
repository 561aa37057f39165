"""proxy.wiring.RecorderSink: which recorded statement carries a review's approval id."""

from __future__ import annotations

from typing import Any, cast

from broker.policy.model import Decision, Verdict
from broker.recorder import Recorder
from proxy.records import StatementEvent
from proxy.wiring import RecorderSink


class Captured:
    def __init__(self) -> None:
        self.records: list[Any] = []

    def record_statement(self, record: Any) -> None:
        self.records.append(record)


def event(sql: str) -> StatementEvent:
    return StatementEvent(sql, Verdict(Decision.REVIEW, "agent-safe/delete", "deletes rows"), 0.0, 0.0, 1, 0, None)


def sink() -> tuple[RecorderSink, Captured]:
    captured = Captured()
    return RecorderSink(cast(Recorder, captured)), captured


def test_the_statement_released_by_a_review_carries_its_id_once() -> None:
    rs, captured = sink()
    rs.reviewed("s1", sql="delete from t", approval_id="a-1")
    rs.statement("s2", event("delete from t"))  # another session's statement: not it
    rs.statement("s1", event("delete from t"))
    rs.statement("s1", event("delete from t"))  # a later run of the same text: not it either
    assert [r.approval_id for r in captured.records] == [None, "a-1", None]


def test_a_review_whose_statement_the_server_skipped_leaves_no_id_behind() -> None:
    rs, captured = sink()
    rs.reviewed("s1", sql="delete from t", approval_id="a-1")
    rs.reviewed("s1", sql="delete from t", approval_id=None)  # the machine: skipped, never run
    rs.statement("s1", event("delete from t"))
    assert captured.records[0].approval_id is None
