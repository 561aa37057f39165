from __future__ import annotations

import pytest

from broker.masking.detectors import private_keys

D = private_keys.DETECTOR

BODY = (
    b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    b"MzEfYyjiWA4R4/M2bS1+fWIcPm15j9"
)

PKCS8 = b"-----BEGIN PRIVATE KEY-----\n" + BODY + b"\n-----END PRIVATE KEY-----"
RSA = b"-----BEGIN RSA PRIVATE KEY-----\n" + BODY + b"\n-----END RSA PRIVATE KEY-----\n"
OPENSSH = b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + BODY + b"\n-----END OPENSSH PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (PKCS8, b"[masked:private-key]"),
        (RSA, b"[masked:private-key]\n"),
        (b"key: " + OPENSSH + b" (rotated)", b"key: [masked:private-key] (rotated)"),
        (PKCS8.replace(b"\n", b"\\n"), b"[masked:private-key]"),  # JSON-escaped
        (b"-----BEGIN EC PRIVATE KEY-----\n" + BODY, b"[masked:private-key]"),  # truncated
        (
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
            + BODY
            + b"\n-----END ENCRYPTED PRIVATE KEY-----",
            b"[masked:private-key]",
        ),
    ],
)
def test_private_key_blocks_are_masked(value: bytes, masked: bytes) -> None:
    assert D.redact(value) == masked
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b"-----BEGIN CERTIFICATE-----\n" + BODY + b"\n-----END CERTIFICATE-----",
        b"-----BEGIN PUBLIC KEY-----\n" + BODY + b"\n-----END PUBLIC KEY-----",
        b"-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",  # no key material
        b"see the PRIVATE KEY docs",
    ],
)
def test_other_blocks_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value
