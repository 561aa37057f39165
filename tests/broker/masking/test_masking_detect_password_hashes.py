from __future__ import annotations

import pytest

from broker.masking.detectors import password_hashes

D = password_hashes.DETECTOR
MASK = b"[masked:password-hash]"

HASHES = [
    b"$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
    b"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
    b"$2y$04$abcdefghijklmnopqrstuu5W3D3cUzs1sUPEY1pSiBbBnCJ6Hxk5S",
    b"$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
    b"$argon2i$v=19$m=4096,t=3,p=1$c2FsdHNhbHQ$OzbJqgmEvBf0dwVnvkaHqT2fJZP7cQwq",
    b"$6$rounds=5000$saltsalt$" + b"a" * 86,  # SHA-512 crypt
    b"$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZF4e/CgR2",  # SHA-256 crypt
    b"$1$saltstri$YMyguxXMBpd2TEZ.vS/3q1",  # MD5 crypt
    b"$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",  # yescrypt
    b"$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
    b"$pbkdf2-sha256$29000$N2YMIWQsBWBMae09x1jrPQ$1t8iyB2A.WF/Z5JZv.lfCIhXXN33N23OSgQYThBYRfk",
    b"pbkdf2_sha256$600000$k3mAkJ6gi7wR$v2a1o2qVqX0HqkXyZ5oCEhzS0Ftu06yFXyfrM8sb7Q8=",
    b"scrypt$16384$saltsaltsalt$8$1$Fq4Pyh2jbyg2C5l5SGiAQp0Lm9a1fbmYb1Bw7kW/7E8=",
    b"md5" + b"0123456789abcdef" * 2,  # PostgreSQL md5
    b"SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVka2V5c3RvcmVka2V5Yw==:c2VydmVya2V5c2VydmVya2V5cw==",
]


@pytest.mark.parametrize("value", HASHES)
def test_hashes_are_masked_whole(value: bytes) -> None:
    assert D.redact(value) == MASK
    assert D.redact(b"hash: " + value + b";") == b"hash: " + MASK + b";"
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b"$100 and $200",
        b"costs $2b total",
        b"md5 is broken",
        b"md5" + b"0123456789abcdef" * 2 + b"ff",  # too long: not a PostgreSQL md5 hash
        b"d41d8cd98f00b204e9800998ecf8427e",  # bare hex digest: not a stored password
        b"plain text",
    ],
)
def test_lookalikes_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value
