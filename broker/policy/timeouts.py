"""The session timeouts the gateway sets, and PostgreSQL's reading of a time setting's value.

An agent holding row locks for long blocks everyone else: the gateway starts every upstream
session with ``lock_timeout``, ``statement_timeout`` and ``idle_in_transaction_session_timeout``
set (policy key ``timeouts``; `DEFAULT_TIMEOUTS` otherwise), sent in the start-up packet so
that they outrank ALTER ROLE / DATABASE defaults and are what RESET, ``SET ... TO DEFAULT``
and DISCARD ALL return to. Each value is also the ceiling: a client may lower a timeout (SET,
SET LOCAL, set_config, a function's SET clause, a start-up option), never raise it above the
ceiling nor disable it with 0.

`parse_ms` reads a value as PostgreSQL's ``parse_int`` does for a setting whose base unit is
milliseconds: ``strtol`` with base 0 (so ``010`` is 8 and ``0x10`` is 16), ``strtod`` when a
``.``, ``e`` or ``E`` follows, optional whitespace, then an optional case-sensitive unit
(``us``, ``ms``, ``s``, ``min``, ``h``, ``d``), rounded half to even. So ``'100us'`` is 0:
disabled, as the server would take it.
"""

from __future__ import annotations

import math
import re

__all__ = ["DEFAULT_TIMEOUTS", "TIMEOUT_SETTINGS", "format_ms", "parse_ms"]

#: Milliseconds: lock waits end after 5 s, statements after 5 min, and a transaction left
#: idle (holding its locks) is ended by the server after 3 min: longer than the default
#: review wait (proxy.review_wait_seconds, 120 s), so a statement parked inside a
#: transaction does not lose its session while an approver decides.
DEFAULT_TIMEOUTS: dict[str, int] = {
    "lock_timeout": 5_000,
    "statement_timeout": 300_000,
    "idle_in_transaction_session_timeout": 180_000,
    # While a statement runs the server checks this often that the client is still there:
    # a gateway session whose client left does not keep its backend (and its session slot's
    # worth of a connection) busy until the statement ends (PostgreSQL 14+).
    "client_connection_check_interval": 10_000,
}
TIMEOUT_SETTINGS = frozenset(DEFAULT_TIMEOUTS)

_INT_MAX = 2**31 - 1
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1_000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}
_NEXT_SMALLER = {"d": "h", "h": "min", "min": "s", "s": "ms", "ms": "us"}
# strtol(base 0) after optional C whitespace and a sign: hex, octal (leading 0) or decimal.
_INTEGER = re.compile(r"[ \t\n\v\f\r]*[+-]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
# strtod's decimal form (hex floats and inf/nan end at a character no unit accepts, or
# become infinite: both are refused below as the server refuses them).
_REAL = re.compile(r"[ \t\n\v\f\r]*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_SPACE = " \t\n\v\f\r"


def parse_ms(value: object) -> int | None:
    """`value` (a literal's value or start-up text) in milliseconds, or None where PostgreSQL
    would refuse it (or it is not a literal at all)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -_INT_MAX - 1 <= value <= _INT_MAX else None
    if isinstance(value, float):  # SET lock_timeout = 5000.5: rint, as the server does
        value = str(value)
    if not isinstance(value, str):
        return None
    number: float
    m = _INTEGER.match(value)
    end = m.end() if m else 0
    if m is None or (end < len(value) and value[end] in ".eE"):
        r = _REAL.match(value)
        if r is None:
            return None
        number, end = float(r.group(0)), r.end()
    else:
        digits = m.group(0).strip(_SPACE)
        sign = -1 if digits.startswith("-") else 1
        digits = digits.lstrip("+-")
        base = 16 if digits[:2].lower() == "0x" else 8 if digits.startswith("0") and len(digits) > 1 else 10
        number = sign * int(digits, base)
    unit = value[end:].strip(_SPACE)
    if unit:
        factor = _UNITS.get(unit)
        if factor is None:
            return None
        number *= factor
        # guc.c convert_to_base_unit: a fraction of a unit is first rounded to a whole number
        # of the next smaller unit ('0.004min' is 0 s, so 0: disabled; not 240 ms).
        smaller = _NEXT_SMALLER.get(unit)
        if smaller is not None and math.isfinite(number):
            number = round(number / _UNITS[smaller]) * _UNITS[smaller]
    if not math.isfinite(number):
        return None
    rounded = round(number)  # rint: half to even, as Python's round
    return rounded if -_INT_MAX - 1 <= rounded <= _INT_MAX else None


def format_ms(ms: int) -> str:
    """Milliseconds in the largest unit that divides them (``300000`` -> ``5min``)."""
    for unit in ("d", "h", "min", "s"):
        factor = int(_UNITS[unit])
        if ms and ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"
