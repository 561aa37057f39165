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


def test_utf8_client_encoding_is_fine():
    assert sanitize_startup({"user": "a", "client_encoding": "UTF8"}).upstream_params == {"client_encoding": "UTF8"}
