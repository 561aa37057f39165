"""E-mail addresses, anywhere in a value: ``jane.doe@example.com`` -> ``j***@example.com``.

The domain stays (it is rarely personal and it keeps results groupable by provider); the
local part keeps its first character only. The local part may only start where a run of
address characters starts, and runs are matched possessively: each ``@`` is tried once, so
adversarial values (long runs, many ``@``) cost linear time.
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector

# Longer than RFC 5321's 64 so that an over-long local part is still hidden.
_LOCAL = rb"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,256}+"
_DOMAIN = rb"(?:[A-Za-z0-9-]{1,63}+\.){1,8}+[A-Za-z]{2,24}+(?![A-Za-z0-9-])"

PATTERN = re.compile(rb"(" + _LOCAL + rb")@(" + _DOMAIN + rb")")
FULL = re.compile(rb"\s*(" + _LOCAL + rb")@(" + _DOMAIN + rb")\s*\Z")


def shape(local: bytes, domain: bytes) -> bytes:
    first = local[:1] if local[:1].isalnum() else b"*"
    return first + b"***@" + domain


def _replace(m: re.Match[bytes]) -> bytes:
    return shape(m.group(1), m.group(2))


def mask_whole(value: bytes) -> bytes | None:
    """The e-mail shape of a value that is one address, else None."""
    if 64 not in value:  # no '@', which FULL requires: skip the regex (most values masked whole)
        return None
    m = FULL.match(value)
    return shape(m.group(1), m.group(2)) if m else None


DETECTOR: Detector = Detector(
    name="email",
    pattern=PATTERN,
    replace=_replace,
    rare=b"@",
    quick=lambda v: 64 in v,  # '@'
)
