from __future__ import annotations

import pytest

from broker.masking.detectors import cloud_keys

D = cloud_keys.DETECTOR

POSITIVES = [
    (b"AKIAFAKEFAKEFAKEFAKE", b"[masked:aws-key]"),
    (b"key ASIAY34FZKBOKMUTVV7A here", b"key [masked:aws-key] here"),
    (b"ghp_" + b"a1B2" * 9, b"[masked:github-token]"),
    (b"gho_" + b"Z9y8" * 9, b"[masked:github-token]"),
    (b"github_pat_11ABCDEFG0abcdefghijkl_" + b"x" * 59, b"[masked:github-token]"),
    (b"xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", b"[masked:slack-token]"),
    (b"xoxp-123-456-789-abcdef", b"[masked:slack-token]"),
    (b"sk_live_" + b"4eC39HqLyjWDarjtT1zdp7dc", b"[masked:stripe-key]"),
    (b"rk_test_" + b"4eC39HqLyjWDarjtT1zdp7dc", b"[masked:stripe-key]"),
    (b"AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", b"[masked:google-api-key]"),
    (b"sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", b"[masked:openai-key]"),
    (b"sk-" + b"aB3" * 16, b"[masked:openai-key]"),
    (b"sk-ant-api03-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", b"[masked:anthropic-key]"),
]


@pytest.mark.parametrize(("value", "masked"), POSITIVES)
def test_provider_keys_are_masked(value: bytes, masked: bytes) -> None:
    assert D.redact(value) == masked
    assert D.could_match(value)


@pytest.mark.parametrize(
    "value",
    [
        b"550e8400-e29b-41d4-a716-446655440000",  # UUID
        b"d41d8cd98f00b204e9800998ecf8427e",  # md5 of nothing: a hash, not a key
        b"AKIA is a prefix",
        b"ghp_tooshort",
        b"risk-management-framework-guide-2024",  # "sk-" inside a slug
        b"task-list-for-the-next-sprint-planning",
        b"sk-learn-and-friends-from-the-python-world",  # no digits or capitals: a slug
        b"xoxb-short",
        b"pk_live_4eC39HqLyjWDarjtT1zdp7dc",  # publishable keys are public
    ],
)
def test_lookalikes_are_left_alone(value: bytes) -> None:
    assert D.redact(value) is value
