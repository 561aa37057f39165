from __future__ import annotations

import pytest

from proxy.startup_params import StartupRefused, limit_timeouts, sanitize_startup


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
    assert "options" not in s.upstream_params  # the timeout is checked by limit_timeouts
    assert s.timeouts == {"statement_timeout": "5s"}
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


# -- session timeouts (broker.policy.timeouts) ----------------------------------------------

CEILINGS = {"lock_timeout": 5000, "statement_timeout": 300_000, "idle_in_transaction_session_timeout": 60_000}


def test_the_gateway_timeouts_are_sent_when_the_client_names_none():
    s = sanitize_startup({"user": "a", "database": "demo"})
    limit_timeouts(s, CEILINGS)
    assert {k: s.upstream_params[k] for k in CEILINGS} == {k: str(v) for k, v in CEILINGS.items()}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"lock_timeout": "1s"}, {"lock_timeout": "1000"}),
        ({"Statement_Timeout": "2min"}, {"statement_timeout": "120000"}),
        ({"options": "-c lock_timeout=250"}, {"lock_timeout": "250"}),
        ({"options": "--idle-in-transaction-session-timeout=30s"}, {"idle_in_transaction_session_timeout": "30000"}),
        # Both: the direct parameter wins, as the server applies `options` first.
        ({"options": "-c lock_timeout=4s", "lock_timeout": "2s"}, {"lock_timeout": "2000"}),
        ({"lock_timeout": "2s", "options": "-c lock_timeout=4s"}, {"lock_timeout": "2000"}),
        ({"options": "-c lock_timeout=1s -c lock_timeout=3s"}, {"lock_timeout": "3000"}),
    ],
)
def test_a_client_may_ask_for_lower_timeouts(params, expected):
    s = sanitize_startup({"user": "a", **params})
    limit_timeouts(s, CEILINGS)
    for name, value in expected.items():
        assert s.upstream_params[name] == value
    assert "options" not in s.upstream_params  # never a second copy the server could prefer
    assert [k for k in s.upstream_params if k.lower() in CEILINGS] == [k for k in s.upstream_params if k in CEILINGS]


@pytest.mark.parametrize(
    "params",
    [
        {"statement_timeout": "0"},
        {"statement_timeout": "1h"},
        {"lock_timeout": "100us"},  # rounds to 0: disabled
        {"lock_timeout": "5001"},
        {"LOCK_TIMEOUT": "0"},
        {"lock_timeout": "-1"},
        {"lock_timeout": "5 sec"},
        {"options": "-c statement_timeout=0"},
        {"options": "-cstatement_timeout=0"},
        {"options": "--statement-timeout=0"},
        {"options": "-c idle_in_transaction_session_timeout=1d"},
        {"options": "-c lock_timeout=1s", "lock_timeout": "10s"},
        {"lock_timeout": "1s", "options": "-c lock_timeout=10s"},  # options are checked too
    ],
)
def test_raising_or_disabling_a_timeout_at_start_up_is_refused(params):
    s = sanitize_startup({"user": "a", **params})
    with pytest.raises(StartupRefused, match="may be lowered, not raised above"):
        limit_timeouts(s, CEILINGS)


def test_without_ceilings_a_clients_timeouts_are_forwarded():
    s = sanitize_startup({"user": "a", "options": "-c lock_timeout=3s"})
    limit_timeouts(s, {})
    assert s.upstream_params["lock_timeout"] == "3s"
