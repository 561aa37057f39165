"""Revokes leases that outlived their session, without Celery.

Due are the ledger's unrevoked leases whose session ended (a revocation that failed while
Vault was down) or whose expiry passed without a renewal (the proxy that held them died).
`reap()` is one idempotent pass any process can run; `Reaper` runs it periodically in the
proxy's event loop, and a Celery beat task may call `reap()` as well.

A revocation that keeps failing is not a blip: past STUCK_AFTER consecutive failures of one
lease (the ledger's `attempts`, shared by every process that tries) each further failure is
an error-level `lease_revoke_stuck` naming the lease, and
`jitgate_vault_errors_total{kind="revoke_stuck"}` counts the lease once. The usual cause: the
login owns objects or holds grants in a database other than the one the revocation runs in,
where REASSIGN/DROP OWNED do not reach, so DROP ROLE fails until someone cleans them up
(infra/vault/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from broker import metrics
from broker.credentials.base import CredentialProvider
from broker.credentials.ledger import LeaseLedger, OutstandingLease
from broker.exceptions import CredentialError, StoreError

log = structlog.get_logger("jitgate.credentials")

#: Consecutive failed revocations of one lease after which it is reported as stuck.
STUCK_AFTER = 5
_STUCK_HINT = ("objects or grants of the login in another database block DROP ROLE: run REASSIGN OWNED "
               "and DROP OWNED for it in each database (infra/vault/README.md)")


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
            await ledger.failed(lease.lease_id)
            _report_failure(lease, exc)
            continue
        revoked += 1
        await ledger.revoked(lease.lease_id)
        log.info("lease_reaped", lease_id=lease.lease_id, session_id=lease.session_id)
    return ReapResult(revoked, failed)


def _report_failure(lease: OutstandingLease, exc: CredentialError) -> None:
    attempts = lease.attempts + 1  # this one included
    if attempts < STUCK_AFTER:
        log.warning("reaper_revoke_failed", lease_id=lease.lease_id, attempts=attempts, error=str(exc),
                    detail=exc.detail)
        return
    if attempts == STUCK_AFTER:
        metrics.VAULT_ERRORS.labels("revoke_stuck").inc()
    log.error("lease_revoke_stuck", lease_id=lease.lease_id, resource=lease.resource,
              session_id=lease.session_id, attempts=attempts, error=str(exc), detail=exc.detail,
              hint=_STUCK_HINT)


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
