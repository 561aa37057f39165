"""Logging: structlog for jitgate's own events, the same renderer for stdlib loggers.

`configure_logging(level, json=...)` sends everything (structlog and stdlib: uvicorn,
SQLAlchemy, Alembic) through one handler on stderr, as JSON lines or coloured console
output. Before rendering, `redact_secrets` replaces the value of any key named like a secret
(`password`, `token`, `secret`, `authorization`, `api_key`, or ending in `_password`,
`_token`, `_secret`) at any depth, and hides the password in URLs such as
`postgresql://user:pw@host`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "**********"

_SECRET_KEY = re.compile(
    r"(^|[_-])(password|passwd|pwd|token|secret|authorization|api[_-]?key|credentials?)$",
    re.IGNORECASE,
)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE)


def is_secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", value) if "://" in value else value
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide values of secret-named keys and passwords in URLs."""
    for key, value in list(event_dict.items()):
        if is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(value)
    return event_dict


def configure_logging(level: str = "info", *, json: bool = False) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.set_name("jitgate")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "jitgate"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


def _identity(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    return event_dict
