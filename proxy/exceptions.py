"""Errors of the data path, and the one place that turns them into wire ErrorResponses.

    ProxyError                      (sqlstate, message shown to the client)
    ├── ProtocolViolation           (proxy.protocol.frames; malformed/oversized: 08P01/54000)
    ├── ClientAuthFailed            28P01  bad, expired or revoked gateway token
    ├── ClientRefused               28000/42501  TLS required, start-up parameter refused
    ├── UpstreamUnavailable         08006  upstream, broker or credential provider down
    ├── UpstreamAuthFailed          08006  the upstream refused the gateway's credential
    ├── ResultRefused               0A000  a result the gateway cannot mask safely; the
    │                                      session ends (it may be mid-stream)
    └── SessionDesync               08P01  the upstream sent what the gateway's model of the
                                           session did not expect: the session ends

Messages never contain the upstream user name or password, nor the client's token.

`reason`, on an error that refuses a client's login, names the check that failed
(`AuthError.reason`, `unknown_resource`, `tls_required`, ...): the proxy records it as an
`auth.login_failed` audit event and counts it in `jitgate_auth_failures_total`. `token_id`
is the id of the token refused, when it parsed and is known (never the token).
"""

from __future__ import annotations

from proxy.protocol import messages
from proxy.protocol.frames import ProtocolViolation


class ProxyError(Exception):
    sqlstate = "XX000"

    def __init__(
        self,
        message: str,
        *,
        detail: str | None = None,
        hint: str | None = None,
        reason: str | None = None,
        token_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint
        self.reason = reason
        self.token_id = token_id


class ClientAuthFailed(ProxyError):
    sqlstate = "28P01"


class ClientRefused(ProxyError):
    sqlstate = "28000"

    def __init__(self, message: str, *, sqlstate: str = "28000", **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.sqlstate = sqlstate


class UpstreamUnavailable(ProxyError):
    sqlstate = "08006"


class UpstreamAuthFailed(ProxyError):
    sqlstate = "08006"


class ResultRefused(ProxyError):
    sqlstate = "0A000"


class ModeSwitched(ProxyError):
    """A reload changed the resource's mode under a live session in a way it cannot follow:
    masking (or observe) turned on or off while statements were in flight (they were sent
    under the other mode: masked rows need a description the client did not ask for), or
    observe turned off at all (what the session made while observing, its cursors, temporary
    functions and views, settings, prepared statements, was never judged). The session ends
    and the client reconnects under the new configuration."""

    sqlstate = "57P01"

    IN_FLIGHT = (
        "terminating connection: masking or the observe preset was turned on or off for this resource"
        " by a configuration reload while statements were in flight"
    )
    OBSERVE_ENDED = (
        "terminating connection: this resource now enforces its policy (a configuration reload ended"
        " the observe preset), and what this session did while observing was never judged"
    )

    def __init__(self, message: str = IN_FLIGHT) -> None:
        super().__init__(message, hint="Reconnect to go on under the new configuration.")


class SessionDesync(ProxyError):
    sqlstate = "08P01"

    def __init__(self, what: str) -> None:
        super().__init__(
            "the gateway lost track of this session",
            detail=what,
            hint="Nothing more of this session is relayed; reconnect to go on.",
        )


def to_error_response(exc: BaseException) -> bytes:
    """The ErrorResponse (severity FATAL) a client sees for ``exc`` before the socket closes."""
    if isinstance(exc, ProxyError):
        return messages.error_response(exc.sqlstate, exc.message, detail=exc.detail, hint=exc.hint, severity="FATAL")
    if isinstance(exc, ProtocolViolation):
        return messages.error_response(exc.sqlstate, f"protocol violation: {exc}", severity="FATAL")
    # Anything else is our bug; say so without leaking internals.
    return messages.error_response("XX000", "internal gateway error", severity="FATAL")
