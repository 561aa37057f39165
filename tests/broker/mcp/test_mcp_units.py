"""The MCP server's pure parts: result shaping and caps, error fields, and the intent option
as the proxy's start-up parser reads it back."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

from broker.mcp.gateway import intent_option
from broker.mcp.results import error_result, json_value, shape_rows
from proxy.startup_params import sanitize_startup


def test_json_values():
    assert json_value(decimal.Decimal("1.50")) == "1.50"
    assert json_value(dt.date(2026, 1, 2)) == "2026-01-02"
    assert json_value(b"\x00\xff") == "\\x00ff"
    assert json_value(float("nan")) == "nan"
    u = uuid.uuid4()
    assert json_value([u, None, True]) == [str(u), None, True]


def test_rows_are_capped_by_count_and_bytes():
    out = shape_rows(["n"], [(i,) for i in range(10)], max_rows=3, max_bytes=10_000, command="SELECT 10")
    assert out["rows"] == [[0], [1], [2]] and out["row_count"] == 10 and out["truncated"] is True
    big = shape_rows(["t"], [("x" * 100,)] * 10, max_rows=100, max_bytes=350, command=None)
    assert len(big["rows"]) == 3 and big["truncated"] is True and big["limits"]["max_bytes"] == 350
    whole = shape_rows(["n"], [(1,)], max_rows=3, max_bytes=100, command="SELECT 1")
    assert whole["truncated"] is False and "message" not in whole


class _PgError(Exception):
    sqlstate = "42501"
    message = "jitgate: statement blocked by policy rule agent-safe/load: LOAD ..."
    detail = "rule: agent-safe/load"
    hint = "ask"


def test_error_fields():
    out = error_result(_PgError())
    assert out == {
        "status": "error", "sqlstate": "42501", "message": _PgError.message, "detail": "rule: agent-safe/load",
        "hint": "ask", "refused_by": "jitgate",
    }


@pytest.mark.parametrize(
    "intent",
    ["fix ticket 42", "it's \"quoted\" -c role=postgres", "back\\slash \\ space", "naïve émoji 🙂", "a=b;c"],
)
def test_intent_option_round_trips_through_the_proxy_parser(intent):
    startup = sanitize_startup({"user": "agent", "database": "demo", "options": intent_option(intent)})
    assert startup.intent == intent
    assert "options" not in startup.upstream_params  # recorded, never forwarded


def test_intent_is_flattened_and_bounded():
    startup = sanitize_startup({"user": "a", "options": intent_option("two\nlines " + "x" * 1000)})
    assert startup.intent is not None and startup.intent.startswith("two lines x") and len(startup.intent) == 500
