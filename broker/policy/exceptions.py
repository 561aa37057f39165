"""Exceptions raised by the policy engine.

The tree::

    JitgateError                      (broker.exceptions)
    ├── PolicyError                   base of everything broker.policy raises on purpose
    │   └── PolicyConfigError         a policy file or preset name is invalid
    └── ConfigError                   (broker.exceptions)
        └── PolicyConfigError         ... so a caller loading configuration catches both

Classifying a statement never raises: SQL the parser rejects is a `block` verdict, not an
exception. Only building an engine (`PolicyEngine.preset`, `PolicyEngine.from_file`,
`load_policy`) can fail.

`PolicyConfigError.errors` holds ``(key path, message)`` pairs such as
``("rules[2].decision", "must be one of allow, review, block")``; `str()` shows them one per
line under a line naming the file.
"""

from __future__ import annotations

from broker.exceptions import ConfigError, JitgateError


class PolicyError(JitgateError):
    """Base class of the errors the policy engine raises on purpose."""


class PolicyConfigError(PolicyError, ConfigError):
    """A policy file, or a preset name, could not be turned into a policy."""

    def __init__(
        self,
        errors: list[tuple[str, str]],
        *,
        source: str | None = None,
    ) -> None:
        where = f"invalid policy {source}" if source else "invalid policy"
        ConfigError.__init__(self, where, source=source, errors=errors)
