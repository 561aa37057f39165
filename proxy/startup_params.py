"""Which StartupMessage parameters may reach the upstream.

PostgreSQL treats every unknown start-up parameter as a setting (``role=postgres`` in the
packet is ``SET role`` before the first statement) and ``options=-c name=value`` likewise.
Forwarding them blindly would let a client do at connect time what policy blocks on the
wire (SET ROLE, session_authorization). So the proxy keeps an allow-list and refuses the
connection for anything else, naming the parameter, instead of dropping it silently.

The settings that decide how the server reads SQL text (`PINNED_LEXER_VALUES`:
client_encoding UTF8, standard_conforming_strings on, backslash_quote safe_encoding) are
sent in every upstream start-up packet; a client may name them only with those values (any
other value is refused). A start-up value outranks ALTER DATABASE / ALTER ROLE ... SET
defaults and becomes the session's reset value, so RESET, SET ... TO DEFAULT, RESET ALL and
DISCARD ALL return to it rather than to a database default such as SJIS.

The session timeouts (`broker.policy.timeouts`: lock_timeout, statement_timeout,
idle_in_transaction_session_timeout) are sent the same way, at the resource's values
(`limit_timeouts`). A client may ask for a lower one at start-up, directly or in
``options``; a higher one, 0 (disabled), or a value the server would not read is refused.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from broker.audit.redact import client_text
from broker.policy.facts import PINNED_LEXER_VALUES, is_pinned_value
from broker.policy.timeouts import TIMEOUT_SETTINGS, format_ms, parse_ms

#: Settings a client may choose at start-up: formatting and timeouts, nothing that changes
#: identity, privileges or server behaviour for others. The lexer settings
#: (`PINNED_LEXER_VALUES`) are accepted at their pinned value only.
ALLOWED_SETTINGS = frozenset(
    {
        "application_name",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "search_path",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "client_connection_check_interval",
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


class StartupRefused(Exception):
    """A start-up parameter is not allowed; the message names it."""


@dataclass(slots=True)
class ClientStartup:
    user: str
    database: str
    upstream_params: dict[str, str] = field(default_factory=dict)
    # As jitgate keeps them, secrets masked (broker.audit.redact); upstream_params has the
    # application_name the client sent.
    intent: str | None = None
    application_name: str | None = None
    protocol_options: list[str] = field(default_factory=list)
    #: Session timeouts the client asked for (lower case name -> text), as the server would
    #: take them; `limit_timeouts` checks them (and every other value asked: `asked_timeouts`)
    #: and puts them in `upstream_params`.
    timeouts: dict[str, str] = field(default_factory=dict)
    asked_timeouts: list[tuple[str, str]] = field(default_factory=list)


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
    # The policy parses SQL as UTF-8 with standard strings; another client_encoding (above
    # all one whose multi-byte characters contain ASCII bytes: SJIS, BIG5, GBK) would let the
    # server read what the parser did not. Spellings as PostgreSQL accepts them: asyncpg
    # sends 'utf-8' with quotes.
    if name in PINNED_LEXER_VALUES and not is_pinned_value(name, value):
        pinned = PINNED_LEXER_VALUES[name]
        raise StartupRefused(
            f"{name} {value!r} is not supported through the gateway, which speaks UTF-8 with "
            f"standard strings only; use {name}={pinned}"
        )


# PostgreSQL's pg_split_opts splits `options` at any isspace() byte unless a backslash
# escapes it; escaping only spaces would let a tab or newline inside an allowed value start
# a second `-c name=value` at the server.
_OPTION_SPECIAL = re.compile(r"([\\ \t\n\r\v\f])")


def _quote_option(value: str) -> str:
    return _OPTION_SPECIAL.sub(r"\\\1", value)


def sanitize_startup(params: dict[str, str]) -> ClientStartup:
    """Split a client's start-up parameters into what goes upstream and what jitgate keeps."""
    user = params.get("user", "")
    startup = ClientStartup(user=user, database=params.get("database") or user)
    direct = {key.lower() for key in params}
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
                    startup.intent = client_text(opt_value)
                elif name in TIMEOUT_SETTINGS:
                    # The server applies `options` in order, then the other parameters: a
                    # direct parameter of the same name wins, as it would there.
                    startup.asked_timeouts.append((name, opt_value))
                    if name not in direct:
                        startup.timeouts[name] = opt_value
                elif name in ALLOWED_SETTINGS or name in PINNED_LEXER_VALUES:
                    _check_value(name, opt_value)
                    if name not in PINNED_LEXER_VALUES:  # pinned: sent as a parameter below
                        forwarded_options.append(f"-c {name}={_quote_option(opt_value)}")
                else:
                    raise StartupRefused(f"setting {name!r} cannot be chosen at connect time through the gateway")
            continue
        if lower == INTENT_SETTING:
            startup.intent = client_text(value)
            continue
        if lower not in ALLOWED_SETTINGS and lower not in PINNED_LEXER_VALUES:
            raise StartupRefused(f"start-up parameter {key!r} is not allowed through the gateway")
        if lower in TIMEOUT_SETTINGS:
            startup.asked_timeouts.append((lower, value))
            startup.timeouts[lower] = value
            continue
        _check_value(lower, value)
        if lower in PINNED_LEXER_VALUES:
            continue  # checked above; the pinned value is sent below
        startup.upstream_params[key] = value
        if lower == "application_name":
            # What jitgate keeps (session and audit records, approvals, logs) holds no
            # secret pasted into it; the server gets the value as sent.
            startup.application_name = client_text(value)
    if forwarded_options:
        startup.upstream_params["options"] = " ".join(forwarded_options)
    startup.upstream_params.update(PINNED_LEXER_VALUES)
    return startup


def limit_timeouts(startup: ClientStartup, ceilings: Mapping[str, int]) -> None:
    """Put the session timeouts in `startup.upstream_params`: the resource's value (ms) for
    each of `ceilings`, or the client's own if it is lower; raise StartupRefused for one above
    its ceiling, 0, or unreadable. A timeout without a ceiling is forwarded as asked."""
    for name, asked in startup.asked_timeouts:
        ceiling = ceilings.get(name)
        ms = parse_ms(asked)
        if ceiling is not None and (ms is None or ms <= 0 or ms > ceiling):
            raise StartupRefused(
                f"{name} {asked!r} is not allowed through the gateway: it may be lowered, not "
                f"raised above {format_ms(ceiling)} nor disabled with 0"
            )
    for name, asked in startup.timeouts.items():
        startup.upstream_params[name] = asked if name not in ceilings else str(parse_ms(asked))
    for name, ceiling in ceilings.items():
        startup.upstream_params.setdefault(name, str(ceiling))
