"""Passwords inside URLs: ``postgresql://app:s3cret@db/x`` -> ``postgresql://app:****@db/x``.

Only the password is replaced, with four stars, so the URL still reads as a URL and the
user and host (useful, not secret) stay. Runs before the e-mail detector, which would
otherwise see ``s3cret@db.example.com`` as an address and show its first character.
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector

PATTERN = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]{0,31}://[^\s:/?#@]{0,256}:)[^\s/?#@]{1,256}(?=@)")


def _replace(m: re.Match[bytes]) -> bytes:
    return m.group(1) + b"****"


DETECTOR = Detector(
    name="url_credentials",
    pattern=PATTERN,
    replace=_replace,
    rare=b"@",
    quick=lambda v: 64 in v and v.find(b"://") >= 0,
)
