"""Which StartupMessage parameters may reach the upstream.

PostgreSQL treats every unknown start-up parameter as a setting (``role=postgres`` in the
packet is ``SET role`` before the first statement) and ``options=-c name=value`` likewise.
Forwarding them blindly would let a client do at connect time what policy blocks on the
wire (SET ROLE, session_authorization). So the proxy keeps an allow-list and refuses the
connection for anything else, naming the parameter, instead of dropping it silently.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

#: Settings a client may choose at start-up: formatting and timeouts, nothing that changes
#: identity, privileges or server behaviour for others.
ALLOWED_SETTINGS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "search_path",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "idle_session_timeout",
        "default_transaction_isolation",
        "default_transaction_read_only",
        "bytea_output",
        "geqo",
        "jit",
        "work_mem",
        "lc_messages",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "client_min_messages",
    }
)

#: The agent's stated intent: ``options=-c jitgate.intent=...``; recorded, never forwarded.
INTENT_SETTING = "jitgate.intent"


#: The policy parses SQL as UTF-8 with standard strings; an encoding whose multi-byte
#: characters contain ASCII quote bytes would let the server read what the parser did not.
UTF8_NAMES = frozenset({"UTF8", "UNICODE"})


class StartupRefused(Exception):
    """A start-up parameter is not allowed; the message names it."""


@dataclass(slots=True)
class ClientStartup:
    user: str
    database: str
    upstream_params: dict[str, str] = field(default_factory=dict)
    intent: str | None = None
    application_name: str | None = None
    protocol_options: list[str] = field(default_factory=list)


def _parse_options(options: str) -> list[tuple[str, str]]:
    """``-c a=b --c=d=e`` into [(a, b), (c, d=e)]; anything else is refused."""
    try:
        words = shlex.split(options.replace("\\ ", "\0"))
    except ValueError as exc:
        raise StartupRefused(f"cannot parse the options start-up parameter: {exc}") from exc
    words = [w.replace("\0", " ") for w in words]
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            setting = words[i + 1]
            i += 2
        elif word.startswith("-c") and len(word) > 2:
            setting = word[2:]
            i += 1
        elif word.startswith("--"):
            setting = word[2:]
            i += 1
        else:
            raise StartupRefused(f"start-up option {word!r} is not allowed through the gateway")
        name, sep, value = setting.partition("=")
        if not sep:
            raise StartupRefused(f"start-up option {setting!r} has no value")
        out.append((name.strip().lower().replace("-", "_"), value))
    return out


def _check_value(name: str, value: str) -> None:
    # asyncpg sends 'utf-8' with quotes; PostgreSQL ignores case, quotes, - and _.
    normalized = value.strip("'\" ").upper().replace("-", "").replace("_", "")
    if name == "client_encoding" and normalized not in UTF8_NAMES:
        raise StartupRefused(f"client_encoding {value!r} is not supported through the gateway; use UTF8")


def _quote_option(value: str) -> str:
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def sanitize_startup(params: dict[str, str]) -> ClientStartup:
    """Split a client's start-up parameters into what goes upstream and what jitgate keeps."""
    user = params.get("user", "")
    startup = ClientStartup(user=user, database=params.get("database") or user)
    forwarded_options: list[str] = []
    for key, value in params.items():
        lower = key.lower()
        if lower in ("user", "database"):
            continue
        if lower.startswith("_pq_."):
            startup.protocol_options.append(key)
            continue
        if lower == "replication":
            if value.lower() in ("false", "off", "no", "0"):
                continue
            raise StartupRefused("replication connections are not allowed through the gateway")
        if lower == "options":
            for name, opt_value in _parse_options(value):
                if name == INTENT_SETTING:
                    startup.intent = opt_value
                elif name in ALLOWED_SETTINGS:
                    _check_value(name, opt_value)
                    forwarded_options.append(f"-c {name}={_quote_option(opt_value)}")
                else:
                    raise StartupRefused(f"setting {name!r} cannot be chosen at connect time through the gateway")
            continue
        if lower == INTENT_SETTING:
            startup.intent = value
            continue
        if lower not in ALLOWED_SETTINGS:
            raise StartupRefused(f"start-up parameter {key!r} is not allowed through the gateway")
        _check_value(lower, value)
        startup.upstream_params[key] = value
        if lower == "application_name":
            startup.application_name = value
    if forwarded_options:
        startup.upstream_params["options"] = " ".join(forwarded_options)
    return startup
