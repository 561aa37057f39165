"""Secrets written as assignments in free text: ``password=hunter22``, ``api_key: abc123...``.

Off by default (enable it with ``detectors: [..., assignment]``): log lines and config
dumps benefit, prose mentioning "the token: ..." pays with false positives. The key and
separator stay; the value (6+ characters up to a quote, space, ``&``, ``,`` or ``;``)
becomes ``****``.
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector

_NAME = (
    rb"(?:[A-Za-z0-9]{1,32}[_-]){0,4}"  # aws_, client-, ...
    rb"(?:api[_-]?key|apikey|secret|token|password|passwd|pwd)"
    rb"(?:[_-][A-Za-z0-9]{1,32}){0,3}"  # _access_key, _hash, ...
)
PATTERN = re.compile(
    rb"(?i)((?<![A-Za-z0-9_-])" + _NAME + rb"[\"']?\s{0,8}[:=]\s{0,8}[\"']?)[^\s\"'&,;]{6,}"
)


def _replace(m: re.Match[bytes]) -> bytes:
    return m.group(1) + b"****"


DETECTOR = Detector(
    name="assignment",
    pattern=PATTERN,
    replace=_replace,
    rare=b"=:",
    quick=lambda v: 61 in v or 58 in v,
)
