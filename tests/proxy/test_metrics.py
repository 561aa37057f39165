"""jitgate_session_desync_total: counted once for each session the gateway ends because the
server said something its model of the session did not expect, and for nothing else."""

from __future__ import annotations

import pytest

from broker import metrics
from proxy.exceptions import SessionDesync
from proxy.protocol import messages as m
from tests.proxy.test_session_model import Z, complete, machine, row_description, sent


def desyncs() -> float:
    return metrics.REGISTRY.get_sample_value("jitgate_session_desync_total") or 0.0


def test_a_desync_is_counted_once_and_nothing_else_is() -> None:
    before = desyncs()
    # An ordinary answer, a harmless ParameterStatus and an error: nothing counted.
    mach = machine()
    mach.feed_client(m.query_message("select 1"))
    sent(mach)
    mach.feed_server(row_description(("x", 23)) + m.data_row([b"1"]) + complete("SELECT 1")
                     + m.parameter_status("application_name", "x") + Z())
    mach.feed_client(m.query_message("select 1/0"))
    sent(mach)
    mach.feed_server(m.error_response("22012", "division by zero") + Z())
    assert desyncs() == before

    # An answer nothing asked for: one desync.
    mach = machine()
    mach.feed_client(m.query_message("select 1"))
    sent(mach)
    with pytest.raises(SessionDesync):
        mach.feed_server(complete("SELECT 1") + Z() + Z())
    assert desyncs() == before + 1

    # A pinned lexing setting changed by the server: one more.
    mach = machine()
    mach.feed_client(m.query_message("select 1"))
    sent(mach)
    with pytest.raises(SessionDesync):
        mach.feed_server(complete("SELECT 1") + m.parameter_status("standard_conforming_strings", "off") + Z())
    assert desyncs() == before + 2
