"""The Celery app's naming: an installation's queue, key prefix and beat schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.approvals.settings import ApprovalSettings
from broker.config import Settings, load_settings
from broker.exceptions import ConfigError
from workers.app import make_app, queue_for
from workers.dispatch import CeleryDispatcher


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/13", **kw)  # type: ignore[arg-type]


def test_queue_keys_and_every_beat_task_carry_the_installation(tmp_path: Path) -> None:
    app = make_app(_settings(tmp_path, installation="prod-eu"))
    assert app.conf.task_default_queue == queue_for("prod-eu") == "jitgate.prod-eu"
    assert app.conf.broker_transport_options["global_keyprefix"] == "jitgate:prod-eu:"
    schedule = app.conf.beat_schedule
    assert schedule and all(entry["options"]["queue"] == "jitgate.prod-eu" for entry in schedule.values())


def test_senders_use_the_same_queue_and_prefix_as_the_worker(tmp_path: Path) -> None:
    settings = _settings(tmp_path, installation="prod-eu")
    worker, sender = make_app(settings), CeleryDispatcher("redis://127.0.0.1:6379/13", installation="prod-eu")
    assert sender.queue == worker.conf.task_default_queue
    assert (sender.app.conf.broker_transport_options["global_keyprefix"]
            == worker.conf.broker_transport_options["global_keyprefix"])


def test_expiry_runs_every_second_by_default_and_follows_the_config(tmp_path: Path) -> None:
    default = make_app(_settings(tmp_path)).conf.beat_schedule["expire-pending-approvals"]
    assert default["schedule"] == 1.0 and default["task"] == "jitgate.expire_pending"
    assert default["options"]["expires"] >= 5  # a sweep a busy pool never started is dropped, not piled up
    tuned = make_app(_settings(tmp_path, approvals=ApprovalSettings(expiry_check_interval="5s")))
    assert tuned.conf.beat_schedule["expire-pending-approvals"]["schedule"] == 5.0


@pytest.mark.parametrize("name", ["Prod", "prod_eu", "-prod", "prod-", "a" * 33, "", "prod eu", "prod:eu"])
def test_an_invalid_installation_name_is_a_config_error_naming_the_key(tmp_path: Path, name: str) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text(f"installation: {name!r}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    assert "installation" in str(refused.value) and "lower-case letters" in str(refused.value)


def test_installation_defaults_to_default_and_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text("{}\n")
    assert load_settings(path).installation == "default"
    monkeypatch.setenv("JITGATE_INSTALLATION", "staging-2")
    assert load_settings(path).installation == "staging-2"
