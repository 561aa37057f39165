"""Text a client chose is kept without the secrets pasted into it: a gateway token drops the
whole value, other secrets (the masking package's secret detectors) just themselves."""

from __future__ import annotations

import pytest

from broker.audit.redact import TOKEN_REPLACEMENT, client_text
from broker.store.tokens import TOKEN_PREFIX, new_token


def test_the_prefix_is_the_stores() -> None:
    assert client_text(f"x{TOKEN_PREFIX}y") == TOKEN_REPLACEMENT


@pytest.mark.parametrize("value", [
    new_token(), f"deploy {new_token()} now", "JGT_" + "A" * 43, new_token()[:12],
])
def test_a_gateway_token_or_part_of_one_replaces_the_whole_value(value: str) -> None:
    assert client_text(value) == TOKEN_REPLACEMENT


@pytest.mark.parametrize(("value", "kept"), [
    ("rotate db password=hunter22secret", "rotate db password=****"),
    ("see postgres://app:s3cretpass@db.internal/app", "see postgres://app:****@db.internal/app"),
    ("key AKIAFAKEFAKEFAKEFAKE", "key [masked:aws-key]"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl", "jwt [masked:jwt]"),
])
def test_other_secrets_are_masked_in_place(value: str, kept: str) -> None:
    assert client_text(value) == kept


def test_ordinary_text_is_kept_and_cut_only_when_asked() -> None:
    assert client_text("fix ticket 42 for bob@example.com") == "fix ticket 42 for bob@example.com"
    assert client_text("") is None and client_text(None) is None
    assert client_text("x" * 300, limit=256) == "x" * 256
    assert client_text("\ud800bad") == "?bad"  # a lone surrogate cannot break the store's encoding
