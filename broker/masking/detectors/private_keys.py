"""PEM private-key blocks (PKCS#1, PKCS#8, SEC1, OpenSSH, encrypted, PGP armour).

From ``-----BEGIN ... PRIVATE KEY-----`` to the matching END line (or to the end of the
value when the END line is missing: a truncated key is still a key) becomes
``[masked:private-key]``. Blocks with no key material (no base64 run of 13 or more) are left
alone: a bare header reveals nothing, and this keeps the scanner's run condition sound.
Works on JSON-escaped text too, since nothing in the pattern depends on real newlines.
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector, label

_HEAD = rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_TAIL = rb"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
PATTERN = re.compile(_HEAD + rb"[\s\S]*?(?:" + _TAIL + rb"|\Z)")
_MATERIAL = re.compile(rb"[A-Za-z0-9+/=]{13}")
MASK = label("private-key")


def _replace(m: re.Match[bytes]) -> bytes | None:
    return MASK if _MATERIAL.search(m.group(0)) else None


DETECTOR = Detector(
    name="private_key",
    pattern=PATTERN,
    replace=_replace,
    min_run=13,
    quick=lambda v: v.find(b"PRIVATE KEY") >= 0,
)
