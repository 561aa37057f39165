"""Password hashes in the formats databases actually store.

crypt-style (bcrypt ``$2b$``, SHA-crypt ``$5$``/``$6$``, MD5-crypt ``$1$``, yescrypt ``$y$``,
scrypt ``$7$``), argon2 (``$argon2id$``), passlib's ``$scrypt$``/``$pbkdf2-sha256$``,
Django's ``pbkdf2_sha256$``/``scrypt$``, PostgreSQL's ``md5`` + 32 hex and
``SCRAM-SHA-256$...``. A hash becomes ``[masked:password-hash]``: offline cracking needs
nothing more than the hash, so none of it is shown.
"""

from __future__ import annotations

import re

from broker.masking.detectors.base import Detector, label

_B64 = rb"[A-Za-z0-9+/]+={0,2}"
_CRYPT = rb"[./A-Za-z0-9]"
_FORMS = (
    rb"\$2[abxy]?\$[0-9]{2}\$" + _CRYPT + rb"{53}",  # bcrypt
    rb"\$argon2(?:id|i|d)\$(?:v=[0-9]+\$)?m=[0-9]+,t=[0-9]+,p=[0-9]+\$" + _B64 + rb"\$" + _B64,
    rb"\$[156]\$(?:rounds=[0-9]+\$)?" + _CRYPT + rb"{1,16}\$" + _CRYPT + rb"{22,86}",
    rb"\$y\$" + _CRYPT + rb"+\$" + _CRYPT + rb"+\$" + _CRYPT + rb"{43}",  # yescrypt
    rb"\$7\$" + _CRYPT + rb"{11,}\$" + _CRYPT + rb"{43}",  # crypt scrypt
    rb"\$scrypt\$[^$\s]+\$[A-Za-z0-9+/.=]+\$[A-Za-z0-9+/.=]+",  # passlib
    rb"\$pbkdf2(?:-sha(?:1|256|512))?\$[0-9]+\$[A-Za-z0-9+/.=]+\$[A-Za-z0-9+/.=]+",  # passlib
    rb"pbkdf2_sha(?:1|256|512)\$[0-9]+\$[^$\s]+\$" + _B64,  # Django
    rb"scrypt\$[0-9]+\$[^$\s]+\$[0-9]+\$[0-9]+\$" + _B64,  # Django
    rb"SCRAM-SHA-256\$[0-9]+:" + _B64 + rb"\$" + _B64 + rb":" + _B64,  # PostgreSQL
    rb"(?<![A-Za-z0-9])md5[0-9a-f]{32}(?![0-9A-Za-z])",  # PostgreSQL md5
)
PATTERN = re.compile(b"|".join(b"(?:" + f + b")" for f in _FORMS))
MASK = label("password-hash")


def _replace(_: re.Match[bytes]) -> bytes:
    return MASK


DETECTOR = Detector(
    name="password_hash",
    pattern=PATTERN,
    replace=_replace,
    rare=b"$",
    min_run=35,  # PostgreSQL's md5 form has no '$': "md5" and 32 hex digits
    quick=lambda v: 36 in v or v.find(b"md5") >= 0,
)
