"""`jitgate proxy`: run the PostgreSQL gateway (and optionally the API) from a config file."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import structlog
import typer

from broker.config import Settings, load_settings
from broker.exceptions import ConfigError, StoreError
from broker.logging import configure_logging

log = structlog.get_logger("jitgate.proxy")


def _log_native() -> None:
    """Say whether the per-message path runs compiled (see proxy/native.py): a build that
    fell back to pure Python, or a module edited since it was built, is a warning."""
    from proxy import native

    modules = native.status()
    line = native.summary(modules)
    if all(m.compiled and m.current is not False for m in modules):
        log.info("proxy_native_modules", modules=line)
    else:
        log.warning("proxy_native_modules", modules=line)


def register(app: typer.Typer) -> None:
    app.command("proxy")(proxy)


def proxy(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)")
    ] = None,
    workers: Annotated[int, typer.Option(help="Processes sharing the listen port (SO_REUSEPORT)", min=1, max=64)] = 1,
    port: Annotated[int | None, typer.Option(help="Override proxy.listen_port")] = None,
) -> None:
    """Run the gateway: authenticate agents, apply policy and masking, relay to the upstream."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if port is not None:
        settings.proxy.listen_port = port
    configure_logging(settings.log_level, json=settings.log_json)
    if workers == 1:
        _run_worker(settings, reuse_port=False, config=config)
        return
    children = []
    for index in range(workers):
        pid = os.fork()
        if pid == 0:  # child
            try:
                if settings.proxy.metrics_port:
                    settings.proxy.metrics_port += index  # one metrics endpoint per worker
                _run_worker(settings, reuse_port=True, config=config)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # policy reload, in every worker
    for child in children:
        os.waitpid(child, 0)


def _run_worker(settings: Settings, *, reuse_port: bool, config: Path | None = None) -> None:
    from proxy.server import install_uvloop

    install_uvloop()
    try:
        asyncio.run(serve(settings, reuse_port=reuse_port, config=config))
    except StoreError as exc:
        typer.echo(f"store unavailable: {exc}", err=True)
        sys.exit(3)
    except KeyboardInterrupt:
        pass


async def serve(
    settings: Settings, *, reuse_port: bool = False, ready: asyncio.Event | None = None, config: Path | None = None
) -> None:
    """Open the store, start the proxy and serve until SIGINT/SIGTERM; SIGHUP reloads the
    resources' policies and masking from the configuration without dropping a session."""
    from broker.audit import events
    from broker.audit.forward import attach_forwarder
    from broker.audit.logins import FailedLogins
    from broker.cli.approvals_runtime import open_approvals
    from broker.credentials.manager import build_manager
    from broker.credentials.reaper import Reaper
    from broker.store import Store
    from broker.store.recorder import Recorder
    from proxy.approvals import ApprovalReviewHook
    from proxy.server import ProxyServer
    from proxy.wiring import ManagedCredentials, build_context, reload_resources

    store = await Store.open(settings.store_url.get_secret_value())
    recorder = Recorder(store.sessions)
    recorder.start()
    # A SIEM sink, when configured, gets every record this process appends after it commits.
    forwarder = attach_forwarder(store, settings.audit.sink)
    credentials = build_manager(settings, store.audit)
    # Revokes leases a crashed proxy (or a failed revocation) left behind; every proxy
    # process runs one, and revoking twice is harmless.
    assert credentials.ledger is not None
    reaper = Reaper(credentials.ledger, credentials.providers)
    approvals, close_approvals = await open_approvals(settings, store.approvals)
    review = ApprovalReviewHook(
        approvals, wait_seconds=settings.proxy.review_wait_seconds, console_url=settings.approvals.console_url
    )
    logins = FailedLogins(store.audit)
    server = ProxyServer(
        build_context(
            settings, store, recorder, review=review, credentials=ManagedCredentials(credentials), logins=logins
        ),
        host=settings.proxy.listen_host,
        port=settings.proxy.listen_port,
        reuse_port=reuse_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def reload() -> None:
        source = str(config or os.environ.get("JITGATE_CONFIG") or "environment")
        try:
            fresh = load_settings(config)
            names = reload_resources(server.ctx, fresh)
        except Exception as exc:  # a bad file changes nothing: the running policy stays
            error = str(exc)[:2000]
            log.error("policy_reload_failed", source=source, error=error)
            with contextlib.suppress(Exception):
                await store.audit.append_audit(
                    events.policy_reloaded(resource=None, source=source, ok=False, error=error)
                )
            return
        log.info("policy_reloaded", source=source, resources=names)
        with contextlib.suppress(Exception):
            await store.audit.append_audit(*(events.policy_reloaded(resource=n, source=source) for n in names))

    reload_tasks: set[asyncio.Future[None]] = set()

    def on_hangup() -> None:
        task = asyncio.ensure_future(reload())
        reload_tasks.add(task)
        task.add_done_callback(reload_tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    # Everything loaded so far (SQLAlchemy, pglast, pydantic models) lives for the whole
    # process: freezing it keeps the collector from re-scanning it on every full
    # collection, which otherwise shows up as multi-millisecond pauses in tail latency.
    gc.collect()
    gc.freeze()
    metrics_server = None
    if settings.proxy.metrics_port is not None:
        from prometheus_client import start_http_server

        from broker.metrics import REGISTRY

        metrics_server, _ = start_http_server(
            settings.proxy.metrics_port, addr=settings.proxy.metrics_host, registry=REGISTRY
        )
    try:
        await server.start()
        reaper.start()
        typer.echo(f"jitgate proxy listening on {settings.proxy.listen_host}:{server.port}", err=True)
        _log_native()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        await server.close()
        await reaper.aclose()
        await credentials.aclose()
        await recorder.aclose()
        await logins.aclose()
        await close_approvals()
        if forwarder is not None:
            await forwarder.aclose()
        await store.close()
