"""Text a client chose, made safe to keep: what it claims or names at connect time (the user
name of a refused login, `application_name`, the stated `jitgate.intent`) is stored in the
session and audit records, exported to a SIEM and shown to approvers, so a secret pasted
into it would be kept for good.

    client_text("deploy, token jgt_abc...")  # -> "(not recorded: looks like a gateway token)"
    client_text("fix with password=hunter22")  # -> "fix with password=****"

A value holding a gateway token's prefix anywhere is replaced whole (a token cut or
reworded is still a token); the masking package's secret detectors (private keys, JWTs,
provider API keys, password hashes, URL passwords, ``key=value`` secrets) replace just
the secret. Personal data detectors (e-mail, phone, ...) do not apply: names and reasons
are what these fields are for.
"""

from __future__ import annotations

from broker.masking.detectors import DETECTORS

#: broker.store.tokens.TOKEN_PREFIX (not imported: the audit package does not need the store).
TOKEN_PREFIX = "jgt_"  # noqa: S105 - a prefix, not a secret
TOKEN_REPLACEMENT = "(not recorded: looks like a gateway token)"  # noqa: S105 - says one was left out
SECRET_DETECTORS = tuple(
    DETECTORS[name] for name in ("private_key", "jwt", "cloud_key", "password_hash", "url_credentials", "assignment")
)


def client_text(value: str | None, *, limit: int | None = None) -> str | None:
    """`value` without secrets, cut to `limit` characters (after the checks); None for empty."""
    if not value:
        return None
    if TOKEN_PREFIX in value.lower():
        return TOKEN_REPLACEMENT
    raw = value.encode("utf-8", "replace")
    for detector in SECRET_DETECTORS:
        raw = detector.redact(raw)
    text = raw.decode("utf-8", "replace")
    return text[:limit] if limit is not None else text
