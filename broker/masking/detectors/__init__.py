"""Content detectors: one module per family of sensitive content.

`DETECTORS` maps a detector's config name to it, in the order the scanner applies them.
The order matters where spans could overlap: whole private-key blocks go first (their base64
body would otherwise feed other detectors), URL passwords before e-mail addresses (see
`url_credentials`), and e-mail last. A replacement never matches a later detector: labels
(``[masked:jwt]``) and stars contain none of the characters the later patterns need.

Family            | name              | becomes
------------------|-------------------|---------------------------------------
PEM private keys  | `private_key`     | ``[masked:private-key]``
JWTs              | `jwt`             | ``[masked:jwt]``
provider API keys | `cloud_key`       | ``[masked:aws-key]``, ``[masked:github-token]``, ...
password hashes   | `password_hash`   | ``[masked:password-hash]``
URL passwords     | `url_credentials` | ``scheme://user:****@host``
``key=value``     | `assignment`      | ``password=****`` (off by default)
card numbers      | `card`            | ``**** **** **** 4242``
US SSNs           | `ssn`             | ``***-**-****``
formatted phones  | `phone`           | ``+*-***-***-**00``
e-mail addresses  | `email`           | ``j***@example.com``
"""

from __future__ import annotations

from broker.masking.detectors import (
    assignments,
    cards,
    cloud_keys,
    email,
    jwt,
    password_hashes,
    personal_numbers,
    private_keys,
    url_credentials,
)
from broker.masking.detectors.base import Detector

DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (
        private_keys.DETECTOR,
        jwt.DETECTOR,
        cloud_keys.DETECTOR,
        password_hashes.DETECTOR,
        url_credentials.DETECTOR,
        assignments.DETECTOR,
        cards.DETECTOR,
        personal_numbers.SSN_DETECTOR,
        personal_numbers.PHONE_DETECTOR,
        email.DETECTOR,
    )
}

DEFAULT_DETECTORS: tuple[str, ...] = tuple(name for name in DETECTORS if name != "assignment")

__all__ = ["DEFAULT_DETECTORS", "DETECTORS", "Detector"]
