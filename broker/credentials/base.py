"""What every credential provider gives and takes.

A provider issues one upstream login per session and takes it back when the session ends.
The `Credential` it returns is the only object that holds the upstream user name and
password: its repr shows neither, and nothing in jitgate logs, records or returns them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Credential:
    """One session's upstream login. `lease_id` names it to whoever revokes it later."""

    username: str = field(repr=False)
    password: str = field(repr=False)
    resource: str = ""
    role: str = ""
    lease_id: str | None = None
    lease_duration: float = 0.0  # seconds; 0: not leased (static)
    renewable: bool = False


#: Called after a lease was renewed, with the lease id and its new expiry (the ledger's heartbeat).
RenewalHook = Callable[[str, datetime], Awaitable[None]]


class CredentialProvider(Protocol):
    async def acquire(self, *, resource: str, role: str, session_id: str) -> Credential:
        """A fresh credential; raise CredentialSourceUnavailable when the source is down,
        CredentialError when it refuses (unknown role, permission denied)."""
        ...

    async def release(self, credential: Credential) -> None:
        """Revoke it now (session end). Raise CredentialError when that failed: the lease
        stays outstanding in the ledger and the reaper retries."""
        ...

    async def revoke(self, lease_id: str) -> None:
        """Revoke by lease id alone (the reaper holds no password). Idempotent."""
        ...

    async def aclose(self) -> None:
        """Stop background work (renewals). Outstanding leases are left to the reaper."""
        ...
