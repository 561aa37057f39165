"""Result recording in the relay machine: rows as the client saw them, capped, off by default."""

from __future__ import annotations

import base64
import struct

from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.records import StatementEvent
from proxy.results import ResultLimits
from tests.proxy.test_machine import NameMasker, classify, complete, row_description, sent


def machine(  # type: ignore[no-untyped-def]
    events: list[StatementEvent], *, masker=None, limits: ResultLimits | None = ResultLimits()
):
    return SessionMachine(
        classify=classify,
        masker=masker,
        on_statement=events.append,
        client_user="agent",
        upstream_user="v-token-rw-123",
        record_results=limits,
    )


def test_masked_values_are_recorded_per_result_set():
    events: list[StatementEvent] = []
    mach = machine(events, masker=NameMasker())
    mach.feed_client(m.query_message("select id, email from customers; select 2 as two"))
    sent(mach)
    mach.feed_server(
        row_description(("id", 23), ("email", 25))
        + m.data_row([b"1", b"jane@example.com"])
        + m.data_row([b"2", None])
        + complete("SELECT 2")
        + row_description(("two", 23))
        + m.data_row([b"2"])
        + complete("SELECT 1")
        + m.ready_for_query(b"I")
    )
    out = sent(mach, "out_client")
    assert m.parse_data_row(out[1][1]) == [b"1", b"j***@example.com"]
    assert events[0].results == [
        {
            "columns": ["id", "email"],
            "rows": [["1", "j***@example.com"], ["2", "j***@example.com"]],
            "truncated": False,
        },
        {"columns": ["two"], "rows": [["2"]], "truncated": False},
    ]
    assert "jane@example.com" not in repr(events[0].results)


def test_caps_on_rows_and_bytes_truncate_and_say_so():
    events: list[StatementEvent] = []
    mach = machine(events, limits=ResultLimits(max_rows=2, max_bytes=1000))
    mach.feed_client(m.query_message("select n from t"))
    sent(mach)
    mach.feed_server(
        row_description(("n", 23)) + b"".join(m.data_row([str(i).encode()]) for i in range(5))
        + complete("SELECT 5") + m.ready_for_query(b"I")
    )
    assert events[0].rows == 5
    assert events[0].results == [{"columns": ["n"], "rows": [["0"], ["1"]], "truncated": True}]

    mach2 = machine(events, limits=ResultLimits(max_rows=100, max_bytes=10))
    mach2.feed_client(m.query_message("select s from t"))
    sent(mach2)
    mach2.feed_server(
        row_description(("s", 25)) + m.data_row([b"abcdef"]) + m.data_row([b"ghijkl"])
        + complete("SELECT 2") + m.ready_for_query(b"I")
    )
    assert events[1].results == [{"columns": ["s"], "rows": [["abcdef"]], "truncated": True}]


def test_binary_results_of_an_undescribed_portal_are_recorded_with_their_oid():
    events: list[StatementEvent] = []
    mach = machine(events)  # no masker: recording alone makes the gateway describe the portal
    mach.feed_client(m.parse_message("s", "select n from t") + m.SYNC)
    sent(mach)
    mach.feed_server(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    sent(mach, "out_client")
    bind = m.frame(b"B", m.cstr("") + m.cstr("s") + b"\0\0\0\0" + struct.pack("!hh", 1, 1))
    mach.feed_client(bind + m.frame(b"E", m.cstr("") + b"\0\0\0\0") + m.SYNC)
    assert [chr(k) for k, _ in sent(mach)] == ["B", "D", "E", "S"]
    value = struct.pack("!i", 42)
    mach.feed_server(
        m.frame(b"2", b"") + row_description(("n", 23)) + m.data_row([value])
        + complete("SELECT 1") + m.ready_for_query(b"I")
    )
    placeholder = f"<binary oid=23 base64={base64.b64encode(value).decode()}>"
    assert events[0].results == [{"columns": ["n"], "rows": [[placeholder]], "truncated": False}]


def test_off_by_default_leaves_the_row_path_alone():
    events: list[StatementEvent] = []
    mach = machine(events, masker=NameMasker(), limits=None)
    mach.feed_client(m.query_message("select id, email from customers"))
    sent(mach)
    mach.feed_server(row_description(("id", 23), ("email", 25)))
    head = mach._inflight[0]
    # The masker's own plan, not a recording wrapper: DataRows cost what they did before.
    assert type(head.plan).__name__ == "Plan" and head.capture is None
    mach.feed_server(m.data_row([b"1", b"jane@example.com"]) + complete("SELECT 1") + m.ready_for_query(b"I"))
    assert events[0].results is None
    # Without a masker and without recording, an undescribed portal gets no injected Describe.
    plain = machine(events, limits=None)
    plain.feed_client(m.parse_message("s", "select 1") + m.SYNC)
    sent(plain)
    plain.feed_server(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    bind = m.frame(b"B", m.cstr("") + m.cstr("s") + b"\0\0\0\0\0\0")
    plain.feed_client(bind + m.frame(b"E", m.cstr("") + b"\0\0\0\0") + m.SYNC)
    assert [chr(k) for k, _ in sent(plain)] == ["B", "E", "S"]
