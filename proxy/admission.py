"""Concurrent-session caps: per agent and per token, checked at connect, before the gateway
asks for a credential or opens the upstream connection.

One token that opens hundreds of sessions uses up the database's connection slots and every
other client gets ``53300 too_many_connections`` from PostgreSQL. The gateway refuses the
excess itself, with the same SQLSTATE and a message naming the limit (never the token)::

    admission = Admission(store.slots, SessionCaps(per_agent=10, per_token=5))
    slot = await admission.admit(grant, resource="demo")     # SessionCapReached: 53300
    try:
        ...                                                 # the session
    finally:
        await slot.release()                                # every end: errors, cancellation

The count is shared by every proxy process (`broker.store.session_slots`): slots are leases
in the store, renewed by `run` while their sessions live, so the slots of a process that was
killed lapse within `lease_seconds`. The per-agent cap applies to agent principals
(``agent:...``); the per-token cap to every token.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

import structlog

from broker.exceptions import StoreError
from broker.metrics import SESSION_CAP_REFUSALS
from broker.store import Grant
from broker.store.session_slots import Refusal
from proxy.exceptions import ClientRefused

log = structlog.get_logger("jitgate.proxy")

AGENT_PREFIX = "agent:"


class SlotStore(Protocol):
    async def admit_session(
        self,
        slot_id: str,
        *,
        token_id: str | None,
        principal: str,
        resource: str,
        per_token: int | None,
        per_principal: int | None,
        lease: timedelta,
    ) -> Refusal | None: ...

    async def release_session_slot(self, slot_id: str) -> None: ...

    async def renew_session_slots(self, slot_ids: list[str], lease: timedelta) -> int: ...


@dataclass(frozen=True, slots=True)
class SessionCaps:
    """None: no cap. `lease_seconds`: how long a slot outlives a process that stopped renewing it."""

    per_agent: int | None = 10
    per_token: int | None = 5
    lease_seconds: float = 30.0


class SessionCapReached(ClientRefused):
    def __init__(self, message: str) -> None:
        super().__init__(
            message, sqlstate="53300", hint="close a session you no longer need, then connect again",
            reason="session_cap",
        )


class Slot:
    """A held session slot; `release` is idempotent and never raises."""

    def __init__(self, admission: Admission, slot_id: str) -> None:
        self._admission = admission
        self.slot_id = slot_id
        self._released = False

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._admission.release(self.slot_id)


class Admission:
    def __init__(self, store: SlotStore, caps: SessionCaps) -> None:
        self.store = store
        self.caps = caps
        self._lease = timedelta(seconds=caps.lease_seconds)
        self._held: set[str] = set()

    @property
    def held(self) -> int:
        """Slots this process holds now."""
        return len(self._held)

    async def admit(self, grant: Grant, *, resource: str) -> Slot:
        caps = self.caps
        per_agent = caps.per_agent if grant.principal.startswith(AGENT_PREFIX) else None
        slot_id = secrets.token_hex(16)
        try:
            full = await self.store.admit_session(
                slot_id,
                token_id=grant.token_id,
                principal=grant.principal,
                resource=resource,
                per_token=caps.per_token,
                per_principal=per_agent,
                lease=self._lease,
            )
        except StoreError as exc:
            # Fail closed: a cap that cannot be counted is not known to be respected.
            log.warning("session_admission_unavailable", error=type(exc).__name__)
            raise ClientRefused("the gateway cannot count this client's sessions right now", sqlstate="57P03") from None
        if full is not None:
            SESSION_CAP_REFUSALS.labels(resource, full).inc()
            limit = caps.per_token if full == "token" else caps.per_agent
            log.warning("session_cap_reached", principal=grant.principal, resource=resource, limit=full)
            raise SessionCapReached(
                f"too many concurrent sessions for this {full}: the gateway allows {limit} "
                f"(proxy.max_sessions_per_{full})"
            )
        self._held.add(slot_id)
        return Slot(self, slot_id)

    async def release(self, slot_id: str) -> None:
        self._held.discard(slot_id)
        try:
            # Shielded: a session task cancelled at shutdown still gives its slot back.
            await asyncio.shield(self.store.release_session_slot(slot_id))
        except StoreError as exc:
            # The lease lapses on its own: not renewed any more, it is gone within lease_seconds.
            log.warning("session_slot_release_failed", error=type(exc).__name__)

    async def run(self) -> None:
        """Renew this process's slots until cancelled (a third of the lease between renewals)."""
        interval = self.caps.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self._held:
                continue
            try:
                await self.store.renew_session_slots(sorted(self._held), self._lease)
            except StoreError as exc:  # retried next time; sessions go on meanwhile
                log.warning("session_slot_renewal_failed", error=type(exc).__name__)
