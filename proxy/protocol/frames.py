"""Framing of the PostgreSQL v3 wire protocol: constants and the length checks.

Sans-IO and pure: these functions look at bytes and say where messages begin and end.
They never import asyncio and never allocate a buffer for a length they have not
checked against the configured maximum first.

Why hand-written and not a library: every byte of every session passes through here.
The libraries that parse the protocol (asyncpg's Cython core, psycopg's libpq binding)
are clients, not relays, and decode every message into Python objects; a relay only
needs message boundaries and, for a handful of message types, their fields. Slicing a
bytearray with ``struct.unpack_from`` keeps the per-message cost to a few hundred
nanoseconds, which is what the performance targets in design.md need.
"""

from __future__ import annotations

import struct

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

#: A StartupMessage is small (a handful of parameters); libpq caps it at 10000 bytes.
MAX_STARTUP_BYTES = 10_000
#: Default bound for a single regular message; configurable per proxy.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
HEADER = struct.Struct("!cI")


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid protocol message.

    ``sqlstate`` is what the proxy reports before it closes the connection.
    """

    def __init__(self, message: str, *, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def startup_frame_length(buf: bytes | bytearray | memoryview) -> int | None:
    """Length of the untyped start-up packet at the head of ``buf``, or None if incomplete.

    The first message of a connection has no type byte: int32 length (including itself),
    then int32 code.
    """
    if len(buf) < 4:
        return None
    (length,) = _UINT32.unpack_from(buf, 0)
    if length < 8 or length > MAX_STARTUP_BYTES:
        raise ProtocolViolation(f"invalid start-up packet length {length}")
    return length


def message_length(buf: bytes | bytearray | memoryview, pos: int, max_bytes: int) -> int:
    """Total size (type byte + length field + body) of the typed message at ``pos``.

    The caller has checked that 5 bytes are available. Raises ProtocolViolation for a
    length below 4 or above ``max_bytes`` before anything is allocated for it.
    """
    (length,) = _UINT32.unpack_from(buf, pos + 1)
    if length < 4:
        raise ProtocolViolation(f"invalid message length {length}")
    if length > max_bytes:
        kind = chr(buf[pos]) if 32 <= buf[pos] < 127 else f"0x{buf[pos]:02x}"
        raise ProtocolViolation(
            f"message {kind!r} of {length} bytes exceeds the limit of {max_bytes} bytes",
            sqlstate="54000",
        )
    return length + 1


def split_messages(
    buf: bytes | bytearray, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[list[tuple[int, bytes]], int]:
    """Split complete typed messages off ``buf``: ([(type, body), ...], bytes consumed).

    A convenience for tests and for cold paths (start-up, side queries); the relay's hot
    loop walks the buffer in place instead.
    """
    out: list[tuple[int, bytes]] = []
    pos = 0
    n = len(buf)
    while n - pos >= 5:
        size = message_length(buf, pos, max_bytes)
        if pos + size > n:
            break
        out.append((buf[pos], bytes(buf[pos + 5 : pos + size])))
        pos += size
    return out, pos
