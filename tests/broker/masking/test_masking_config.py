from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from broker.masking.config import (
    DEFAULT_COLUMN_PATTERNS,
    ColumnRule,
    MaskingConfig,
    NameRules,
    compile_globs,
)
from broker.masking.detectors import DEFAULT_DETECTORS

KEY = "0123456789abcdef0123"


def test_defaults() -> None:
    config = MaskingConfig()
    assert config.enabled
    assert config.columns == DEFAULT_COLUMN_PATTERNS
    assert config.detectors == DEFAULT_DETECTORS
    assert config.max_value_bytes == 1 << 20
    assert config.deterministic_columns == ()
    assert config.hmac_key is None


@pytest.mark.parametrize(
    "name",
    [
        "email", "EMAIL", "customer_email", "e_mail", "phone", "home_phone", "mobile", "ssn",
        "social_security_number", "password", "password_hash", "passwd", "client_secret",
        "access_token", "api_key", "stripe_api_key", "card_number", "cc_number",
        "credit_card_no", "pan", "iban", "private_key", "cvv",
    ],
)  # fmt: skip
def test_default_patterns_match_the_usual_names(name: str) -> None:
    assert NameRules(MaskingConfig()).rule(name) is ColumnRule.MASK


@pytest.mark.parametrize("name", ["id", "name", "created_at", "status", "country", "company"])
def test_default_patterns_leave_ordinary_names(name: str) -> None:
    assert NameRules(MaskingConfig()).rule(name) is ColumnRule.KEEP


def test_extra_ignore_and_deterministic_precedence() -> None:
    config = MaskingConfig(
        extra_columns=["customer_note"],
        ignore_columns=["email_verified"],
        deterministic_columns=["email", "user_*"],
        hmac_key=SecretStr(KEY),
    )
    rules = NameRules(config)
    assert rules.rule("Customer_Note") is ColumnRule.MASK
    assert rules.rule("email_verified") is ColumnRule.KEEP  # ignore beats *email*
    assert rules.rule("email") is ColumnRule.PSEUDONYM  # deterministic beats the mask list
    assert rules.rule("user_id") is ColumnRule.PSEUDONYM  # need not be in columns
    assert rules.rule("phone") is ColumnRule.MASK


def test_columns_replace_the_defaults() -> None:
    rules = NameRules(MaskingConfig(columns=["only_this"]))
    assert rules.rule("email") is ColumnRule.KEEP
    assert rules.rule("ONLY_THIS") is ColumnRule.MASK


def test_glob_syntax() -> None:
    pattern = compile_globs(["a?c", "x[0-9]"])
    assert pattern is not None
    assert pattern.match("abc") and pattern.match("X7")
    assert not pattern.match("abcd")
    assert compile_globs([]) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"detectors": ["email", "nope"]}, "unknown detector"),
        ({"deterministic_columns": ["email"]}, "needs hmac_key"),
        ({"deterministic_columns": ["email"], "hmac_key": "short"}, "at least 16"),
        ({"columns": [" "]}, "must not be empty"),
        ({"max_value_bytes": 0}, "greater than or equal to 1"),
        ({"colums": ["x"]}, "Extra inputs"),
    ],
)
def test_invalid_configs_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MaskingConfig.model_validate(kwargs)


def test_config_from_yaml_like_dict_and_key_is_secret() -> None:
    config = MaskingConfig.model_validate(
        {"deterministic_columns": ["email"], "hmac_key": KEY, "detectors": ["email"]}
    )
    assert config.detectors == ("email",)
    assert KEY not in repr(config)
