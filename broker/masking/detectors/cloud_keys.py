"""API keys and tokens of the big providers, recognised by their documented prefixes.

Each becomes ``[masked:<kind>]``. Prefix-based detection has near-zero false positives,
which is why no generic "high entropy string" rule exists here: UUIDs, hashes of public
data and base64 ids would all trip it. AWS *secret* keys have no prefix and are caught only
by column name or by the optional ``assignment`` detector (``aws_secret_access_key=...``).
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector, label

_KINDS: tuple[tuple[str, bytes], ...] = (
    # AWS access key ids (long-term AKIA, temporary ASIA) and 16 more characters.
    ("aws_key", rb"(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    # GitHub personal, OAuth, user-to-server, server-to-server and refresh tokens.
    ("github_token", rb"gh[pousr]_[A-Za-z0-9]{36,251}(?![A-Za-z0-9])"),
    ("github_token", rb"github_pat_[A-Za-z0-9_]{22,247}(?![A-Za-z0-9_])"),
    # Slack bot, user, app-level, refresh and config tokens.
    ("slack_token", rb"xox[abeoprs]-[A-Za-z0-9-]{10,250}"),
    ("slack_token", rb"xapp-[0-9]-[A-Za-z0-9-]{10,250}"),
    # Stripe secret and restricted keys, live and test (test keys still move test money).
    ("stripe_key", rb"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}"),
    # Google API keys.
    ("google_api_key", rb"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    # Anthropic and OpenAI keys (sk-ant-..., sk-proj-..., legacy sk-<48>). Checked for mixed
    # case and digits in _replace so that hyphenated slugs ("sk-learn-...") are not keys.
    ("anthropic_key", rb"(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,250}"),
    ("openai_key", rb"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,250}"),
)

PATTERN = re.compile(b"|".join(b"(" + p + b")" for _, p in _KINDS))
_MASKS = tuple(label(kind.replace("_", "-")) for kind, _ in _KINDS)
_NEEDS_ENTROPY = frozenset(
    i for i, (kind, _) in enumerate(_KINDS) if kind in ("anthropic_key", "openai_key")
)


def looks_random(token: bytes) -> bool:
    body = token[3:]
    return (
        any(48 <= c <= 57 for c in body)
        and any(65 <= c <= 90 for c in body)
        and any(97 <= c <= 122 for c in body)
    )


def _replace(m: re.Match[bytes]) -> bytes | None:
    index = (m.lastindex or 1) - 1
    if index in _NEEDS_ENTROPY and not looks_random(m.group(0)):
        return None
    return _MASKS[index]


# Every kind starts with one of these literals. Checking them with bytes.find (memchr-fast)
# first matters: the alternation above costs ~0.3 ms per KB of a long alphanumeric run (a
# base64 blob, a hash), because Python's re tries each branch at every position.
_PREFIXES = (b"AKIA", b"ASIA", b"gh", b"xox", b"xapp-", b"k_live_", b"k_test_", b"AIza", b"sk-")


def _has_prefix(value: bytes) -> bool:
    return any(value.find(p) >= 0 for p in _PREFIXES)


DETECTOR = Detector(
    name="cloud_key",
    pattern=PATTERN,
    replace=_replace,
    quick=_has_prefix,
    min_run=15,  # the shortest, a Slack token: "xoxb-" and ten more
)
