"""A session lives no longer than its grant: the gateway ends an open session when the
grant expires or its token is revoked, with a FATAL 57P01 the client can read."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import Gateway

pytestmark = pytest.mark.e2e


def _connect(gateway: Gateway, token: str) -> psycopg.Connection:
    return psycopg.connect(gateway.dsn(token=token), sslmode="disable", connect_timeout=10, autocommit=True)


def _grant(gateway: Gateway) -> object:
    return gateway.call(gateway.store.tokens.issue_token("agent:test", ["ai-agents"], "demo", "readwrite",
        timedelta(hours=1)))


def _ended_within(conn: psycopg.Connection, seconds: float) -> psycopg.Error | None:
    """The error the session ended with, polling with cheap queries; None if it stayed up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn.execute("select 1")
        except psycopg.Error as exc:
            return exc
        time.sleep(0.2)
    return None


def test_session_ends_when_its_grant_expires(gateway: Gateway) -> None:
    token = gateway.issue(ttl=timedelta(seconds=2), reusable=False)
    with _connect(gateway, token) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        started = time.monotonic()
        exc = _ended_within(conn, 6)
        assert exc is not None, "the session outlived its grant"
        assert time.monotonic() - started >= 1.0  # not before the expiry
        assert "gateway grant expired" in str(exc)
        assert exc.sqlstate in ("57P01", None)  # libpq may surface it as a lost connection
        assert conn.closed or conn.broken


def test_session_ends_soon_after_its_token_is_revoked(gateway: Gateway) -> None:
    issued: Any = _grant(gateway)
    with _connect(gateway, issued.token) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert gateway.call(gateway.store.tokens.revoke_token(issued.token_id))
        exc = _ended_within(conn, 8)  # the proxy checks every 5 s
        assert exc is not None, "the session outlived its revoked token"
        assert "gateway grant was revoked" in str(exc)


def test_session_of_a_live_grant_is_left_alone(gateway: Gateway) -> None:
    other: Any = _grant(gateway)
    token = gateway.issue(ttl=timedelta(hours=1))
    with _connect(gateway, token) as conn:
        gateway.call(gateway.store.tokens.revoke_token(other.token_id))  # someone else's grant
        assert _ended_within(conn, 6) is None
