"""US Social Security numbers and formatted phone numbers, anywhere in a value.

Column names catch `ssn` and `phone` columns; these catch the same values when a query
renames or wraps them (`ssn AS x`, `row_to_json(c)`, `string_agg(ssn, ',')`, `c::text`).
Only the written forms are matched, so plain digit strings (ids, amounts) are left alone:

- SSN ``123-45-6789`` (not 000/666/9xx areas, 00 groups or 0000 serials) -> ``***-**-****``
- phone ``+1-415-555-0100``, ``(415) 555-0100``, ``415-555-0100`` -> ``+*-***-***-**00``
  (the phone shape of `broker.masking.shapes`: separators and the last two digits stay)
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector

SSN = re.compile(rb"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
# Separators are spaces and dashes only: what `min_digits` ignores, so the declaration holds.
PHONE = re.compile(rb"(?<![\w+-])(?:\+\d{1,3}[ -]?)?(?:\(\d{3}\) ?|\d{3}[ -])\d{3}[ -]\d{4}(?![\w-])")


def _ssn(_: re.Match[bytes]) -> bytes:
    return b"***-**-****"


def _phone(m: re.Match[bytes]) -> bytes | None:
    from broker.masking.shapes import mask_phone  # shapes imports the detectors: not at load

    return mask_phone(m.group(0))


SSN_DETECTOR = Detector(name="ssn", pattern=SSN, replace=_ssn, min_digits=9)
PHONE_DETECTOR = Detector(name="phone", pattern=PHONE, replace=_phone, min_digits=7)
