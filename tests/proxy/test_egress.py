"""Egress limits in the relay machine: the cut, what the client sees after it, session budgets."""

from __future__ import annotations

from proxy.egress import EgressLimits
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.records import StatementEvent
from tests.proxy.test_machine import classify, complete, row_description, sent

BIND = m.frame(b"B", m.cstr("") + m.cstr("") + b"\0\0\0\0\0\0")
EXECUTE = m.frame(b"E", m.cstr("") + b"\0\0\0\0")


def machine(events: list[StatementEvent], cuts: list[str], **limits: int) -> SessionMachine:
    return SessionMachine(
        classify=classify, masker=None, on_statement=events.append, client_user="agent",
        upstream_user="v-token-rw-123", egress=EgressLimits(**limits), on_egress_limit=cuts.append, resource="demo",
    )


def rows(n: int) -> bytes:
    return b"".join(m.data_row([str(i).encode()]) for i in range(n))


def kinds(mach: SessionMachine) -> str:
    return "".join(chr(k) for k, _ in sent(mach, "out_client"))


def test_simple_query_cut_at_the_row_limit_then_usable():
    events: list[StatementEvent] = []
    cuts: list[str] = []
    mach = machine(events, cuts, max_rows_per_statement=3)
    mach.feed_client(m.query_message("select n from t; select 1"))
    sent(mach)
    mach.feed_server(
        row_description(("n", 23)) + rows(10) + complete("SELECT 10")
        + row_description(("x", 23)) + rows(1) + complete("SELECT 1") + m.ready_for_query(b"I")
    )
    out = sent(mach, "out_client")
    assert "".join(chr(k) for k, _ in out) == "TDDDEZ"
    assert dict(m.parse_fields(out[4][1]))["C"] == "54000"
    assert "3 rows per statement on resource 'demo'" in dict(m.parse_fields(out[4][1]))["M"]
    assert (events[0].rows, events[0].error_sqlstate, cuts) == (3, "54000", ["max_rows_per_statement"])
    mach.feed_client(m.query_message("select n from t"))
    sent(mach)
    mach.feed_server(row_description(("n", 23)) + rows(2) + complete("SELECT 2") + m.ready_for_query(b"I"))
    assert kinds(mach) == "TDDCZ"
    assert events[1].error_sqlstate is None


def test_pipelined_batch_after_a_cut_answers_like_an_error():
    events: list[StatementEvent] = []
    cuts: list[str] = []
    mach = machine(events, cuts, max_bytes_per_statement=30)
    batch = m.parse_message("", "select n from t") + BIND + EXECUTE
    mach.feed_client(batch + m.parse_message("", "select 2") + BIND + EXECUTE + m.SYNC)
    sent(mach)
    mach.feed_server(
        m.frame(b"1", b"") + m.frame(b"2", b"") + rows(5) + complete("SELECT 5")
        + m.frame(b"1", b"") + m.frame(b"2", b"") + rows(1) + complete("SELECT 1") + m.ready_for_query(b"I")
    )
    assert kinds(mach) == "12DDE" + "Z"  # 12-byte DataRows: two fit in 30 bytes
    assert [e.error_sqlstate for e in events] == ["54000", None]  # the second ran upstream: recorded
    assert events[0].rows == 2


def test_client_messages_before_sync_are_dropped_after_a_cut():
    events: list[StatementEvent] = []
    mach = machine(events, [], max_rows_per_statement=1)
    mach.feed_client(m.parse_message("", "select n from t") + BIND + EXECUTE + m.frame(b"H", b""))
    sent(mach)
    mach.feed_server(m.frame(b"1", b"") + m.frame(b"2", b"") + rows(3) + complete("SELECT 3"))
    assert kinds(mach) == "12DE"
    mach.feed_client(m.parse_message("", "select 2") + BIND + EXECUTE + m.SYNC)
    assert [chr(k) for k, _ in sent(mach)] == ["S"]  # as Postgres would skip them after an error
    mach.feed_server(m.ready_for_query(b"I"))
    assert kinds(mach) == "Z"


def test_session_row_budget_spans_statements():
    events: list[StatementEvent] = []
    cuts: list[str] = []
    mach = machine(events, cuts, max_rows_per_session=4)
    for expected in ("TDDDCZ", "TDEZ", "TEZ"):
        mach.feed_client(m.query_message("select n from t"))
        sent(mach)
        mach.feed_server(row_description(("n", 23)) + rows(3) + complete("SELECT 3") + m.ready_for_query(b"I"))
        assert kinds(mach) == expected
    assert cuts == ["max_rows_per_session", "max_rows_per_session"]
    assert [e.rows for e in events] == [3, 1, 0]
