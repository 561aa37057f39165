"""Every process builds its approvals service in one place, with the configured bus.

A process that made decisions with a service of its own (no bus) would decide where no
parked client hears it: the worker did, and expired requests kept clients waiting until
`proxy.review_wait_seconds`. `broker.cli.approvals_runtime.open_approvals` is that one place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from broker.approvals.bus import RedisBus, channel_for
from broker.cli.approvals_runtime import open_approvals
from broker.config import Settings
from broker.store import Store

ROOT = Path(__file__).resolve().parents[3]
FACTORY = "broker/cli/approvals_runtime.py"
# `create_app`'s default for embedding and tests; every `jitgate` command passes its own.
IN_PROCESS_DEFAULT = "broker/api/app.py"


def _constructions() -> set[str]:
    found = set()
    for package in ("broker", "proxy", "slackapp", "workers"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "ApprovalService":
                    found.add(str(path.relative_to(ROOT)))
    return found


def test_only_the_factory_constructs_the_service() -> None:
    assert _constructions() <= {FACTORY, IN_PROCESS_DEFAULT}


def test_every_command_and_the_worker_use_the_factory() -> None:
    for path in ("broker/cli/api_cmd.py", "broker/cli/proxy_cmd.py", "broker/cli/demo_cmd.py",
                 "broker/cli/slack_cmd.py", "workers/tasks.py"):
        assert "open_approvals(" in (ROOT / path).read_text(), path


@pytest.mark.parametrize("listen", [True, False])
async def test_the_factory_gives_the_installations_redis_bus(tmp_path: Path, redis_url: str, listen: bool) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=redis_url, installation="blue")  # type: ignore[arg-type]
    store = await Store.open(settings.store_url.get_secret_value())
    try:
        service, close = await open_approvals(settings, store.approvals, listen=listen)
        try:
            assert isinstance(service.bus, RedisBus) and service.bus.channel == channel_for("blue")
        finally:
            await close()
    finally:
        await store.close()
