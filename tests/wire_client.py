"""A minimal synchronous PostgreSQL v3 wire client over a plain socket, for protocol tests.

It speaks just enough of the protocol to get a session (start-up; AuthenticationOk,
cleartext password, MD5 and SCRAM-SHA-256) and then leaves the conversation to the test:
`send` writes arbitrary frontend bytes (built with the helpers below or by hand), `read`
collects backend messages until a number of ReadyForQuery arrived, the peer closed, or
nothing came for a quiet period. Nothing is interpreted after start-up, so a test sees
exactly what the server (or the proxy) sent, in order.

    with WireClient.connect("127.0.0.1", 5432, user="postgres", database="postgres") as c:
        c.send(query("select 1; select 1/0"))
        result = c.read(ready=1)
        assert [msg.kind for msg in result.messages] == ["T", "D", "C", "E", "Z"]

Builders of proxy/protocol/messages.py are reused where they exist (Query, Parse, Describe,
Close, Sync, Flush, Terminate, start-up, password and SASL messages), and so are the
gateway's MD5 step (proxy/upstream.py) and its SCRAM library (scramp); Bind with parameters,
Execute, FunctionCall and the COPY messages are built here.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import NamedTuple

import scramp

from proxy.protocol import messages as m
from proxy.upstream import _md5_password  # the gateway's own upstream MD5 step

__all__ = [
    "FLUSH",
    "SYNC",
    "TERMINATE",
    "Message",
    "ReadResult",
    "WireClient",
    "WireError",
    "bind",
    "close",
    "copy_data",
    "copy_done",
    "copy_fail",
    "describe",
    "error_fields",
    "execute",
    "function_call",
    "parse",
    "query",
]

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")

SYNC = m.SYNC
FLUSH = m.FLUSH
TERMINATE = m.TERMINATE

Param = bytes | str | None


# -- frontend message builders ------------------------------------------------------------


def query(sql: str) -> bytes:
    return m.query_message(sql)


def parse(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    return m.parse_message(name, sql, param_types)


def _param_bytes(value: Param) -> bytes:
    if value is None:
        return _I32.pack(-1)
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _I32.pack(len(raw)) + raw


def bind(
    portal: str,
    statement: str,
    params: Sequence[Param] = (),
    *,
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    """Bind; `params` in text format unless `param_formats` says otherwise (None is NULL)."""
    body = m.cstr(portal) + m.cstr(statement)
    body += _I16.pack(len(param_formats)) + b"".join(_I16.pack(f) for f in param_formats)
    body += _I16.pack(len(params)) + b"".join(_param_bytes(p) for p in params)
    body += _I16.pack(len(result_formats)) + b"".join(_I16.pack(f) for f in result_formats)
    return m.frame(b"B", body)


def describe(kind: str, name: str) -> bytes:
    """Describe a statement (`kind` "S") or a portal ("P")."""
    return m.describe_message(kind, name)


def close(kind: str, name: str) -> bytes:
    """Close a statement (`kind` "S") or a portal ("P")."""
    return m.close_message(kind, name)


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.frame(b"E", m.cstr(portal) + _I32.pack(max_rows))


def function_call(
    oid: int,
    args: Sequence[Param] = (),
    *,
    arg_formats: Sequence[int] = (),
    result_format: int = 0,
) -> bytes:
    """Fast-path FunctionCall of the function with this OID (arguments in text by default)."""
    body = _U32.pack(oid)
    body += _I16.pack(len(arg_formats)) + b"".join(_I16.pack(f) for f in arg_formats)
    body += _I16.pack(len(args)) + b"".join(_param_bytes(a) for a in args)
    body += _I16.pack(result_format)
    return m.frame(b"F", body)


def copy_data(data: bytes | str) -> bytes:
    return m.frame(b"d", data.encode("utf-8") if isinstance(data, str) else data)


def copy_done() -> bytes:
    return m.frame(b"c", b"")


def copy_fail(reason: str) -> bytes:
    return m.frame(b"f", m.cstr(reason))


# -- backend messages ---------------------------------------------------------------------


class Message(NamedTuple):
    """One backend message: its type letter and its body (without type byte and length)."""

    kind: str
    body: bytes

    def raw(self) -> bytes:
        return m.frame(self.kind.encode("ascii"), self.body)


def error_fields(body: bytes) -> list[tuple[str, str]]:
    """Fields of an ErrorResponse / NoticeResponse body, in order."""
    return m.parse_fields(body)


@dataclass
class ReadResult:
    """What `WireClient.read` collected, and why it stopped: "ready" (the ReadyForQuery
    count was reached), "eof" (the peer closed), "quiet" (nothing arrived for the quiet
    period) or "timeout" (the overall deadline passed)."""

    messages: list[Message]
    reason: str

    @property
    def kinds(self) -> str:
        return "".join(msg.kind for msg in self.messages)

    @property
    def ready_count(self) -> int:
        return sum(1 for msg in self.messages if msg.kind == "Z")


class WireError(Exception):
    """The server refused the start-up (its ErrorResponse fields), or the socket failed."""

    def __init__(self, message: str, fields: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.fields = list(fields)

    @property
    def sqlstate(self) -> str | None:
        return m.field(self.fields, "C")


@dataclass
class WireClient:
    """A raw protocol session on `sock` (see the module docstring)."""

    sock: socket.socket
    parameters: dict[str, str] = field(default_factory=dict)
    backend_key: tuple[int, bytes] | None = None
    #: The start-up exchange after the password step (AuthenticationOk, ParameterStatus,
    #: BackendKeyData, notices, the first ReadyForQuery), as received.
    startup_messages: list[Message] = field(default_factory=list)
    _buf: bytearray = field(default_factory=bytearray, repr=False)
    _eof: bool = False

    # -- connection ---------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        user: str,
        database: str,
        password: str | None = None,
        params: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> WireClient:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = cls(sock)
        try:
            client._startup(user, database, password, params or {}, timeout)
        except BaseException:
            client.close()
            raise
        return client

    def _startup(self, user: str, database: str, password: str | None, params: dict[str, str], timeout: float) -> None:
        self.sendall(m.build_startup_message({"user": user, "database": database, **params}))
        deadline = time.monotonic() + timeout
        scram: scramp.ScramClient | None = None
        while True:
            msg = self._next_message(deadline)
            if msg.kind == "E":
                fields = m.parse_fields(msg.body)
                raise WireError(f"start-up refused: {m.field(fields, 'M')}", fields)
            if msg.kind == "R":
                code, data = m.parse_auth_request(msg.body)
                if code == 0:
                    self.startup_messages.append(msg)
                    continue
                if password is None:
                    raise WireError(f"the server asks for a password (authentication {code}) and none was given")
                if code == 3:
                    self.sendall(m.password_message(password.encode() + b"\0"))
                elif code == 5:
                    self.sendall(m.password_message(_md5_password(user, password, data[:4]) + b"\0"))
                elif code == 10:
                    mechanisms = m.parse_sasl_mechanisms(data)
                    if "SCRAM-SHA-256" not in mechanisms:
                        raise WireError(f"no supported SASL mechanism in {mechanisms}")
                    scram = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
                    self.sendall(m.sasl_initial_response("SCRAM-SHA-256", scram.get_client_first().encode()))
                elif code == 11 and scram is not None:
                    scram.set_server_first(data.decode())
                    self.sendall(m.password_message(scram.get_client_final().encode()))
                elif code == 12 and scram is not None:
                    scram.set_server_final(data.decode())  # raises when the server's proof is wrong
                else:
                    raise WireError(f"unsupported authentication request {code}")
                continue
            self.startup_messages.append(msg)
            if msg.kind == "S":
                name, value = m.parse_parameter_status(msg.body)
                self.parameters[name] = value
            elif msg.kind == "K":
                self.backend_key = m.parse_backend_key_data(msg.body)
            elif msg.kind == "Z":
                return

    def close(self) -> None:
        """Send Terminate (when the socket is still usable) and close it."""
        try:
            if not self._eof:
                self.sock.sendall(TERMINATE)
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- traffic ---------------------------------------------------------------------------

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *messages: bytes | Iterable[bytes]) -> None:
        """Write the given frontend messages (or iterables of them) in one write."""
        parts: list[bytes] = []
        for item in messages:
            if isinstance(item, bytes | bytearray):
                parts.append(bytes(item))
            else:
                parts.extend(item)
        self.sendall(b"".join(parts))

    def _take(self) -> Message | None:
        """The next complete message in the buffer, if there is one."""
        buf = self._buf
        if len(buf) < 5:
            return None
        (length,) = _U32.unpack_from(buf, 1)
        if length < 4:
            raise WireError(f"backend sent an invalid message length {length}")
        if len(buf) < 1 + length:
            return None
        msg = Message(chr(buf[0]), bytes(buf[5 : 1 + length]))
        del buf[: 1 + length]
        return msg

    def _recv(self, timeout: float) -> bool:
        """Receive more bytes within `timeout` seconds: False when none came (or EOF)."""
        if self._eof:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _next_message(self, deadline: float) -> Message:
        while True:
            msg = self._take()
            if msg is not None:
                return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WireError("timed out waiting for the server")
            if not self._recv(remaining) and self._eof:
                raise WireError("the server closed the connection")

    def read(self, ready: int | None = 1, *, timeout: float = 10.0, quiet: float | None = None) -> ReadResult:
        """Backend messages until `ready` ReadyForQuery have arrived (None: no count), the
        peer closes, nothing arrives for `quiet` seconds, or `timeout` seconds pass.

        Messages after the last counted ReadyForQuery stay buffered for the next call.
        """
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        seen = 0
        while True:
            msg = self._take()
            if msg is not None:
                out.append(msg)
                if msg.kind == "Z":
                    seen += 1
                    if ready is not None and seen >= ready:
                        return ReadResult(out, "ready")
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ReadResult(out, "timeout")
            wait = remaining if quiet is None else min(quiet, remaining)
            if not self._recv(wait):
                if self._eof:
                    return ReadResult(out, "eof")
                if quiet is not None and wait >= quiet:
                    return ReadResult(out, "quiet")

    def exchange(
        self, *messages: bytes, ready: int = 1, timeout: float = 10.0, quiet: float | None = None
    ) -> ReadResult:
        """`send` then `read`."""
        self.send(*messages)
        return self.read(ready, timeout=timeout, quiet=quiet)

    @property
    def closed_by_peer(self) -> bool:
        return self._eof
