"""Revokes leases that outlived their session, without Celery.

Due are the ledger's unrevoked leases whose session ended (a revocation that failed while
Vault was down) or whose expiry passed without a renewal (the proxy that held them died).
`reap()` is one idempotent pass any process can run; `Reaper` runs it periodically in the
proxy's event loop, and a Celery beat task may call `reap()` as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from broker.credentials.base import CredentialProvider
from broker.credentials.ledger import LeaseLedger
from broker.exceptions import CredentialError, StoreError

log = structlog.get_logger("jitgate.credentials")


@dataclass(frozen=True, slots=True)
class ReapResult:
    revoked: int
    failed: int


async def reap(
    ledger: LeaseLedger, providers: Mapping[str, CredentialProvider], *, everything: bool = False
) -> ReapResult:
    """Revoke the due leases, or with `everything` every outstanding one (a shutdown)."""
    revoked = failed = 0
    for lease in await (ledger.outstanding() if everything else ledger.due()):
        provider = providers.get(lease.resource)
        if provider is None:
            log.warning("lease_without_provider", lease_id=lease.lease_id, resource=lease.resource)
            continue
        try:
            await provider.revoke(lease.lease_id)
        except CredentialError as exc:
            failed += 1
            log.warning("reaper_revoke_failed", lease_id=lease.lease_id, error=str(exc), detail=exc.detail)
            await ledger.failed(lease.lease_id)
            continue
        revoked += 1
        await ledger.revoked(lease.lease_id)
        log.info("lease_reaped", lease_id=lease.lease_id, session_id=lease.session_id)
    return ReapResult(revoked, failed)


class Reaper:
    def __init__(
        self, ledger: LeaseLedger, providers: Mapping[str, CredentialProvider], *, interval: float = 30.0
    ) -> None:
        self._ledger = ledger
        self._providers = providers
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lease reaper")

    async def _run(self) -> None:
        while True:
            try:
                await reap(self._ledger, self._providers)
            except StoreError as exc:
                log.warning("reaper_store_unavailable", error=str(exc))
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
