"""JSON Web Tokens (JWS compact form, and the five-part JWE form).

A candidate is ``eyJ`` (base64url of ``{"``) followed by dot-separated base64url segments;
it counts only when its first segment decodes to a JSON object with an ``"alg"`` member,
so dotted identifiers that merely start with ``eyJ`` are left alone. The whole token becomes
``[masked:jwt]``: its claims (subject, e-mail, scopes) are as sensitive as its signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from broker.masking.detectors.base import Detector, label

# The header of the shortest real token, {"alg":"x"}, is 14 base64url characters.
PATTERN = re.compile(rb"eyJ[A-Za-z0-9_-]{10,}(?:\.[A-Za-z0-9_-]*){2,4}")
MASK = label("jwt")


def header_ok(segment: bytes) -> bool:
    try:
        raw = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
        header = json.loads(raw)
    except (binascii.Error, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return False
    return isinstance(header, dict) and "alg" in header


def _replace(m: re.Match[bytes]) -> bytes | None:
    token = m.group(0)
    return MASK if header_ok(token[: token.index(b".")]) else None


DETECTOR = Detector(
    name="jwt",
    pattern=PATTERN,
    replace=_replace,
    min_run=16,  # the whole token is one run: 14-char header + two dots at least
    quick=lambda v: v.find(b"eyJ") >= 0,
)
