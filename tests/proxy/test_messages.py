from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.protocol import messages as m
from proxy.protocol.frames import CANCEL_REQUEST_CODE, ProtocolViolation


def test_startup_message_round_trip():
    packet = m.build_startup_message({"user": "agent", "database": "demo", "application_name": "x"})
    parsed = m.parse_startup_packet(packet)
    assert isinstance(parsed, m.StartupMessage)
    assert parsed.params == {"user": "agent", "database": "demo", "application_name": "x"}


def test_startup_without_user_is_refused():
    packet = m.build_startup_message({"database": "demo"})
    with pytest.raises(ProtocolViolation) as err:
        m.parse_startup_packet(packet)
    assert err.value.sqlstate == "28000"


def test_ssl_and_cancel_requests():
    assert isinstance(m.parse_startup_packet(m.SSL_REQUEST), m.SSLRequest)
    cancel = m.parse_startup_packet(m.build_cancel_request(42, b"\x01\x02\x03\x04"))
    assert cancel == m.CancelRequest(42, b"\x01\x02\x03\x04")
    # protocol 3.2: longer keys are allowed, up to 256 bytes
    assert m.parse_startup_packet(m.build_cancel_request(7, b"k" * 32)).key == b"k" * 32
    too_long = struct.pack("!ii", 8 + 4 + 300, CANCEL_REQUEST_CODE) + b"\0" * 304
    with pytest.raises(ProtocolViolation):
        m.parse_startup_packet(too_long)


def test_unsupported_major_protocol():
    packet = struct.pack("!ii", 8, 2 << 16)
    with pytest.raises(ProtocolViolation) as err:
        m.parse_startup_packet(packet)
    assert err.value.sqlstate == "0A000"


def test_parse_and_bind_round_trip():
    raw = m.parse_message("s1", "select $1", [23])
    parsed = m.parse_parse(raw[5:])
    assert parsed == m.Parse("s1", "select $1", (23,))
    body = (
        m.cstr("p")
        + m.cstr("s1")
        + struct.pack("!hh", 1, 1)
        + struct.pack("!h", 2)
        + struct.pack("!i", 2)
        + b"42"
        + struct.pack("!i", -1)
        + struct.pack("!hhh", 2, 1, 0)
    )
    bind = m.parse_bind(body)
    assert bind == m.Bind("p", "s1", (1, 0))


def test_bind_with_lying_parameter_length_is_refused():
    body = m.cstr("") + m.cstr("") + struct.pack("!h", 0) + struct.pack("!h", 1) + struct.pack("!i", 1000) + b"x"
    with pytest.raises(ProtocolViolation):
        m.parse_bind(body)


def test_row_description_and_data_row():
    fields = struct.pack("!h", 2)
    for name, typ, fmt in (("id", 23, 0), ("email", 25, 1)):
        fields += m.cstr(name) + struct.pack("!IhIhih", 0, 0, typ, -1, -1, fmt)
    parsed = m.parse_row_description(fields)
    assert [(f.name, f.type_oid, f.format) for f in parsed] == [("id", 23, 0), ("email", 25, 1)]
    row = m.data_row([b"1", None, b""])
    assert m.parse_data_row(row[5:]) == [b"1", None, b""]


def test_error_response_fields():
    err = m.error_response("42501", "nope", detail="d", hint="h")
    fields = m.parse_fields(err[5:])
    assert m.field(fields, "C") == "42501"
    assert m.field(fields, "M") == "nope"
    assert m.field(fields, "H") == "h"


def test_command_tag_rows():
    assert m.command_tag_rows("SELECT 5") == 5
    assert m.command_tag_rows("INSERT 0 3") == 3
    assert m.command_tag_rows("BEGIN") is None


PARSERS = [
    m.parse_query,
    m.parse_parse,
    m.parse_bind,
    m.parse_describe_or_close,
    m.parse_execute,
    m.parse_row_description,
    m.parse_data_row,
    m.parse_fields,
    m.parse_copy_response,
    m.parse_parameter_status,
    m.parse_password_message,
    m.parse_startup_packet,
]


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@given(data=st.binary(max_size=200))
def test_parsers_only_raise_protocol_violation(parser, data):
    try:
        parser(data)
    except ProtocolViolation:
        pass
