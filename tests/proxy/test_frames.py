from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocol import messages as m
from proxy.protocol.frames import (
    ProtocolViolation,
    message_length,
    split_messages,
    startup_frame_length,
)


def test_split_messages_keeps_incomplete_tail():
    data = m.query_message("select 1") + m.SYNC + m.query_message("select 2")[:-3]
    msgs, used = split_messages(data)
    assert [k for k, _ in msgs] == [ord("Q"), ord("S")]
    assert msgs[0][1] == b"select 1\0"
    assert used == len(m.query_message("select 1")) + len(m.SYNC)


def test_declared_gigabyte_is_refused_before_allocation():
    header = b"Q" + struct.pack("!I", 1 << 30)
    with pytest.raises(ProtocolViolation) as err:
        message_length(header, 0, 64 * 1024 * 1024)
    assert err.value.sqlstate == "54000"


def test_length_below_four_is_a_violation():
    with pytest.raises(ProtocolViolation):
        message_length(b"Q\0\0\0\x02", 0, 1024)


def test_startup_length_bounds():
    assert startup_frame_length(b"\0\0") is None
    with pytest.raises(ProtocolViolation):
        startup_frame_length(struct.pack("!I", 4))
    with pytest.raises(ProtocolViolation):
        startup_frame_length(struct.pack("!I", 1 << 20))


@given(st.binary(max_size=300))
def test_split_messages_never_raises_anything_but_violation(data):
    try:
        msgs, used = split_messages(data, max_bytes=1 << 16)
    except ProtocolViolation:
        return
    assert used <= len(data)
    assert sum(len(body) + 5 for _, body in msgs) == used


@given(st.lists(st.tuples(st.sampled_from(b"QPBDESCHX"), st.binary(max_size=40)), max_size=8))
def test_framing_round_trip(items):
    data = b"".join(m.frame(bytes([k]), body) for k, body in items)
    msgs, used = split_messages(data)
    assert used == len(data)
    assert msgs == [(k, body) for k, body in items]
