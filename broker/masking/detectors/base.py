"""What a content detector is, and the cheap byte-level conditions the scanner gates on.

A detector finds spans inside a value and says what each span becomes. Its `rare`,
`min_run` and `min_digits` declare a *necessary* condition for any span it would mask:

- `rare`: one of these bytes occurs in the value (checked with memchr, ~30 ns);
- `min_run`: the value holds at least this many consecutive `RUN_CHARS` (every token, key,
  hash and base64 body is such a run);
- `min_digits`: the value holds this many digits in a row once spaces and dashes are removed.

The scanner ORs these over the enabled detectors and skips the regexes when none holds; a
detector that declared a condition its pattern can violate would leak, so each module's
tests check its positives against its own declaration.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

RUN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+/=.-"
DIGITS = b"0123456789"


def _table(members: bytes, hit: bytes) -> bytes:
    table = bytearray(b"." * 256)
    for c in members:
        table[c] = hit[0]
    return bytes(table)


# bytes.translate maps a value to '.'/'a' (or '.'/'0') so that a plain substring search for
# 'aaaa…' finds runs: both steps run in C, which is what keeps the no-match path cheap.
RUN_TABLE = _table(RUN_CHARS, b"a")
DIGIT_TABLE = _table(DIGITS, b"0")
DIGIT_SEPARATORS = b" -"


def longest_run_at_least(value: bytes, n: int) -> bool:
    return len(value) >= n and value.translate(RUN_TABLE).find(b"a" * n) >= 0


def digits_at_least(value: bytes, n: int) -> bool:
    return len(value) >= n and value.translate(DIGIT_TABLE, DIGIT_SEPARATORS).find(b"0" * n) >= 0


def label(kind: str) -> bytes:
    """The replacement of a secret: names the kind, reveals nothing (not even the length)."""
    return b"[masked:" + kind.encode("ascii") + b"]"


Replace = Callable[[re.Match[bytes]], "bytes | None"]


def _always(_: bytes) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Detector:
    """One family of sensitive content.

    `replace(match)` returns the replacement of the whole match, or None when validation
    (Luhn, JWT header, ...) says the candidate is not one after all. `quick(value)` is an
    optional cheap pre-check run before the regex on values the scanner already let through.
    """

    name: str
    pattern: re.Pattern[bytes]
    replace: Replace
    rare: bytes = b""
    min_run: int = 0
    min_digits: int = 0
    quick: Callable[[bytes], bool] = _always

    def redact(self, value: bytes) -> bytes:
        """`value` with every validated span replaced; the same object when nothing was."""
        if not self.quick(value):
            return value
        pieces: list[bytes] | None = None
        last = 0
        for m in self.pattern.finditer(value):
            replacement = self.replace(m)
            if replacement is None:
                continue
            if pieces is None:
                pieces = []
            pieces.append(value[last : m.start()])
            pieces.append(replacement)
            last = m.end()
        if pieces is None:
            return value
        pieces.append(value[last:])
        return b"".join(pieces)

    def could_match(self, value: bytes) -> bool:
        """The declared necessary condition (used by tests to check the declaration)."""
        if any(b in value for b in self.rare):
            return True
        if self.min_run and longest_run_at_least(value, self.min_run):
            return True
        return bool(self.min_digits) and digits_at_least(value, self.min_digits)
