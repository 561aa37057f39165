"""Dynamic credentials from Vault / OpenBao's database secrets engine, through hvac.

Per session: `GET <mount>/creds/<role>` issues a login with a lease; a task renews the lease
at `renew_fraction` of its duration while the session lives; `PUT sys/leases/revoke` at
session end drops the role. A renewal that fails (Vault down) is logged and counted, never
fatal to the session: the upstream connection is already authenticated, and a lease that
could not be revoked stays outstanding in the ledger for the reaper.

The gateway logs in with AppRole or JWT (a token only for development); when its own token
expires, a 403 triggers one fresh login and a retry.

hvac is synchronous, so every call runs in a worker thread under a timeout. Messages name
the operation and the error class only: hvac's messages can quote response bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog

from broker import metrics
from broker.credentials.base import Credential, RenewalHook
from broker.credentials.settings import CredentialSettings, VaultSettings
from broker.exceptions import CredentialError, CredentialSourceUnavailable

log = structlog.get_logger("jitgate.credentials")
T = TypeVar("T")

_DOWN = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    hvac.exceptions.VaultDown,
    hvac.exceptions.InternalServerError,
    hvac.exceptions.BadGateway,
    TimeoutError,
)
_RETRY_AFTER_FAILURE = 5.0


class VaultProvider:
    """One Vault client shared by every resource whose credentials come from Vault."""

    def __init__(
        self,
        settings: VaultSettings,
        resources: dict[str, CredentialSettings],
        *,
        on_renewed: RenewalHook | None = None,
    ) -> None:
        self._settings = settings
        self._resources = resources
        self.on_renewed = on_renewed
        self._client: hvac.Client | None = None
        self._login_lock = asyncio.Lock()
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._token_task: asyncio.Task[None] | None = None
        self._late: set[asyncio.Task[None]] = set()  # revocations of leases nobody took
        #: Renewal failures since start, per lease: what the mid-session outage test and
        #: /metrics-minded operators look at.
        self.renewal_failures: dict[str, int] = {}

    # --- the provider interface -----------------------------------------------------------

    async def acquire(self, *, resource: str, role: str, session_id: str) -> Credential:
        conf = self._resources.get(resource)
        if conf is None:
            raise CredentialError(f"resource {resource!r} has no Vault credentials configured")
        vault_role = conf.roles.get(role, role)
        answer = await self._call(
            f"issue a credential for role {vault_role!r}",
            lambda c: c.secrets.database.generate_credentials(name=vault_role, mount_point=conf.mount),
            issues_lease=True,
        )
        data = answer.get("data") or {}
        lease_id = answer.get("lease_id") or None
        if not data.get("username") or not data.get("password"):
            raise CredentialError(f"Vault answered role {vault_role!r} without a username and password")
        credential = Credential(
            username=data["username"],
            password=data["password"],
            resource=resource,
            role=role,
            lease_id=lease_id,
            lease_duration=float(answer.get("lease_duration") or 0),
            renewable=bool(answer.get("renewable")),
        )
        if lease_id and credential.renewable and credential.lease_duration > 0:
            self._renewals[lease_id] = asyncio.create_task(
                self._renew_loop(lease_id, credential.lease_duration), name=f"renew {lease_id}"
            )
        log.info("credential_issued", resource=resource, role=role, session_id=session_id, lease_id=lease_id)
        return credential

    async def release(self, credential: Credential) -> None:
        if credential.lease_id:
            await self.revoke(credential.lease_id)

    async def revoke(self, lease_id: str) -> None:
        task = self._renewals.pop(lease_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._call("revoke a lease", lambda c: c.sys.revoke_lease(lease_id=lease_id))
        self.renewal_failures.pop(lease_id, None)
        log.info("lease_revoked", lease_id=lease_id)

    async def aclose(self) -> None:
        if self._late:  # a late lease being revoked: let it finish, briefly
            await asyncio.wait(list(self._late), timeout=self._settings.timeout_seconds * 2)
        tasks = list(self._renewals.values())
        self._renewals.clear()
        if self._token_task is not None:
            tasks.append(self._token_task)
            self._token_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            self._client.adapter.close()

    # --- renewal ---------------------------------------------------------------------------

    async def _renew_loop(self, lease_id: str, duration: float) -> None:
        delay = duration * self._settings.renew_fraction
        while True:
            await asyncio.sleep(max(delay, 0.5))
            try:
                answer = await self._call(
                    "renew a lease", lambda c: c.sys.renew_lease(lease_id=lease_id, increment=int(duration))
                )
            except CredentialError as exc:
                # Not fatal: the session's connection is authenticated already. Retry soon;
                # if the lease lapses meanwhile, Vault drops the role and the session ends.
                failures = self.renewal_failures.get(lease_id, 0) + 1
                self.renewal_failures[lease_id] = failures
                log.warning("lease_renewal_failed", lease_id=lease_id, failures=failures, error=str(exc))
                delay = min(_RETRY_AFTER_FAILURE, duration / 3)
                continue
            granted = float(answer.get("lease_duration") or 0)
            if granted <= 0:
                return  # max_ttl reached: nothing left to renew
            delay = granted * self._settings.renew_fraction
            if self.on_renewed is not None:
                expires = datetime.now(UTC) + timedelta(seconds=granted)
                try:
                    await self.on_renewed(lease_id, expires)
                except Exception as exc:  # the ledger is advisory; the lease itself is fine
                    log.warning("lease_heartbeat_failed", lease_id=lease_id, error=type(exc).__name__)

    # --- talking to Vault ------------------------------------------------------------------

    async def _call(self, action: str, fn: Callable[[hvac.Client], T], *, issues_lease: bool = False) -> T:
        try:
            return await self._call_once(action, fn, issues_lease)
        except CredentialSourceUnavailable:
            metrics.VAULT_ERRORS.labels("unreachable").inc()
            raise
        except CredentialError:
            metrics.VAULT_ERRORS.labels("refused").inc()
            raise

    async def _call_once(self, action: str, fn: Callable[[hvac.Client], T], issues_lease: bool) -> T:
        client = await self._logged_in(action)
        try:
            return await self._run(action, fn, client, issues_lease=issues_lease)
        except hvac.exceptions.Forbidden:
            # Most likely our own token expired: log in again once, then give up.
            client = await self._logged_in(action, fresh=True)
            try:
                return await self._run(action, fn, client, issues_lease=issues_lease)
            except hvac.exceptions.Forbidden:
                raise CredentialError(f"Vault refused to {action}", detail="permission denied") from None

    async def _run(
        self, action: str, fn: Callable[[hvac.Client], T], client: hvac.Client, *, issues_lease: bool = False
    ) -> T:
        """`fn` in a worker thread, given up on after twice the request timeout (hvac's own
        timeout is per socket operation, so a slow-dripping Vault could outlast it).

        A thread cannot be stopped: when the wait is given up (that timeout, or the caller
        cancelled) the request may still succeed. If it issues a lease, the late lease is
        revoked as soon as it arrives, so no credential outlives a session that never got it."""
        timeout = self._settings.timeout_seconds
        work = asyncio.ensure_future(asyncio.to_thread(fn, client))
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout * 2)
        except hvac.exceptions.Forbidden:
            raise
        except _DOWN as exc:
            # The address is for operators; the client's error names only the failure.
            log.warning("vault_unreachable", address=self._settings.address, action=action, error=type(exc).__name__)
            raise CredentialSourceUnavailable(
                f"Vault is unreachable, cannot {action}", detail=type(exc).__name__
            ) from None
        except hvac.exceptions.InvalidPath:
            raise CredentialError(f"Vault cannot {action}", detail="no such role or lease") from None
        except hvac.exceptions.VaultError as exc:
            raise CredentialError(f"Vault refused to {action}", detail=type(exc).__name__) from None
        finally:
            if issues_lease and not work.done():
                work.add_done_callback(self._revoke_late)

    def _revoke_late(self, work: asyncio.Future[Any]) -> None:
        """A lease issued after its caller gave up: nobody will use it, revoke it now."""
        if work.cancelled() or work.exception() is not None:
            return
        lease_id = (work.result() or {}).get("lease_id")
        if not lease_id:
            return
        log.warning("late_credential_revoked", lease_id=lease_id)
        metrics.VAULT_ERRORS.labels("late").inc()
        task = asyncio.get_running_loop().create_task(self._revoke_quietly(lease_id), name=f"revoke late {lease_id}")
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _revoke_quietly(self, lease_id: str) -> None:
        try:
            await self.revoke(lease_id)
        except CredentialError as exc:
            # Vault answered the issue a moment ago; if it fails now, the lease's TTL ends it.
            log.warning("late_credential_revoke_failed", lease_id=lease_id, error=str(exc))

    async def _logged_in(self, action: str, *, fresh: bool = False) -> hvac.Client:
        async with self._login_lock:
            if self._client is None or fresh:
                client = self._new_client()
                try:
                    ttl, renewable = await self._run(f"log in ({action})", self._login, client)
                except hvac.exceptions.Forbidden:
                    raise CredentialError("Vault refused the gateway's login", detail="permission denied") from None
                self._client = client
                if self._token_task is not None:
                    self._token_task.cancel()
                    self._token_task = None
                if renewable and ttl > 0:
                    self._token_task = asyncio.create_task(self._renew_token(ttl), name="renew gateway token")
            return self._client

    async def _renew_token(self, ttl: float) -> None:
        """Keep the gateway's own token alive: Vault revokes every lease a token created
        when that token expires, which would end all sessions at once. With a periodic
        token (AppRole `token_period`) this renews forever; at a token's max TTL the next
        403 logs in again, and sessions older than that lose their role."""
        delay = ttl * self._settings.renew_fraction
        while True:
            await asyncio.sleep(max(delay, 0.5))
            try:
                answer = await self._call("renew the gateway token", lambda c: c.auth.token.renew_self())
            except CredentialError as exc:
                log.warning("vault_token_renewal_failed", error=str(exc))
                delay = min(_RETRY_AFTER_FAILURE, ttl / 3)
                continue
            granted = float((answer.get("auth") or {}).get("lease_duration") or 0)
            if granted <= 0:
                return
            delay = granted * self._settings.renew_fraction

    def _new_client(self) -> hvac.Client:
        s = self._settings
        verify: Any = str(s.ca_cert) if s.ca_cert else True
        return hvac.Client(url=s.address, namespace=s.namespace, verify=verify, timeout=s.timeout_seconds)

    def _login(self, client: hvac.Client) -> tuple[float, bool]:
        """Log in; returns the token's TTL and whether it can be renewed."""
        auth = self._settings.auth
        mount = auth.mount or auth.method
        if auth.method == "token":
            assert auth.token is not None
            client.token = auth.token.get_secret_value()
            answer = client.auth.token.lookup_self().get("data") or {}
            return float(answer.get("ttl") or 0), bool(answer.get("renewable"))
        if auth.method == "approle":
            assert auth.role_id is not None and auth.secret_id is not None
            answer = client.auth.approle.login(
                role_id=auth.role_id, secret_id=auth.secret_id.get_secret_value(), mount_point=mount
            )
        else:
            jwt = auth.jwt.get_secret_value() if auth.jwt else ""
            if auth.jwt_file is not None:
                jwt = auth.jwt_file.read_text().strip()  # re-read: workload tokens rotate
            answer = client.auth.jwt.jwt_login(role=auth.role, jwt=jwt, path=mount)
        info = answer.get("auth") or {}
        return float(info.get("lease_duration") or 0), bool(info.get("renewable"))
