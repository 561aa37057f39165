"""Configuration of credential providers: `resources.<name>.credentials` and `vault:`.

Example::

    vault:
      address: https://vault.internal:8200
      auth: {method: approle, role_id: 6f1c..., secret_id: ...}
      # or auth: {method: jwt, role: jitgate, jwt_file: /var/run/secrets/token}
    resources:
      app:
        upstream: {host: db, dbname: app}              # no username: Vault issues one per session
        credentials: {provider: vault, mount: database, roles: {readwrite: app-rw, readonly: app-ro}}
      legacy:
        upstream: {host: old-db, dbname: app}
        credentials: {provider: local, admin_dsn: postgresql://jitgate_admin:...@old-db/app,
                      roles: {readwrite: app_rw}, ttl_seconds: 3600}

A grant's role (`readwrite`) is mapped through `roles` to the Vault role (or, for `local`,
to the database role the issued login becomes a member of); an unmapped grant role is used
as is by Vault and refused by the local issuer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_core import PydanticCustomError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CredentialSettings(_Section):
    """Where a resource's per-session upstream login comes from."""

    provider: Literal["static", "vault", "local"] = "static"
    roles: dict[str, str] = Field(default_factory=dict, description="grant role -> Vault role / member role")
    mount: str = Field(default="database", description="vault: mount path of the database secrets engine")
    admin_dsn: SecretStr | None = Field(default=None, description="local: a DSN allowed to CREATE/DROP ROLE")
    ttl_seconds: float = Field(default=3600.0, gt=0, description="local: VALID UNTIL of issued logins")

    @model_validator(mode="after")
    def _needs(self) -> CredentialSettings:
        if self.provider == "local":
            if self.admin_dsn is None:
                raise PydanticCustomError("credentials", "admin_dsn is required with provider 'local'")
            if not self.roles:
                raise PydanticCustomError("credentials", "roles is required with provider 'local'")
        return self


class VaultAuthSettings(_Section):
    """How the gateway logs in to Vault. `token` is for development only."""

    method: Literal["approle", "jwt", "token"] = "approle"
    mount: str | None = Field(default=None, description="auth mount path; default: the method name")
    role_id: str | None = None
    secret_id: SecretStr | None = None
    role: str | None = Field(default=None, description="jwt: the Vault role to log in as")
    jwt: SecretStr | None = None
    jwt_file: Path | None = Field(default=None, description="jwt: read the token from this file at each login")
    token: SecretStr | None = None

    @model_validator(mode="after")
    def _needs(self) -> VaultAuthSettings:
        missing = {
            "approle": [k for k in ("role_id", "secret_id") if getattr(self, k) is None],
            "jwt": (["role"] if self.role is None else [])
            + (["jwt or jwt_file"] if self.jwt is None and self.jwt_file is None else []),
            "token": ["token"] if self.token is None else [],
        }[self.method]
        if missing:
            raise PydanticCustomError(
                "vault_auth",
                "auth method '{method}' needs {missing}",
                {"method": self.method, "missing": ", ".join(missing)},
            )
        return self


class VaultSettings(_Section):
    """The Vault / OpenBao server the gateway gets dynamic credentials from."""

    address: str = "http://127.0.0.1:8200"
    namespace: str | None = None
    auth: VaultAuthSettings
    ca_cert: Path | None = None
    timeout_seconds: float = Field(default=5.0, gt=0, description="per Vault request")
    renew_fraction: float = Field(default=2 / 3, gt=0, lt=1, description="renew a lease at this part of its TTL")
