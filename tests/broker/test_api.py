from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from broker import metrics
from broker.api import create_app
from broker.config import Settings, hash_api_token
from broker.store import SessionStart, SessionStats, StatementRecord, Store
from broker.store.db import create_engine

API_TOKEN = "jga_test-admin-token-0123456789abcdef"
UPSTREAM_PASSWORD = "upstream-pw-never-shown"


def make_settings() -> Settings:
    return Settings(
        api={"tokens": [hash_api_token(API_TOKEN)]},
        resources={
            "demo": {
                "upstream": {
                    "host": "127.0.0.1",
                    "dbname": "demo",
                    "username": "app",
                    "password": UPSTREAM_PASSWORD,
                }
            }
        },
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/api.db")
    yield s
    await s.close()


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(), store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://jitgate.test"
    ) as c:
        yield c


AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


async def seed(store: Store) -> tuple[str, str, str]:
    """One ended session with two statements and one active session; returns ids + token."""
    issued = await store.tokens.issue_token(
        "agent:demo", ["ai-agents"], "demo", "readwrite", timedelta(hours=1), True
    )
    grant = await store.tokens.verify_token(issued.token, "demo")
    ended = await store.sessions.start_session(SessionStart(grant, application_name="psql", intent="cleanup"))
    now = datetime.now(UTC)
    await store.sessions.record_statements(
        [
            StatementRecord(ended, 1, "select * from customers", "allow", now, rows=2),
            StatementRecord(
                ended,
                2,
                "drop table customers",
                "review",
                now,
                rule="agent-safe/drop",
                reason="DROP needs approval",
            ),
        ]
    )
    await store.sessions.end_session(ended, reason="client closed", stats=SessionStats(2, 100, 200))
    active = await store.sessions.start_session(SessionStart(grant))
    return ended, active, issued.token


async def test_healthz_reports_store_ok(client: httpx.AsyncClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"store": "ok"}}


async def test_healthz_is_503_when_the_store_does_not_answer() -> None:
    # A real store object pointed at a port nobody listens on.
    dead = Store(create_engine("postgresql+asyncpg://jitgate:pw@127.0.0.1:1/jitgate"))
    app = create_app(make_settings(), dead)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        resp = await client.get("/healthz")
        listing = await client.get("/v1/sessions", headers=AUTH)
    await dead.close()
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["store"].startswith("error")
    assert "pw" not in resp.text and "127.0.0.1" not in resp.text
    assert listing.status_code == 503 and listing.json() == {"detail": "store unavailable"}


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    metrics.AUTH_FAILURES.labels("expired").inc()
    resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    for name in (
        "jitgate_sessions_active",
        "jitgate_statements_total",
        "jitgate_masked_values_total",
        "jitgate_proxy_bytes_total",
        "jitgate_statement_seconds_bucket",
        'jitgate_auth_failures_total{reason="expired"}',
    ):
        assert name in resp.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {API_TOKEN}"},
        {"Authorization": f"Bearer {hash_api_token(API_TOKEN)}"},  # the digest is not a token
    ],
)
async def test_v1_requires_a_configured_bearer_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for path in ("/v1/sessions", "/v1/sessions/anything"):
        resp = await client.get(path, headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"


async def test_no_configured_tokens_refuses_everyone(store: Store) -> None:
    app = create_app(Settings(), store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        resp = await client.get("/v1/sessions", headers=AUTH)
    assert resp.status_code == 401


async def test_list_sessions(client: httpx.AsyncClient, store: Store) -> None:
    ended, active, _ = await seed(store)

    resp = await client.get("/v1/sessions", headers=AUTH)
    assert resp.status_code == 200
    body = resp.json()
    assert [s["id"] for s in body] == [active, ended]
    first_ended = body[1]
    assert first_ended["active"] is False
    assert first_ended["principal"] == "agent:demo"
    assert first_ended["groups"] == ["ai-agents"]
    assert first_ended["intent"] == "cleanup"
    assert first_ended["end_reason"] == "client closed"
    assert (first_ended["statement_count"], first_ended["bytes_in"]) == (2, 100)
    assert "statements" not in first_ended

    only_active = (await client.get("/v1/sessions?active=true", headers=AUTH)).json()
    assert [s["id"] for s in only_active] == [active]
    assert len((await client.get("/v1/sessions?limit=1", headers=AUTH)).json()) == 1
    assert (await client.get("/v1/sessions?limit=0", headers=AUTH)).status_code == 422


async def test_session_detail_has_statements_in_order(
    client: httpx.AsyncClient, store: Store
) -> None:
    ended, _, _ = await seed(store)
    resp = await client.get(f"/v1/sessions/{ended}", headers=AUTH)
    assert resp.status_code == 200
    body = resp.json()
    assert body["id"] == ended
    # The session's own fields, read from the store's record under the API's names.
    assert (body["statement_count"], body["active"], body["session_tampered"]) == (2, False, [])
    assert body["groups"] == ["ai-agents"] and body["verified"] is True and body["tampered"] == []
    assert "results" not in body["statements"][0]
    assert [(s["seq"], s["decision"]) for s in body["statements"]] == [
        (1, "allow"),
        (2, "review"),
    ]
    assert body["statements"][1]["rule"] == "agent-safe/drop"
    assert body["statements"][0]["rows"] == 2


async def test_unknown_session_is_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/sessions/no-such-session", headers=AUTH)
    assert resp.status_code == 404
    assert resp.json() == {"detail": "session not found"}


async def test_no_secret_ever_appears_in_responses(client: httpx.AsyncClient, store: Store) -> None:
    ended, _, token = await seed(store)
    bodies = [
        (await client.get(path, headers=AUTH)).text
        for path in ("/v1/sessions", f"/v1/sessions/{ended}", "/healthz", "/openapi.json")
    ]
    for secret in (
        token,
        token[4:],
        hash_api_token(token),  # the stored token digest
        API_TOKEN,
        hash_api_token(API_TOKEN),
        UPSTREAM_PASSWORD,
    ):
        for body in bodies:
            assert secret not in body


async def test_openapi_documents_the_api(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "jitgate broker API"
    assert {"/healthz", "/metrics", "/v1/sessions", "/v1/sessions/{session_id}"} <= set(
        spec["paths"]
    )
    listing = spec["paths"]["/v1/sessions"]["get"]
    assert listing["summary"]
    assert listing["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/healthz"]["get"]
    schemas = spec["components"]["schemas"]
    assert "SessionOut" in schemas and "StatementOut" in schemas
    assert "token_hash" not in str(schemas)


async def test_every_response_names_its_request_id_and_logs_carry_it(client: httpx.AsyncClient) -> None:
    import structlog

    seen: list[object] = []

    def spy(_logger: object, _name: str, event: dict) -> dict:  # type: ignore[type-arg]
        seen.append(event.get("request_id"))
        raise structlog.DropEvent

    generated = await client.get("/healthz")
    assert len(generated.headers["x-request-id"]) == 32
    kept = await client.get("/healthz", headers={"X-Request-ID": "trace-42.a"})
    assert kept.headers["x-request-id"] == "trace-42.a"
    forged = await client.get("/healthz", headers={"X-Request-ID": "x\r\nSet-Cookie: a=b"})
    assert forged.headers["x-request-id"] != "x\r\nSet-Cookie: a=b" and "set-cookie" not in forged.headers
    old = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, spy])
    try:
        app = client._transport.app  # type: ignore[attr-defined]

        @app.get("/_log_probe")
        async def probe() -> dict[str, str]:
            structlog.get_logger("test").info("probe")
            return {}

        await client.get("/_log_probe", headers={"X-Request-ID": "probe-1"})
    finally:
        structlog.configure(**old)
    assert seen == ["probe-1"]
