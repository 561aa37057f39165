from __future__ import annotations

import base64
import json

import pytest

from broker.masking.detectors import jwt

D = jwt.DETECTOR


def b64(obj: object) -> str:
    raw = json.dumps(obj).encode() if not isinstance(obj, bytes) else obj
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


TOKEN = (
    b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0"
    b".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    "value",
    [
        TOKEN,
        b"Authorization: Bearer " + TOKEN,
        b'{"id_token":"' + TOKEN + b'"}',
        f"{b64({'alg': 'none'})}.{b64({'sub': 'x'})}.".encode(),  # unsecured: empty signature
        f"{b64({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.a.b.c.d".encode(),  # JWE, five parts
    ],
)
def test_jwts_are_masked_whole(value: bytes) -> None:
    out = D.redact(value)
    assert b"[masked:jwt]" in out
    assert b"eyJ" not in out
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b'eyJ is how base64 of {" starts',
        f"{b64({'typ': 'JWT'})}.{b64({'sub': 'x'})}.sig".encode(),  # no alg: not a JWT header
        f"{b64(b'not json at all!!')}.e30.sig".encode(),
        b"eyJhbGciOiJIUzI1NiJ9",  # a header alone
        b"550e8400-e29b-41d4-a716-446655440000",
    ],
)
def test_non_tokens_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value
