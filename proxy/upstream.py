"""Connecting to the upstream PostgreSQL as an ordinary client.

The gateway authenticates upstream with a credential only it holds (SCRAM-SHA-256, MD5,
cleartext or trust, TLS when the resource asks for it). Errors raised from here never
carry the user name or password: the client sees "the upstream refused the gateway's
credential", operators see the upstream's SQLSTATE in the logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from dataclasses import dataclass, field

import scramp

from proxy.exceptions import UpstreamAuthFailed, UpstreamUnavailable
from proxy.protocol import messages
from proxy.protocol.frames import ProtocolViolation, message_length

_STARTUP_MAX = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UpstreamCredential:
    username: str
    password: str = field(repr=False)
    lease_id: str | None = None


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str
    port: int
    dbname: str
    sslmode: str = "disable"  # disable | prefer | require | verify-ca | verify-full
    sslrootcert: str | None = None
    connect_timeout: float = 10.0


@dataclass(slots=True)
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pid: int
    key: bytes
    parameters: dict[str, str]
    username: str


def _ssl_context(target: UpstreamTarget) -> ssl.SSLContext:
    if target.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=target.sslrootcert)
        ctx.check_hostname = target.sslmode == "verify-full"
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _read_message(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(5)
    size = message_length(header, 0, _STARTUP_MAX)
    body = await reader.readexactly(size - 5)
    return header[0], body


def _md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()  # noqa: S324 - protocol
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()  # noqa: S324


async def connect_upstream(
    target: UpstreamTarget, credential: UpstreamCredential, params: dict[str, str]
) -> UpstreamConnection:
    """Open, (optionally) TLS-wrap and authenticate a connection; stop after ReadyForQuery."""
    try:
        return await asyncio.wait_for(_connect(target, credential, params), target.connect_timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        raise UpstreamUnavailable(
            "the upstream database is unreachable",
            detail=f"{target.host}:{target.port}: {type(exc).__name__}",
        ) from None
    except ProtocolViolation as exc:
        raise UpstreamUnavailable("the upstream database answered with an invalid message", detail=str(exc)) from None


async def _connect(
    target: UpstreamTarget, credential: UpstreamCredential, params: dict[str, str]
) -> UpstreamConnection:
    if target.host.startswith("/"):
        reader, writer = await asyncio.open_unix_connection(f"{target.host}/.s.PGSQL.{target.port}")
    else:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        if target.sslmode != "disable" and not target.host.startswith("/"):
            writer.write(messages.SSL_REQUEST)
            answer = await reader.readexactly(1)
            if answer == b"S":
                await writer.start_tls(_ssl_context(target), server_hostname=target.host)
            elif target.sslmode != "prefer":
                raise UpstreamUnavailable("the upstream database does not offer TLS, which the resource requires")
        startup = {"user": credential.username, "database": target.dbname, **params}
        writer.write(messages.build_startup_message(startup))
        await _authenticate(reader, writer, credential)
        return await _until_ready(reader, writer, credential.username)
    except BaseException:
        writer.close()
        raise


async def _authenticate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cred: UpstreamCredential) -> None:
    scram: scramp.ScramClient | None = None
    while True:
        kind, body = await _read_message(reader)
        if kind == ord("E"):
            fields = messages.parse_fields(body)
            sqlstate = messages.field(fields, "C") or "XX000"
            if sqlstate.startswith("28"):
                raise UpstreamAuthFailed(
                    "the upstream refused the gateway's credential", detail=f"upstream SQLSTATE {sqlstate}"
                )
            raise UpstreamUnavailable(
                "the upstream database refused the connection", detail=f"upstream SQLSTATE {sqlstate}"
            )
        if kind != ord("R"):
            raise ProtocolViolation(f"unexpected message {chr(kind)!r} during authentication")
        code, data = messages.parse_auth_request(body)
        if code == 0:
            return
        if code == 3:
            writer.write(messages.password_message(cred.password.encode() + b"\0"))
        elif code == 5:
            writer.write(messages.password_message(_md5_password(cred.username, cred.password, data[:4]) + b"\0"))
        elif code == 10:
            mechanisms = messages.parse_sasl_mechanisms(data)
            if "SCRAM-SHA-256" not in mechanisms:
                raise UpstreamAuthFailed("the upstream offers no SASL mechanism the gateway supports")
            # PostgreSQL ignores the user name inside SCRAM (it uses the start-up user).
            scram = scramp.ScramClient(["SCRAM-SHA-256"], cred.username, cred.password)
            writer.write(messages.sasl_initial_response("SCRAM-SHA-256", scram.get_client_first().encode()))
        elif code == 11 and scram is not None:
            scram.set_server_first(data.decode())
            # PBKDF2 with the server's iteration count (4096 by default): a few milliseconds
            # of CPU that hashlib does without the GIL. In a thread, a connect burst's key
            # derivations run beside the relay instead of stalling every session's traffic.
            client_final = await asyncio.to_thread(scram.get_client_final)
            writer.write(messages.password_message(client_final.encode()))
        elif code == 12 and scram is not None:
            try:
                scram.set_server_final(data.decode())
            except scramp.ScramException:
                raise UpstreamAuthFailed("the upstream's SCRAM signature did not verify") from None
        else:
            raise UpstreamAuthFailed(f"unsupported upstream authentication method {code}")
        await writer.drain()


async def _until_ready(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, username: str) -> UpstreamConnection:
    params: dict[str, str] = {}
    pid, key = 0, b""
    while True:
        kind, body = await _read_message(reader)
        if kind == ord("S"):
            name, value = messages.parse_parameter_status(body)
            params[name] = value
        elif kind == ord("K"):
            pid, key = messages.parse_backend_key_data(body)
        elif kind == ord("Z"):
            return UpstreamConnection(reader, writer, pid, key, params, username)
        elif kind == ord("E"):
            code = messages.field(messages.parse_fields(body), "C") or "XX000"
            raise UpstreamUnavailable("the upstream database refused the session", detail=f"upstream SQLSTATE {code}")
        elif kind in (ord("N"), ord("v")):
            continue
        else:
            raise ProtocolViolation(f"unexpected message {chr(kind)!r} before ReadyForQuery")
