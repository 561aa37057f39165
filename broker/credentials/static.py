"""The upstream login configured for a resource, shared by all its sessions.

For upstreams without Vault or an admin role; nothing is issued or revoked. The login is
still held by the gateway alone: the agent only ever sees its gateway token.
"""

from __future__ import annotations

from broker.credentials.base import Credential
from broker.exceptions import CredentialError


class StaticProvider:
    def __init__(self, resource: str, username: str, password: str) -> None:
        self._resource = resource
        self._username = username
        self._password = password

    async def acquire(self, *, resource: str, role: str, session_id: str) -> Credential:
        return Credential(username=self._username, password=self._password, resource=resource, role=role)

    async def release(self, credential: Credential) -> None:
        return None

    async def revoke(self, lease_id: str) -> None:
        raise CredentialError("static credentials have no leases")

    async def aclose(self) -> None:
        return None
