"""Parsers and builders for the protocol messages the proxy reads or writes.

Pure functions over bytes (sans-IO). Parsers take the message *body* (after the type
byte and length) and raise ProtocolViolation on malformed input; builders return the
complete message including type byte and length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from proxy.protocol.frames import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    ProtocolViolation,
)

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")


# -- primitive readers ---------------------------------------------------------------


def read_cstring(body: bytes, pos: int) -> tuple[str, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise ProtocolViolation("unterminated string in message")
    try:
        return body[pos:end].decode("utf-8"), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("invalid UTF-8 in message string") from exc


def _i16(body: bytes | memoryview, pos: int) -> int:
    if pos + 2 > len(body):
        raise ProtocolViolation("message truncated")
    return int(_I16.unpack_from(body, pos)[0])


def _i32(body: bytes, pos: int) -> int:
    if pos + 4 > len(body):
        raise ProtocolViolation("message truncated")
    return int(_I32.unpack_from(body, pos)[0])


def frame(kind: bytes, body: bytes) -> bytes:
    return kind + _U32.pack(len(body) + 4) + body


def cstr(value: str) -> bytes:
    return value.encode("utf-8") + b"\0"


# -- start-up phase --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    key: bytes


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


StartupPacket = StartupMessage | CancelRequest | SSLRequest | GSSENCRequest


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Parse a complete untyped start-up packet (length prefix included)."""
    if len(packet) < 8:
        raise ProtocolViolation("start-up packet too short")
    code = _i32(packet, 4)
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        # Protocol 3.2 allows a variable-length key (up to 256 bytes); 3.0 uses 4 bytes.
        if len(packet) < 16 or len(packet) > 8 + 4 + 256:
            raise ProtocolViolation("malformed CancelRequest")
        return CancelRequest(pid=_i32(packet, 8), key=bytes(packet[12:]))
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}", sqlstate="0A000")
    params: dict[str, str] = {}
    pos = 8
    body = bytes(packet)
    while pos < len(body) and body[pos] != 0:
        key, pos = read_cstring(body, pos)
        value, pos = read_cstring(body, pos)
        params[key] = value
    if pos >= len(body):
        raise ProtocolViolation("StartupMessage is not terminated")
    if "user" not in params:
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet", sqlstate="28000")
    return StartupMessage(protocol=code, params=params)


def build_startup_message(params: dict[str, str]) -> bytes:
    body = _I32.pack(PROTOCOL_3_0) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def build_cancel_request(pid: int, key: bytes) -> bytes:
    body = _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(pid) + key
    return _I32.pack(len(body) + 4) + body


SSL_REQUEST = _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


def negotiate_protocol_version(newest_minor: int, unsupported: Sequence[str]) -> bytes:
    body = _I32.pack(newest_minor) + _I32.pack(len(unsupported)) + b"".join(cstr(o) for o in unsupported)
    return frame(b"v", body)


# -- authentication -----------------------------------------------------------------------

AUTH_OK = frame(b"R", _I32.pack(0))
AUTH_CLEARTEXT = frame(b"R", _I32.pack(3))


def parse_password_message(body: bytes) -> str:
    value, pos = read_cstring(body, 0)
    if pos != len(body):
        raise ProtocolViolation("malformed PasswordMessage")
    return value


def password_message(payload: bytes) -> bytes:
    return frame(b"p", payload)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def parse_auth_request(body: bytes) -> tuple[int, bytes]:
    return _i32(body, 0), body[4:]


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    out = []
    pos = 0
    while pos < len(data) and data[pos] != 0:
        name, pos = read_cstring(data, pos)
        out.append(name)
    return out


# -- session-level backend messages -------------------------------------------------------


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    name, pos = read_cstring(body, 0)
    value, _ = read_cstring(body, pos)
    return name, value


def backend_key_data(pid: int, key: bytes) -> bytes:
    return frame(b"K", _I32.pack(pid) + key)


def parse_backend_key_data(body: bytes) -> tuple[int, bytes]:
    if len(body) < 8:
        raise ProtocolViolation("malformed BackendKeyData")
    return _i32(body, 0), bytes(body[4:])


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)


# ErrorResponse / NoticeResponse field codes used here.
F_SEVERITY = "S"
F_SEVERITY_NONLOCAL = "V"
F_SQLSTATE = "C"
F_MESSAGE = "M"
F_DETAIL = "D"
F_HINT = "H"


def build_fields(kind: bytes, fields: Iterable[tuple[str, str]]) -> bytes:
    body = b"".join(code.encode("ascii") + cstr(value) for code, value in fields) + b"\0"
    return frame(kind, body)


def error_response(
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    severity: str = "ERROR",
) -> bytes:
    fields = [(F_SEVERITY, severity), (F_SEVERITY_NONLOCAL, severity), (F_SQLSTATE, sqlstate), (F_MESSAGE, message)]
    if detail:
        fields.append((F_DETAIL, detail))
    if hint:
        fields.append((F_HINT, hint))
    return build_fields(b"E", fields)


def notice_response(message: str, *, detail: str | None = None, sqlstate: str = "00000") -> bytes:
    fields = [(F_SEVERITY, "NOTICE"), (F_SEVERITY_NONLOCAL, "NOTICE"), (F_SQLSTATE, sqlstate), (F_MESSAGE, message)]
    if detail:
        fields.append((F_DETAIL, detail))
    return build_fields(b"N", fields)


def parse_fields(body: bytes) -> list[tuple[str, str]]:
    """Fields of an ErrorResponse or NoticeResponse body, in order."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = read_cstring(body, pos + 1)
        out.append((code, value))
    return out


def field(fields: Sequence[tuple[str, str]], code: str) -> str | None:
    for c, v in fields:
        if c == code:
            return v
    return None


# -- frontend messages the policy must read ----------------------------------------------


def parse_query(body: bytes) -> str:
    text, _ = read_cstring(body, 0)
    return text


def query_message(sql: str) -> bytes:
    return frame(b"Q", cstr(sql))


# Message records are NamedTuples: built for every message on the hot path, and a tuple is
# several times cheaper to construct than a frozen dataclass.
class Parse(NamedTuple):
    name: str
    query: str
    param_types: tuple[int, ...]


def parse_parse(body: bytes) -> Parse:
    name, pos = read_cstring(body, 0)
    query, pos = read_cstring(body, pos)
    count = _i16(body, pos)
    pos += 2
    if count < 0 or pos + 4 * count != len(body):
        raise ProtocolViolation("malformed Parse message")
    types = struct.unpack_from(f"!{count}I", body, pos) if count else ()
    return Parse(name, query, tuple(types))


def parse_message(name: str, query: str, param_types: Sequence[int] = ()) -> bytes:
    body = cstr(name) + cstr(query) + _I16.pack(len(param_types))
    body += b"".join(_U32.pack(t) for t in param_types)
    return frame(b"P", body)


class Bind(NamedTuple):
    portal: str
    statement: str
    result_formats: tuple[int, ...]


def parse_bind(body: bytes) -> Bind:
    """Portal, statement and result-column format codes of a Bind; parameters are skipped."""
    portal, pos = read_cstring(body, 0)
    statement, pos = read_cstring(body, pos)
    nfmt = _i16(body, pos)
    pos += 2 + 2 * max(nfmt, 0)
    nparams = _i16(body, pos)
    if nfmt < 0 or nparams < 0:
        raise ProtocolViolation("malformed Bind message")
    pos += 2
    for _ in range(nparams):
        ln = _i32(body, pos)
        pos += 4
        if ln > 0:
            pos += ln
        elif ln < -1:
            raise ProtocolViolation("malformed Bind parameter length")
    nres = _i16(body, pos)
    pos += 2
    if nres < 0 or pos + 2 * nres != len(body):
        raise ProtocolViolation("malformed Bind message")
    formats = struct.unpack_from(f"!{nres}h", body, pos) if nres else ()
    return Bind(portal, statement, tuple(formats))


def parse_describe_or_close(body: bytes) -> tuple[str, str]:
    """('S' | 'P', name) of a Describe or Close message."""
    if not body or body[0] not in (0x53, 0x50):
        raise ProtocolViolation("malformed Describe/Close message")
    name, pos = read_cstring(body, 1)
    if pos != len(body):
        raise ProtocolViolation("malformed Describe/Close message")
    return chr(body[0]), name


def describe_message(kind: str, name: str) -> bytes:
    return frame(b"D", kind.encode("ascii") + cstr(name))


def close_message(kind: str, name: str) -> bytes:
    return frame(b"C", kind.encode("ascii") + cstr(name))


def parse_execute(body: bytes) -> tuple[str, int]:
    portal, pos = read_cstring(body, 0)
    return portal, _i32(body, pos)


def parse_function_call_oid(body: bytes) -> int:
    return _i32(body, 0) & 0xFFFFFFFF


SYNC = frame(b"S", b"")
FLUSH = frame(b"H", b"")
TERMINATE = frame(b"X", b"")


# -- result messages -------------------------------------------------------------------------


class FieldDescription(NamedTuple):
    name: str
    table_oid: int
    column: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


_FIELD_TAIL = struct.Struct("!IhIhih")


def parse_row_description(body: bytes) -> list[FieldDescription]:
    count = _i16(body, 0)
    pos = 2
    out = []
    for _ in range(count):
        name, pos = read_cstring(body, pos)
        if pos + 18 > len(body):
            raise ProtocolViolation("malformed RowDescription")
        table, col, typ, size, mod, fmt = _FIELD_TAIL.unpack_from(body, pos)
        pos += 18
        out.append(FieldDescription(name, table, col, typ, size, mod, fmt))
    return out


def parse_data_row(body: bytes | memoryview) -> list[bytes | None]:
    count = _i16(body, 0)  # type: ignore[arg-type]
    pos = 2
    out: list[bytes | None] = []
    unpack = _I32.unpack_from
    n = len(body)
    for _ in range(count):
        if pos + 4 > n:
            raise ProtocolViolation("malformed DataRow")
        (ln,) = unpack(body, pos)
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            if pos + ln > n:
                raise ProtocolViolation("malformed DataRow")
            out.append(bytes(body[pos : pos + ln]))
            pos += ln
    return out


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_I16.pack(len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I32.pack(len(v)))
            parts.append(v)
    return frame(b"D", b"".join(parts))


def command_tag_rows(tag: str) -> int | None:
    """Row count of a CommandComplete tag ('SELECT 5', 'INSERT 0 3', 'UPDATE 2')."""
    _, _, last = tag.rpartition(" ")
    return int(last) if last.isdigit() else None


def parse_copy_response(body: bytes) -> tuple[int, list[int]]:
    """(overall format, per-column formats) of CopyInResponse / CopyOutResponse."""
    if len(body) < 3:
        raise ProtocolViolation("malformed Copy response")
    overall = body[0]
    n = _i16(body, 1)
    if n < 0 or 3 + 2 * n != len(body):
        raise ProtocolViolation("malformed Copy response")
    cols = list(struct.unpack_from(f"!{n}h", body, 3)) if n else []
    return overall, cols
