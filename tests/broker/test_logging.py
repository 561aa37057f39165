from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from broker.logging import REDACTED, configure_logging, is_secret_key, redact_secrets


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("PASSWORD", True),
        ("upstream_password", True),
        ("token", True),
        ("gateway_token", True),
        ("secret", True),
        ("client-secret", True),
        ("authorization", True),
        ("Authorization", True),
        ("api_key", True),
        ("token_id", False),
        ("session_id", False),
        ("tokens_issued", False),
        ("passwordless", False),
    ],
)
def test_secret_keys(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_redaction_reaches_nested_values_and_urls() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "connect",
            "password": "hunter2",
            "token_id": "0b1c",
            "headers": {"Authorization": "Bearer abc", "accept": "json"},
            "attempts": [{"token": "jgt_x"}, "postgresql://app:pw123@db:5432/demo"],
            "dsn": "postgresql+asyncpg://app:s3cr%40t@db/demo?sslmode=require",
            "count": 3,
        },
    )
    assert event == {
        "event": "connect",
        "password": REDACTED,
        "token_id": "0b1c",
        "headers": {"Authorization": REDACTED, "accept": "json"},
        "attempts": [{"token": REDACTED}, f"postgresql://app:{REDACTED}@db:5432/demo"],
        "dsn": f"postgresql+asyncpg://app:{REDACTED}@db/demo?sslmode=require",
        "count": 3,
    }


def test_json_logs_from_structlog_and_stdlib_are_redacted(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", json=True)
    structlog.get_logger("jitgate.test").info("upstream login", password="pw-1", user="app")
    logging.getLogger("uvicorn.test").warning("dsn is postgresql://app:pw-2@db/x")
    structlog.get_logger("jitgate.test").debug("hidden below the level")

    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["event"] == "upstream login"
    assert first["password"] == REDACTED and first["user"] == "app"
    assert first["level"] == "info" and first["logger"] == "jitgate.test"
    assert "timestamp" in first
    assert second["event"] == f"dsn is postgresql://app:{REDACTED}@db/x"
    assert second["level"] == "warning"


def test_configure_twice_keeps_one_handler(restore_logging: None) -> None:
    configure_logging("debug")
    configure_logging("warning")
    root = logging.getLogger()
    assert [h.get_name() for h in root.handlers].count("jitgate") == 1
    assert root.level == logging.WARNING
