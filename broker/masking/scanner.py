"""The content scanner: cheap gate first, regexes only when the gate opens.

Nearly every value a database returns holds no secret, so the cost that matters is that of
saying "nothing here". `triggered` answers it for a whole row at once (the row's scanned
values joined by NUL, which no text value contains and which belongs to no run) with a
handful of C-level byte operations: memchr for the rare bytes, then `bytes.translate` +
`find` for long token runs and digit runs (see `detectors.base`). Only when it opens does
`scan` run, per value, the same gate and then the enabled detectors in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.masking.detectors.base import (
    DIGIT_SEPARATORS,
    DIGIT_TABLE,
    RUN_TABLE,
    Detector,
)


def _levels(thresholds: set[int], fill: bytes) -> tuple[tuple[int, bytes], ...]:
    return tuple((k, fill * k) for k in sorted(thresholds))


class Scanner:
    __slots__ = ("_checks", "_rare", "_runs", "_digits", "_max")

    def __init__(self, detectors: Sequence[Detector], *, max_value_bytes: int) -> None:
        rare = sorted({b for d in detectors for b in d.rare})
        # Each rare byte gets a bit, so a detector's rare condition is one AND per value.
        self._rare = tuple((1 << i, b) for i, b in enumerate(rare))
        bit = {b: 1 << i for i, b in enumerate(rare)}
        self._checks = tuple(
            (d, sum(bit[b] for b in set(d.rare)), d.min_run, d.min_digits) for d in detectors
        )
        # The distinct run and digit thresholds, ascending: a value "reaches" the largest one
        # whose needle it contains, and satisfies every detector at or below it.
        self._runs = _levels({d.min_run for d in detectors if d.min_run}, b"a")
        self._digits = _levels({d.min_digits for d in detectors if d.min_digits}, b"0")
        self._max = max_value_bytes

    @property
    def enabled(self) -> bool:
        return bool(self._checks)

    def triggered(self, data: bytes) -> bool:
        """False only if no enabled detector can match anywhere in `data`."""
        for _, b in self._rare:
            if b in data:
                return True
        n = len(data)
        if self._runs:
            k, needle = self._runs[0]
            if n >= k and data.translate(RUN_TABLE).find(needle) >= 0:
                return True
        if self._digits:
            k, needle = self._digits[0]
            if n >= k and data.translate(DIGIT_TABLE, DIGIT_SEPARATORS).find(needle) >= 0:
                return True
        return False

    def scan(self, value: bytes) -> bytes | None:
        """`value` with detected spans masked: the same object if nothing was found, None if
        something might be there but the value is over `max_value_bytes` (mask it whole)."""
        rare = 0
        for bit, b in self._rare:
            if b in value:
                rare |= bit
        run = _reach(value, RUN_TABLE, b"", self._runs)
        digits = _reach(value, DIGIT_TABLE, DIGIT_SEPARATORS, self._digits)
        if not (rare or run or digits):
            return value
        if len(value) > self._max:
            return None
        out = value
        for detector, rare_mask, min_run, min_digits in self._checks:
            # Conditions are those of the value as it came: masking only removes text, so a
            # later detector's real matches were already there.
            if (
                rare & rare_mask
                or (min_run and min_run <= run)
                or (min_digits and min_digits <= digits)
            ):
                out = detector.redact(out)
        return out


def _reach(value: bytes, table: bytes, delete: bytes, levels: tuple[tuple[int, bytes], ...]) -> int:
    """The largest threshold in `levels` that `value` reaches, or 0."""
    if not levels or len(value) < levels[0][0]:
        return 0
    mapped = value.translate(table, delete)
    reached = 0
    for k, needle in levels:
        if mapped.find(needle) < 0:
            break
        reached = k
    return reached
