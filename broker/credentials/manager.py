"""Routes each resource's credentials to its provider and keeps the lease ledger.

    CredentialManager.acquire   provider.acquire, then the ledger row (revoked again if the
                                row cannot be written: an unrecorded lease could outlive us)
    CredentialManager.release   provider.release, then ledger `revoked_at`; a failure is
                                logged and counted, and the reaper retries

An acquire whose caller is cancelled (the proxy stopping while Vault is slow) still runs to
its end, and what it brings is released at once: a lease nobody holds is never left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import structlog

from broker.config import Settings
from broker.credentials.base import Credential, CredentialProvider
from broker.credentials.ledger import LeaseLedger
from broker.credentials.local import LocalIssuer
from broker.credentials.static import StaticProvider
from broker.credentials.vault import VaultProvider
from broker.exceptions import CredentialError, CredentialSourceUnavailable, StoreError
from broker.store.audit import AuditRepository

log = structlog.get_logger("jitgate.credentials")


class CredentialManager:
    def __init__(self, providers: Mapping[str, CredentialProvider], ledger: LeaseLedger | None = None) -> None:
        self.providers = dict(providers)
        self.ledger = ledger
        self._abandoned: set[asyncio.Task[None]] = set()  # releases of credentials nobody took

    async def acquire(self, *, resource: str, role: str, session_id: str) -> Credential:
        provider = self.providers.get(resource)
        if provider is None:
            raise CredentialError(f"no credential provider for resource {resource!r}")
        work = asyncio.ensure_future(self._acquire(provider, resource=resource, role=role, session_id=session_id))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            work.add_done_callback(self._release_abandoned)
            raise

    def _release_abandoned(self, work: asyncio.Future[Credential]) -> None:
        if work.cancelled() or work.exception() is not None:
            return
        credential = work.result()
        log.warning("abandoned_credential_released", resource=credential.resource, lease_id=credential.lease_id)
        task = asyncio.get_running_loop().create_task(self.release(credential), name="release abandoned credential")
        self._abandoned.add(task)
        task.add_done_callback(self._abandoned.discard)

    async def _acquire(self, provider: CredentialProvider, *, resource: str, role: str, session_id: str) -> Credential:
        credential = await provider.acquire(resource=resource, role=role, session_id=session_id)
        if self.ledger is not None and credential.lease_id:
            try:
                await self.ledger.issued(credential, session_id=session_id)
            except StoreError:
                await self._revoke_quietly(provider, credential)
                raise CredentialSourceUnavailable("the gateway cannot record the credential's lease") from None
        return credential

    async def release(self, credential: Credential) -> None:
        """Never raises: what could not be revoked now stays outstanding for the reaper."""
        if not credential.lease_id:
            return
        provider = self.providers[credential.resource]
        try:
            await provider.release(credential)
        except CredentialError as exc:
            log.warning("lease_revoke_failed", lease_id=credential.lease_id, error=str(exc), detail=exc.detail)
            if self.ledger is not None:
                try:
                    await self.ledger.failed(credential.lease_id)
                except StoreError:
                    pass
            return
        if self.ledger is not None:
            try:
                await self.ledger.revoked(credential.lease_id)
            except StoreError:
                log.warning("lease_ledger_update_failed", lease_id=credential.lease_id)

    async def aclose(self) -> None:
        if self._abandoned:
            await asyncio.wait(list(self._abandoned), timeout=10)
        seen: set[int] = set()
        for provider in self.providers.values():
            if id(provider) not in seen:
                seen.add(id(provider))
                await provider.aclose()

    async def _revoke_quietly(self, provider: CredentialProvider, credential: Credential) -> None:
        try:
            await provider.release(credential)
        except CredentialError:
            log.warning("lease_revoke_failed", lease_id=credential.lease_id)


def build_manager(settings: Settings, audit: AuditRepository | None = None) -> CredentialManager:
    """One provider per resource (a single shared Vault client), with the lease ledger written
    through `audit` (`store.audit`); none without it."""
    ledger = LeaseLedger(audit) if audit is not None else None
    providers: dict[str, CredentialProvider] = {}
    vault: VaultProvider | None = None
    for name, res in settings.resources.items():
        conf = res.credentials
        if conf.provider == "vault":
            if vault is None:
                assert settings.vault is not None  # the config validator insists
                vault_resources = {
                    n: r.credentials for n, r in settings.resources.items() if r.credentials.provider == "vault"
                }
                vault = VaultProvider(
                    settings.vault, vault_resources, on_renewed=ledger.renewed if ledger is not None else None
                )
            providers[name] = vault
        elif conf.provider == "local":
            providers[name] = LocalIssuer(name, conf)
        else:
            up = res.upstream
            assert up.username is not None  # the config validator insists
            password = up.password.get_secret_value() if up.password else ""
            providers[name] = StaticProvider(name, up.username.get_secret_value(), password)
    return CredentialManager(providers, ledger)
