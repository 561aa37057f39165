"""A session lives no longer than its grant: it ends at the grant's expiry or when its token
is revoked, and the session's `finally` then gives the credential back (Vault
`sys/leases/revoke`), as at any other session end.

    cancel = bind_grant(grant, session_id=..., end=relay.end, live=ctx.live)
    ...                                       # relay runs
    cancel()                                  # the session ended on its own

Expiry is a timer per session. Revocation is polled: `watch_revocations` asks the store,
every few seconds and in one query for all of this process's sessions, which of their
tokens were revoked; a revocation reaches open sessions within that interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime

import structlog

from broker.store import Grant
from proxy.protocol import messages

log = structlog.get_logger("jitgate.proxy")

#: The client's view: PostgreSQL's admin_shutdown (57P01), since the session was ended
#: from outside and reconnecting with the same token will not help.
GRANT_EXPIRED = messages.error_response(
    "57P01", "terminating connection: the gateway grant expired", severity="FATAL",
    hint="request access again",
)
GRANT_REVOKED = messages.error_response(
    "57P01", "terminating connection: the gateway grant was revoked", severity="FATAL",
)

Ender = Callable[[str, bytes], None]
RevokedTokens = Callable[[Collection[str]], Awaitable[Collection[str]]]


class LiveSessions:
    """This process's open sessions by token id, so that a revocation can end them."""

    def __init__(self) -> None:
        self._sessions: dict[str, tuple[str, Ender]] = {}

    def add(self, session_id: str, token_id: str, end: Ender) -> None:
        self._sessions[session_id] = (token_id, end)

    def discard(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def token_ids(self) -> set[str]:
        return {token_id for token_id, _ in self._sessions.values()}

    def end_tokens(self, token_ids: Collection[str]) -> int:
        doomed = [(sid, end) for sid, (tid, end) in self._sessions.items() if tid in token_ids]
        for session_id, end in doomed:
            log.info("session_grant_revoked", session_id=session_id)
            end("grant revoked", GRANT_REVOKED)
        return len(doomed)


def bind_grant(grant: Grant, *, session_id: str, end: Ender, live: LiveSessions) -> Callable[[], None]:
    """Schedule the end at the grant's expiry and register for revocation; returns the undo."""
    expires_at = grant.expires_at if grant.expires_at.tzinfo else grant.expires_at.replace(tzinfo=UTC)
    delay = max((expires_at - datetime.now(UTC)).total_seconds(), 0.0)

    def expire() -> None:
        log.info("session_grant_expired", session_id=session_id)
        end("grant expired", GRANT_EXPIRED)

    timer = asyncio.get_running_loop().call_later(delay, expire)
    if grant.token_id is not None:
        live.add(session_id, grant.token_id, end)

    def cancel() -> None:
        timer.cancel()
        live.discard(session_id)

    return cancel


async def watch_revocations(live: LiveSessions, revoked: RevokedTokens, *, interval: float = 5.0) -> None:
    """Run until cancelled. A failed check is logged and retried: the store being down does
    not end sessions (their statements are refused while it cannot record them anyway)."""
    while True:
        await asyncio.sleep(interval)
        token_ids = live.token_ids()
        if not token_ids:
            continue
        try:
            gone = await revoked(token_ids)
        except Exception as exc:
            log.warning("revocation_check_failed", error=type(exc).__name__)
            continue
        if gone:
            live.end_tokens(set(gone))
