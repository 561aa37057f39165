"""The schedule and the demo's defaults: beat signs the head every minute on the installation's
queue when a key and a witness are configured (and prunes with a retention); the demo makes
its key pair and witness so its audit trail is anchored from the start."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.audit.witnessing import build_setup
from broker.cli.demo_cmd import demo_audit_settings
from broker.config import Settings
from workers.app import make_app, queue_for


def test_beat_schedules_the_witness_only_when_it_can_sign(tmp_path: Path) -> None:
    bare = make_app(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0"))
    assert "witness-audit-checkpoint" not in bare.conf.beat_schedule

    audit = demo_audit_settings(tmp_path)
    app = make_app(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", installation="acme",
                            audit=audit))
    entry = app.conf.beat_schedule["witness-audit-checkpoint"]
    assert (entry["task"], entry["schedule"], entry["options"]["queue"]) == (
        "jitgate.witness_checkpoint", 60.0, queue_for("acme"))
    assert "prune-audit" not in app.conf.beat_schedule

    kept = audit.model_copy(update={"retention_days": 90})
    app = make_app(Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0", audit=kept))
    prune = app.conf.beat_schedule["prune-audit"]
    assert (prune["task"], prune["schedule"]) == ("jitgate.prune_audit", 86400.0)


def test_demo_makes_its_key_pair_and_witness_once(tmp_path: Path) -> None:
    audit = demo_audit_settings(tmp_path)
    assert audit.signing_key_file is not None and audit.witness.file is not None
    assert audit.signing_key_file.stat().st_mode & 0o077 == 0
    assert audit.witness.file.is_relative_to(tmp_path)
    pem = audit.signing_key_file.read_bytes()
    assert demo_audit_settings(tmp_path).signing_key_file.read_bytes() == pem  # type: ignore[union-attr]
    setup = build_setup(Settings(data_dir=tmp_path, audit=audit))
    assert [w.name for w in setup.witnesses] == ["file"]


def test_witness_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"audit\.witness\.interval\n.*must be positive"):
        Settings(audit={"witness": {"interval": "0s"}})
    with pytest.raises(ValueError, match="prune_interval must be at least 60s"):
        Settings(audit={"prune_interval": "10s"})
    with pytest.raises(ValueError, match="audit.signing_key_file is not set"):
        build_setup(Settings(data_dir=tmp_path, audit={"witness": {"file": str(tmp_path / "w.jsonl")}}))
    with pytest.raises(ValueError, match="no witness configured"):
        build_setup(Settings(data_dir=tmp_path, audit={"signing_key_file": str(tmp_path / "k.pem")}))
    with pytest.raises(ValueError, match="to_sink is true but audit.sink is not set"):
        build_setup(Settings(data_dir=tmp_path, audit={**demo_audit_settings(tmp_path).model_dump(),
                                                       "witness": {"to_sink": True}}))
