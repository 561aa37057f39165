"""Human durations: `90s`, `30m`, `8h`, `1h30m`, `2d`."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([smhd])")
_WHOLE = re.compile(r"^(?:\d+[smhd])+$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """Parse `text` into a positive timedelta; ValueError names what was wrong."""
    compact = text.strip().lower().replace(" ", "")
    if not _WHOLE.match(compact):
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 30m, 8h, 1h30m, 2d")
    total = timedelta()
    for amount, unit in _PART.findall(compact):
        total += timedelta(**{_UNIT[unit]: int(amount)})
    if total <= timedelta(0):
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return total
