from __future__ import annotations

import pytest

from proxy.startup_params import StartupRefused, sanitize_startup


def test_ordinary_parameters_pass_and_intent_is_kept_back():
    s = sanitize_startup(
        {
            "user": "agent",
            "database": "demo",
            "application_name": "claude",
            "client_encoding": "UTF8",
            "options": "-c jitgate.intent=fix\\ bug\\ 42 -c statement_timeout=5s",
        }
    )
    assert s.database == "demo"
    assert s.intent == "fix bug 42"
    assert s.application_name == "claude"
    assert s.upstream_params["options"] == "-c statement_timeout=5s"
    assert "jitgate" not in repr(s.upstream_params)


@pytest.mark.parametrize(
    "params",
    [
        {"user": "a", "role": "postgres"},
        {"user": "a", "session_authorization": "postgres"},
        {"user": "a", "options": "-c role=postgres"},
        {"user": "a", "options": "--session_authorization=postgres"},
        {"user": "a", "options": "-c ROLE=postgres"},
        {"user": "a", "replication": "database"},
        {"user": "a", "options": "-P"},
    ],
)
def test_identity_changing_parameters_are_refused(params):
    with pytest.raises(StartupRefused):
        sanitize_startup(params)


def test_database_defaults_to_user_and_pq_options_are_reported():
    s = sanitize_startup({"user": "demo", "_pq_.foo": "1"})
    assert s.database == "demo"
    assert s.protocol_options == ["_pq_.foo"]


@pytest.mark.parametrize(
    "params",
    [
        {"user": "a", "client_encoding": "SJIS"},
        {"user": "a", "options": "-c client_encoding=BIG5"},
        {"user": "a", "options": "-c standard_conforming_strings=off"},
    ],
)
def test_settings_that_change_how_sql_is_read_are_refused(params):
    with pytest.raises(StartupRefused):
        sanitize_startup(params)


PINNED = {"client_encoding": "UTF8", "standard_conforming_strings": "on", "backslash_quote": "safe_encoding"}


def test_utf8_client_encoding_is_fine():
    assert sanitize_startup({"user": "a", "client_encoding": "UTF8"}).upstream_params == PINNED


@pytest.mark.parametrize(
    "params",
    [
        {"user": "a"},
        {"user": "a", "client_encoding": "'utf-8'"},  # asyncpg's spelling
        {"user": "a", "CLIENT_ENCODING": "unicode"},
        {"user": "a", "options": "-c client_encoding=utf_8"},
        {"user": "a", "standard_conforming_strings": "on", "options": "-c backslash_quote=SAFE_ENCODING"},
    ],
)
def test_lexer_settings_are_pinned_upstream_whatever_the_client_sent(params):
    """Sent at start-up, the pinned values outrank ALTER DATABASE / ROLE ... SET defaults and
    are what RESET, SET ... TO DEFAULT and DISCARD ALL return to."""
    assert sanitize_startup(params).upstream_params == PINNED


@pytest.mark.parametrize(
    "params",
    [
        {"user": "a", "standard_conforming_strings": "off"},
        {"user": "a", "backslash_quote": "on"},
        {"user": "a", "options": "-c backslash_quote=on"},
        {"user": "a", "options": "--client-encoding=LATIN1"},
        {"user": "a", "client_encoding": "SQL_ASCII"},
        {"user": "a", "client_encoding": "auto"},
    ],
)
def test_lexer_settings_cannot_be_chosen_at_connect_time(params):
    with pytest.raises(StartupRefused):
        sanitize_startup(params)


@pytest.mark.parametrize("space", [" ", "\t", "\n", "\r", "\v", "\f"])
def test_option_values_cannot_start_a_second_option_at_the_server(space):
    """PostgreSQL splits `options` at any white space not escaped by a backslash."""
    options = f'-c "application_name=x{space}-c{space}standard_conforming_strings=off"'
    forwarded = sanitize_startup({"user": "a", "options": options}).upstream_params["options"]
    assert forwarded == f"-c application_name=x\\{space}-c\\{space}standard_conforming_strings=off"
    assert _pg_split_opts(forwarded) == ["-c", f"application_name=x{space}-c{space}standard_conforming_strings=off"]


def _pg_split_opts(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts (src/backend/utils/init/postinit.c)."""
    out: list[str] = []
    i = 0
    while i < len(options):
        while i < len(options) and options[i] in " \t\n\r\v\f":
            i += 1
        if i == len(options):
            break
        word, escaped = "", False
        while i < len(options) and (escaped or options[i] not in " \t\n\r\v\f"):
            if not escaped and options[i] == "\\":
                escaped = True
            else:
                word, escaped = word + options[i], False
            i += 1
        out.append(word)
    return out
