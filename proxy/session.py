"""One client connection, from the first byte to the revoked credential.

    client                      jitgate                          upstream
      | SSLRequest ------------> | 'S' + TLS (or 'N')               |
      | StartupMessage --------> | sanitize parameters              |
      | <------ AuthCleartext    |                                  |
      | PasswordMessage(token) > | verify gateway token (broker)    |
      |                          | acquire credential (Vault/local) |
      |                          | ---- StartupMessage, SCRAM/MD5 --> |
      |                          | <--- ParameterStatus, BackendKey,  |
      |                          |      ReadyForQuery                 |
      | <- AuthOk, ParameterStatus (filtered), our BackendKeyData, ReadyForQuery
      | ====== relay: every message through policy, every result through masking ====== |

It reads like a script on purpose: authenticate, authorise, obtain the credential,
connect, make the client ready, record the start, relay, then record the end and give
the credential back in ``finally``, whatever happened.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from broker.metrics import EGRESS_LIMITS, PROXY_BYTES
from broker.policy.model import Decision, Verdict
from broker.store import SessionStart
from proxy.admission import Admission, Slot
from proxy.cancel import CancelMap
from proxy.egress import AgentBudget
from proxy.egress_ledger import AgentEgressLedger
from proxy.exceptions import ClientAuthFailed, ClientRefused, ProxyError, to_error_response
from proxy.hooks import (
    CredentialProvider,
    Resource,
    ReviewHook,
    SessionInfo,
    SessionRecorder,
    TokenVerifier,
)
from proxy.lifetime import LiveSessions, RevokedTokens, bind_grant
from proxy.machine import SessionMachine
from proxy.protocol import codes as messages_codes
from proxy.protocol import messages
from proxy.protocol.frames import ProtocolViolation, startup_frame_length
from proxy.records import StatementEvent
from proxy.relay import Relay
from proxy.server_messages import PINNED, pinned_violation
from proxy.side_channel import SideChannel, wants_estimate
from proxy.startup_params import StartupRefused, limit_timeouts, sanitize_startup
from proxy.upstream import UpstreamConnection, connect_upstream

log = structlog.get_logger("jitgate.proxy")

#: Upstream parameters that would reveal who the gateway logs in as.
HIDDEN_PARAMETERS = frozenset({"session_authorization"})
UNRECORDABLE = Verdict(
    Decision.BLOCK,
    "gateway/recorder-unavailable",
    "the session record cannot be written right now, so nothing is run",
)
#: Ends the client chose, or a limit it was told of (each logged where it happens). Any other
#: end (the upstream went away, the gateway shut down or failed, a protocol fault) is logged
#: as a warning: a log kept at warning still says why a session dropped.
ORDINARY_ENDS = ("client terminated", "client disconnected", "idle timeout", "grant expired", "grant revoked")


@dataclass(slots=True)
class ProxyContext:
    resources: Mapping[str, Resource]
    tokens: TokenVerifier
    credentials: CredentialProvider
    recorder: SessionRecorder
    review: ReviewHook
    cancel_map: CancelMap = field(default_factory=CancelMap)
    tls: ssl.SSLContext | None = None
    require_tls_for_non_loopback: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    live: LiveSessions = field(default_factory=LiveSessions)
    #: Which of the given token ids are revoked (the store); None: only expiry ends sessions.
    revoked_tokens: RevokedTokens | None = None
    revocation_check_interval: float = 5.0
    #: Per-agent egress budgets across sessions (the store's `egress_usage`); None: not kept.
    egress_ledger: AgentEgressLedger | None = None
    #: What a client has, in all, to negotiate TLS, start up and send its token.
    startup_timeout: float = 10.0
    #: A session idle this long outside a transaction is ended (57P05); None: never.
    idle_timeout: float | None = None
    #: Concurrent-session caps per agent and per token (53300); None: no caps.
    admission: Admission | None = None


def _is_loopback(peer: object) -> bool:
    if isinstance(peer, tuple) and peer:
        try:
            return ipaddress.ip_address(peer[0]).is_loopback
        except ValueError:
            return False
    return True  # unix socket


async def _read_startup(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ProxyContext
) -> tuple[messages.StartupPacket, bool]:
    """SSLRequest / GSSENCRequest negotiation, then the StartupMessage or CancelRequest."""
    tls = False
    for _ in range(3):
        header = await reader.readexactly(4)
        length = startup_frame_length(header)
        assert length is not None
        packet = messages.parse_startup_packet(header + await reader.readexactly(length - 4))
        if isinstance(packet, messages.SSLRequest):
            if tls:
                raise ProtocolViolation("SSLRequest inside TLS")
            if ctx.tls is None:
                writer.write(b"N")
                continue
            if reader._buffer:  # type: ignore[attr-defined]
                # Bytes after SSLRequest and before the handshake: a buffer-stuffing attack.
                raise ProtocolViolation("unencrypted data after SSLRequest")
            writer.write(b"S")
            await writer.drain()
            await writer.start_tls(ctx.tls)
            tls = True
            continue
        if isinstance(packet, messages.GSSENCRequest):
            writer.write(b"N")
            continue
        return packet, tls
    raise ProtocolViolation("too many negotiation requests")


async def _read_password(reader: asyncio.StreamReader) -> str:
    header = await reader.readexactly(5)
    if header[0] != ord("p"):
        raise ProtocolViolation("expected a password message before any other message")
    size = int.from_bytes(header[1:5], "big")
    if size < 5 or size > 4096:
        raise ProtocolViolation("invalid password message length")
    return messages.parse_password_message(await reader.readexactly(size - 4))


async def handle_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ProxyContext) -> None:
    peer = writer.get_extra_info("peername")
    client_addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
    session: SessionInfo | None = None
    credential = None
    machine: SessionMachine | None = None
    slot: Slot | None = None
    end_reason = "error"
    relaying = False  # the relay tells its own client when the gateway shuts down
    claimed: Mapping[str, str] = {}  # the start-up parameters, for the record of a refused login
    # One deadline for everything the client must send before it is in (proxy.startup_timeout_seconds).
    loop = asyncio.get_running_loop()
    startup_deadline = loop.time() + ctx.startup_timeout
    try:
        packet, tls = await asyncio.wait_for(_read_startup(reader, writer, ctx), ctx.startup_timeout)
        if isinstance(packet, messages.CancelRequest):
            await ctx.cancel_map.cancel(packet.pid, packet.key)
            return
        assert isinstance(packet, messages.StartupMessage)
        claimed = packet.params
        try:
            startup = sanitize_startup(packet.params)
        except StartupRefused as exc:
            raise ClientRefused(str(exc), sqlstate="42501", reason="startup_refused") from None
        if packet.protocol != messages.PROTOCOL_3_0 or startup.protocol_options:
            # We speak 3.0; tell a 3.2 client so instead of failing its start-up.
            writer.write(messages.negotiate_protocol_version(0, startup.protocol_options))

        # 1. Which database, under which rules.
        resource = ctx.resources.get(startup.database)
        if resource is None:
            raise ClientRefused(
                f'database "{startup.database}" is not served by this gateway', sqlstate="3D000",
                reason="unknown_resource",
            )
        try:
            limit_timeouts(startup, resource.timeouts)  # the resource's session timeouts, or lower
        except StartupRefused as exc:
            raise ClientRefused(str(exc), sqlstate="42501", reason="startup_refused") from None
        if not tls and ctx.require_tls_for_non_loopback and not _is_loopback(peer):
            raise ClientRefused(
                "the gateway requires TLS for connections from other hosts", hint="use sslmode=require",
                reason="tls_required",
            )

        # 2. Authenticate the client: its password is the gateway token.
        writer.write(messages.AUTH_CLEARTEXT)
        await writer.drain()
        token = await asyncio.wait_for(_read_password(reader), max(startup_deadline - loop.time(), 0))
        grant = await ctx.tokens.verify(token, resource=resource.name)
        del token
        # Concurrent-session caps (53300), before a credential or an upstream connection is used.
        if ctx.admission is not None:
            slot = await ctx.admission.admit(grant, resource=resource.name)

        session_id = await ctx.recorder.session_started(
            SessionStart(
                grant, client_addr=client_addr, application_name=startup.application_name, intent=startup.intent
            )
        )
        # Every log line of this connection's task carries the session id from here on.
        structlog.contextvars.bind_contextvars(session_id=session_id)
        session = SessionInfo(
            session_id=session_id,
            grant=grant,
            client_addr=client_addr,
            client_user=startup.user,
            application_name=startup.application_name,
            intent=startup.intent,
            tls=tls,
        )

        # The agent's usage so far in this window (other sessions, other proxy processes)
        # bounds what it may read here. Read before the client is told it is in, so a store
        # that cannot say refuses the connect (fail closed) instead of a started session.
        budget = None
        ledger = ctx.egress_ledger
        if ledger is not None and resource.egress is not None and ledger.applies(grant.principal, resource.egress):
            budget = await ledger.read(grant.principal, resource.name, resource.egress)

        # 3. A credential for this session only, then the upstream connection.
        credential = await ctx.credentials.acquire(
            resource=resource.name, role=grant.role, session_id=session.session_id
        )
        # The start-up packet pins the lexing settings (proxy.startup_params): a role or
        # database default cannot change them, nor can RESET go back to one.
        upstream_params = startup.upstream_params
        upstream = await connect_upstream(resource.target, credential, upstream_params)

        # The gateway's lexer and masker read SQL and results as UTF-8 with standard strings;
        # a role or database default that says otherwise is refused, not worked around.
        for setting in PINNED:
            violation = pinned_violation(setting, upstream.parameters.get(setting, PINNED[setting]))
            if violation is not None:
                upstream.writer.close()
                raise ClientRefused(
                    violation.replace("the server reported", "the upstream session starts with"),
                    sqlstate="0A000",
                    hint="connect with client_encoding=UTF8; the gateway speaks UTF-8 only",
                )

        # 4. Make the client ready: our own BackendKeyData, never the upstream's.
        pid, key = ctx.cancel_map.register(resource.target, upstream.pid, upstream.key)
        try:
            writer.write(messages.AUTH_OK)
            for name, value in upstream.parameters.items():
                if name in HIDDEN_PARAMETERS:
                    value = startup.user
                writer.write(messages.parameter_status(name, value))
            writer.write(messages.backend_key_data(pid, key))
            writer.write(messages.ready_for_query(b"I"))
            await writer.drain()

            log.info(
                "session_started",
                session_id=session.session_id,
                principal=grant.principal,
                resource=resource.name,
                client=client_addr,
                application_name=startup.application_name,
            )
            # 5. Relay until either side goes away.
            side = SideChannel(lambda: connect_upstream(resource.target, credential, upstream_params))
            relaying = True
            try:
                machine, end_reason = await _relay(reader, writer, upstream, resource, session, ctx, side, budget)
            finally:
                await side.close()
        finally:
            ctx.cancel_map.unregister(pid)
    except (asyncio.IncompleteReadError, ConnectionError):
        end_reason = "client disconnected"
    except TimeoutError:
        end_reason = "timeout"
        _send_error(writer, ClientRefused("timed out waiting for the client", sqlstate="08006"))
    except asyncio.CancelledError:
        # The gateway is shutting down (ProxyServer.close). A relayed session has told its
        # client already (proxy.relay.SHUTDOWN); one still logging in is told here.
        end_reason = "gateway shutdown"
        if not relaying:
            _send_error(writer, ClientRefused("the gateway is shutting down", sqlstate="57P01"))
        raise
    except (ProxyError, ProtocolViolation) as exc:
        end_reason = f"refused: {exc}"
        if session is None and isinstance(exc, ProxyError) and exc.reason:
            # A refused login: an audit record (who claimed to be whom, from where, which
            # check failed) and AUTH_FAILURES, queued without waiting for the store.
            ctx.recorder.login_failed(
                user=claimed.get("user"),
                resource=claimed.get("database") or claimed.get("user"),
                client_addr=client_addr,
                reason=exc.reason,
                token_id=exc.token_id,
            )
        if isinstance(exc, ClientAuthFailed):
            log.warning("client_auth_failed", client=client_addr, reason=str(exc))
        _send_error(writer, exc)
    except Exception:
        log.exception("session_crashed", client=client_addr)
        _send_error(writer, RuntimeError())
    finally:
        # 6. Always: free the session slot, record the end, give the credential back, close.
        if slot is not None:
            await slot.release()
        if session is not None:
            stats = machine.stats if machine is not None else None
            await ctx.recorder.session_ended(session.session_id, reason=end_reason, stats=stats)
            await ctx.review.session_ended(session.session_id)
            ended = log.info if end_reason.startswith(ORDINARY_ENDS) else log.warning
            ended("session_ended", session_id=session.session_id, reason=end_reason)
        if credential is not None:
            try:
                await ctx.credentials.release(credential)
            except Exception:
                log.exception("credential_release_failed")
        if not writer.is_closing():
            writer.close()


def _send_error(writer: asyncio.StreamWriter, exc: BaseException) -> None:
    if not writer.is_closing():
        try:
            writer.write(to_error_response(exc))
        except (RuntimeError, ConnectionError):
            pass


class LatestResource:
    """A live session's resource as the last reload left it (`proxy.wiring.reload_resources`
    swaps the entries of `ProxyContext.resources`). A reload that removes the resource lets no
    new session in and leaves live ones on the last version they had: not the one they
    started with, which would undo what a reload since then took away."""

    def __init__(self, resources: Mapping[str, Resource], resource: Resource) -> None:
        self._resources = resources
        self._name = resource.name
        self._resource = resource

    def get(self) -> Resource:
        found = self._resources.get(self._name)
        if found is not None:
            self._resource = found
        return self._resource


async def _relay(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: UpstreamConnection,
    resource: Resource,
    session: SessionInfo,
    ctx: ProxyContext,
    side: SideChannel,
    budget: AgentBudget | None = None,
) -> tuple[SessionMachine, str]:
    groups = session.grant.groups
    recorder = ctx.recorder
    session_id = session.session_id
    # The resource's policy and masking as the last reload left them: a reload (SIGHUP)
    # applies to live sessions too.
    latest = LatestResource(ctx.resources, resource)

    def classify(sql: str) -> Verdict:
        if not recorder.healthy:
            # What cannot be recorded is not run (fail closed).
            return UNRECORDABLE
        return latest.get().policy(sql, groups)

    # An agent's budget across its sessions (read at connect, when the resource sets one).
    ledger = ctx.egress_ledger if budget is not None else None

    def on_statement(event: StatementEvent) -> None:
        recorder.statement(session_id, event)
        if ledger is not None:
            ledger.wake()  # charge what the statement returned, off the data path

    machine = SessionMachine(
        classify=classify,
        masker=resource.masker,  # type: ignore[arg-type]
        on_statement=on_statement,
        client_user=session.client_user,
        upstream_user=upstream.username,
        max_message_bytes=ctx.max_message_bytes,
        record_results=resource.record_results,
        egress=resource.egress,
        on_egress_limit=lambda limit: EGRESS_LIMITS.labels(resource.name, limit).inc(),
        resource=resource.name,
        shadow=resource.shadow,
        unrecordable=lambda: None if recorder.healthy else UNRECORDABLE,
        # What `classify` asks: replaced as a whole when the policy is reloaded.
        policy_epoch=lambda: latest.get().policy,
        current_resource=latest.get,
    )
    if ledger is not None and budget is not None:  # both or neither; the check is for mypy
        ledger.attach(budget, machine)
    relay: Relay

    async def review(m: SessionMachine) -> None:
        parked = m.parked
        assert parked is not None
        if (
            parked.blast is None and parked.kind == messages_codes.QUERY
            and wants_estimate(parked.sql, parked.verdict.statement_count)
        ):
            # The planner's row estimate for the approvers, asked on the side channel.
            parked.estimate = await side.estimate(parked.sql)
        outcome = await ctx.review.review(
            session=session, sql=parked.sql, verdict=parked.verdict, notify=relay.notify_client,
            estimate=parked.estimate, blast_radius=parked.blast,
        )
        m.resume(
            approved=outcome.approved, reason=outcome.reason, hint=outcome.hint, approval_id=outcome.approval_id
        )

    # Recording backpressure: the recorder's backlog slows clients down while it catches up;
    # `classify` above still refuses what cannot be recorded.
    relay = Relay(
        machine, writer.transport, upstream.writer.transport, review=review, ask=side.answer, backlog=recorder,  # type: ignore[arg-type]
        idle_timeout=ctx.idle_timeout,
    )
    client_leftover = bytes(reader._buffer)  # type: ignore[attr-defined]
    upstream_leftover = bytes(upstream.reader._buffer)  # type: ignore[attr-defined]
    # The grant bounds the whole session, not only its start: at its expiry or revocation the
    # relay ends, and handle_connection's `finally` revokes the credential as at any end.
    unbind = bind_grant(session.grant, session_id=session_id, end=relay.end, live=ctx.live)
    PROXY_BYTES.track(relay)
    try:
        reason = await relay.run(client_leftover, upstream_leftover)
    finally:
        # What was sent and never answered may have run: it is recorded, outcome unknown.
        unanswered = machine.abandon()
        if unanswered:
            log.warning("statements_unanswered", count=unanswered)
        PROXY_BYTES.untrack(relay)
        unbind()
        if budget is not None and ledger is not None:
            await ledger.close(budget)
    return machine, reason
