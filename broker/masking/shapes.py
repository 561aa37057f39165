"""How a value matched by column name is masked whole, keeping a recognisable shape.

The shape follows the column name first (its *hint*), then the value:

hint (column name like)                    | value                   | becomes
-------------------------------------------|-------------------------|-----------------------
``*pass*``, ``*secret*``, ``*token*``, ... | anything                | ``********``
``*mail*``                                 | one address             | ``j***@example.com``
``*phone*``, ``mobile*``, ``fax``, ...     | 4+ digits               | ``+* (***) ***-**67``
``*card*``, ``cc_*``, ``pan``              | 12-19 digits            | ``**** **** **** 4242``
anything else (``ssn``, ``iban``, ...)     | e-mail / Luhn card      | as above
any hint, value not of that shape          |                         | ``********``

Secrets reveal nothing, not even their length (a fixed eight stars): a password's length
narrows a brute-force search, and a constant is just as recognisable as "masked". An empty
value stays empty (there is nothing to hide, and it keeps "no password set" visible).

Deterministic pseudonyms (`pseudonym`) are ``pseu_`` + the first 16 characters of the
lowercase base32 HMAC-SHA256 of the value under the resource's key (80 bits, so collisions
are negligible). The key alone is the input besides the value, not the column or table
name: the same e-mail in ``customers.email`` and ``orders.contact`` gets the same pseudonym,
so an agent can still join and group on it. Values are hashed as the bytes the server sent
(text types are identical in text and binary format), so ``char(n)`` padding is part of
the value.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json

from broker.masking.config import compile_globs
from broker.masking.detectors import cards, email
from broker.masking.detectors.base import label

REDACTED = b"********"
TOO_LARGE = label("too-large")
PSEUDONYM_PREFIX = b"pseu_"
PSEUDONYM_CHARS = 16


class Shape(enum.Enum):
    REDACT = "redact"  # reveal nothing
    EMAIL = "email"
    PHONE = "phone"
    CARD = "card"
    AUTO = "auto"


_HINTS = (
    (Shape.REDACT, ("*pass*", "*pwd*", "*secret*", "*token*", "*key*", "*credential*", "*hash*")),
    (Shape.EMAIL, ("*mail*",)),
    (Shape.PHONE, ("*phone*", "*mobile*", "tel", "tel_*", "*_tel", "telephone*", "*fax*")),
    (Shape.CARD, ("*card*", "cc_*", "pan")),
)
_COMPILED = tuple((shape, compile_globs(globs)) for shape, globs in _HINTS)


def shape_for(column_name: str) -> Shape:
    for shape, pattern in _COMPILED:
        if pattern is not None and pattern.match(column_name):
            return shape
    return Shape.AUTO


_PHONE_KEEP = frozenset(b"+()-./ ")


def mask_phone(value: bytes, keep: int = 2) -> bytes | None:
    """Star all digits but the last `keep`, keep separators; None if fewer than 4 digits."""
    total = sum(1 for c in value if 48 <= c <= 57)
    if total < 4:
        return None
    seen = 0
    out = bytearray()
    for c in value.strip():
        if 48 <= c <= 57:
            seen += 1
            out.append(c if seen > total - keep else 42)
        else:
            out.append(c if c in _PHONE_KEEP else 42)
    return bytes(out)


def mask_whole(value: bytes, shape: Shape) -> bytes:
    """The masked form of a whole text value (never empty for a non-empty value)."""
    if not value:
        return value
    masked: bytes | None = None
    if shape is Shape.EMAIL:
        masked = email.mask_whole(value)
    elif shape is Shape.PHONE:
        masked = mask_phone(value)
    elif shape is Shape.CARD:
        masked = cards.mask_whole(value, require_luhn=False)
    elif shape is Shape.AUTO:
        masked = email.mask_whole(value) or cards.mask_whole(value, require_luhn=True)
    return masked or REDACTED


def pseudonym(key: bytes, value: bytes) -> bytes:
    digest = hmac.new(key, value, hashlib.sha256).digest()
    return PSEUDONYM_PREFIX + base64.b32encode(digest)[:PSEUDONYM_CHARS].lower()


def json_string(text: bytes) -> bytes:
    """`text` as a JSON string literal (valid json/jsonb input whatever `text` holds)."""
    return json.dumps(text.decode("utf-8", "replace"), ensure_ascii=False).encode("utf-8")


def json_inner_string(value: bytes) -> bytes | None:
    """The content of a JSON document that is a plain string without escapes, else None."""
    v = value.strip()
    if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"' and b"\\" not in v and v.count(b'"') == 2:
        return v[1:-1]
    return None
