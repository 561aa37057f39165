"""Identity to wire: a dev-issuer login, an auto-granted access request, a real client through
the real proxy with the granted token, then revocation and expiry refused with 28P01.

The broker API runs under uvicorn on the gateway's loop (it shares the proxy's store) and
serves the built-in dev issuer; clients and the CLI reach both over HTTP, while the broker
reads the issuer's discovery and JWKS from its own app in-process (an HTTP fetch of its own
port from inside a request handler upset CPython 3.11.7's AST state for later imports).
"""

from __future__ import annotations

import asyncio
import json
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
import uvicorn
from typer.testing import CliRunner, Result

from broker.api.app import create_app
from broker.cli.main import app as cli
from broker.identity.devissuer import DevIssuer, DevUser
from broker.identity.oidc import OIDCVerifier
from broker.identity.settings import AccessRuleSettings, AccessSettings, OidcIssuerSettings, OidcSettings
from tests.conftest import free_port, require_binary

pytestmark = pytest.mark.e2e

REQ = {"resource": "demo", "role": "readwrite", "reason": "e2e: check the identity flow"}


@dataclass
class BrokerApi:
    url: str
    dev: DevIssuer
    gateway: Any


@pytest.fixture(scope="module")
def broker_api(gateway) -> Iterator[BrokerApi]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    dev = DevIssuer(
        f"{url}/dev-issuer",
        users={"alice": DevUser(groups=("ai-agents",), email="alice@example.com")},
        auto_approve_as="alice",
    )
    settings = gateway.settings.model_copy(
        update={
            "oidc": OidcSettings(
                issuers=[OidcIssuerSettings(issuer=dev.issuer, audience="jitgate", kind_claim="jitgate_kind")]
            ),
            "access": AccessSettings(
                gateway_address=f"127.0.0.1:{gateway.port}",
                rules=[
                    AccessRuleSettings(
                        groups=["ai-agents"], resources=["demo"], roles=["readwrite"], approval="auto", max_ttl="1h"
                    )
                ],
            ),
        }
    )

    async def start() -> tuple[uvicorn.Server, asyncio.Task[None]]:
        app = create_app(settings, gateway.store, dev_issuer=dev)
        # The broker fetches the dev issuer's discovery and JWKS from its own app in-process.
        app.state.oidc = OIDCVerifier(settings.oidc.issuers, http=httpx.AsyncClient(transport=httpx.ASGITransport(app)))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           log_config=None))
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
            await asyncio.sleep(0.01)
        return server, task

    server, task = gateway.call(start())
    try:
        yield BrokerApi(url, dev, gateway)
    finally:

        async def stop() -> None:
            server.should_exit = True
            await task

        gateway.call(stop())


def request_access(api: BrokerApi, **overrides: str) -> dict:
    r = httpx.post(
        f"{api.url}/v1/access-requests",
        json={**REQ, **overrides},
        headers={"Authorization": f"Bearer {api.dev.mint('alice')}"},
        timeout=30,
    )
    assert r.status_code == 201, r.text
    return r.json()


def connect(dsn: str, token: str) -> psycopg.Connection:
    return psycopg.connect(dsn, password=token, sslmode="disable", connect_timeout=10)


def refused_sqlstate(gateway, dsn: str, token: str) -> str:
    """The SQLSTATE of a refused connect (asyncpg exposes it; libpq's message does not)."""

    async def attempt() -> str:
        try:
            conn = await asyncpg.connect(dsn, password=token, ssl=False, timeout=10)
        except asyncpg.PostgresError as exc:
            return str(exc.sqlstate)
        await conn.close()
        return "connected"

    return gateway.call(attempt())


def test_granted_token_connects_until_revoked(broker_api: BrokerApi) -> None:
    grant = request_access(broker_api)
    assert grant["status"] == "granted"
    with connect(grant["dsn"], grant["token"]) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    r = httpx.post(
        f"{broker_api.url}/v1/grants/{grant['token_id']}/revoke",
        headers={"Authorization": f"Bearer {broker_api.dev.mint('alice')}"},
    )
    assert r.json()["revoked"] is True
    assert refused_sqlstate(broker_api.gateway, grant["dsn"], grant["token"]) == "28P01"


def test_expired_grant_is_refused(broker_api: BrokerApi) -> None:
    grant = request_access(broker_api, ttl="1s")
    time.sleep(1.2)
    assert refused_sqlstate(broker_api.gateway, grant["dsn"], grant["token"]) == "28P01"


def jitgate(*args: str, env: dict[str, str | None]) -> Result:
    # In-process: the CLI talks to the broker over real HTTP all the same.
    return CliRunner().invoke(cli, list(args), env=env)


def test_cli_login_connect_exec_and_revoke(broker_api: BrokerApi, tmp_path: Path) -> None:
    require_binary("psql")
    env: dict[str, str | None] = {
        "JITGATE_HOME": str(tmp_path / "home"), "PGSSLMODE": "disable", "JITGATE_CONFIG": None, "JITGATE_TOKEN": None
    }
    out = jitgate("login", "--issuer", broker_api.dev.issuer, "--api", broker_api.url, env=env)
    assert out.exit_code == 0, out.output
    saved = tmp_path / "home" / "token.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["issuer"] == broker_api.dev.issuer

    result = tmp_path / "psql.out"
    out = jitgate("connect", "demo", "--role", "readwrite", "--reason", "cli e2e", "--ttl", "10m",
                  "--exec", f"psql -X -A -t -c 'select 40 + 2' -o {result}", env=env)
    assert out.exit_code == 0, out.output
    assert result.read_text().strip() == "42"

    out = jitgate("connect", "demo", "--role", "readwrite", "--reason", "cli e2e", env=env)
    assert out.exit_code == 0, out.output
    token = re.search(r"^export PGPASSWORD=(\S+)$", out.stdout, re.M).group(1)  # type: ignore[union-attr]
    dsn = re.search(r"^export JITGATE_DSN=(\S+)$", out.stdout, re.M).group(1)  # type: ignore[union-attr]
    token_id = re.search(r"grant ([0-9a-f-]{36})", out.output).group(1)  # type: ignore[union-attr]
    with connect(dsn, token) as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    out = jitgate("grants", "revoke", token_id, env=env)
    assert out.exit_code == 0, out.output
    assert refused_sqlstate(broker_api.gateway, dsn, token) == "28P01"


def test_cli_connect_requires_reason(broker_api: BrokerApi) -> None:
    env: dict[str, str | None] = {"JITGATE_TOKEN": broker_api.dev.mint("alice"), "JITGATE_API_URL": broker_api.url}
    out = jitgate("connect", "demo", "--role", "readwrite", "--reason", "  ", env=env)
    assert out.exit_code == 2
    assert "reason" in out.output
