"""Exceptions raised by the broker.

The tree::

    JitgateError                    base of everything jitgate raises on purpose
    ├── ConfigError                 invalid or unreadable configuration
    ├── StoreError                  the store failed (unreachable, migration, constraint)
    │   ├── StoreUnavailable        connection-level failure: retry later, fail closed now
    │   └── StoreIntegrityError     a write broke a constraint: retrying will not help
    ├── AuthError                   a credential was refused (wire: SQLSTATE 28P01)
    │   ├── InvalidToken            malformed, unknown, revoked, used, or for another resource
    │   └── ExpiredToken            well-formed and known, but past its expiry
    ├── RecorderClosed              a record arrived after the recorder was closed
    └── CredentialError             no upstream credential could be issued or revoked
        └── CredentialSourceUnavailable  Vault/OpenBao or the admin connection is down:
                                         fail closed (wire: SQLSTATE 08006), retry later

Packages with their own families (`broker.policy`, `broker.masking`) define them in their own
`exceptions.py`, deriving from `JitgateError`.

`AuthError.reason` is a short machine label (`"malformed"`, `"unknown"`, `"revoked"`,
`"wrong_resource"`, `"used"`, `"expired"`) for metrics and audit; `str(error)` is a sentence
that is safe to log but should not be sent to a client verbatim: a client only learns that its
credential was refused.
"""

from __future__ import annotations

from typing import Any


class JitgateError(Exception):
    """Base class of the errors jitgate raises on purpose."""


class ConfigError(JitgateError):
    """The configuration could not be loaded.

    `errors` holds `(dotted.key.path, message)` pairs; `str()` is one line per error,
    preceded by a line naming the source file. `details`, when the errors came from
    validation, holds pydantic's `loc`, `type` and `ctx` of each, in the same order, for
    tools that suggest a fix (`jitgate config check`); never the offending input, which may
    be a secret.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        errors: list[tuple[str, str]] | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        self.source = source
        self.errors = list(errors or [])
        self.details = list(details or [])
        lines = [message]
        lines.extend(f"  {path}: {msg}" if path else f"  {msg}" for path, msg in self.errors)
        super().__init__("\n".join(lines))


class StoreError(JitgateError):
    """The store failed to answer or to write."""


class StoreUnavailable(StoreError):
    """The store could not be reached; the caller should fail closed and may retry later."""


class StoreIntegrityError(StoreError):
    """A write violated a constraint (unknown session, duplicate key); retrying is useless."""


class AuthError(JitgateError):
    """A credential was refused."""

    def __init__(self, message: str, *, reason: str, token_id: str | None = None) -> None:
        self.reason = reason
        self.token_id = token_id  # the refused token's id, when it is a known token (never the token)
        super().__init__(message)


class InvalidToken(AuthError):
    """The gateway token is malformed, unknown, revoked, already used, or for another resource."""


class ExpiredToken(AuthError):
    """The gateway token is past its expiry."""

    def __init__(
        self, message: str = "gateway token expired", *, reason: str = "expired", token_id: str | None = None
    ) -> None:
        super().__init__(message, reason=reason, token_id=token_id)


class RecorderClosed(JitgateError):
    """A statement was handed to a recorder that is closed."""


class CredentialError(JitgateError):
    """A credential provider refused or failed; `detail` is safe for operators and clients.

    Neither the message nor `detail` ever contains an upstream user name or password.
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        self.detail = detail
        super().__init__(message)


class CredentialSourceUnavailable(CredentialError):
    """The credential source (Vault/OpenBao, the admin connection) could not be reached."""
