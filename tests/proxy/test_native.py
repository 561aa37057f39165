"""The compiled path is the one that runs: every module proxy.native lists is loaded from its
extension, built from the source beside it (not a silent fallback to the .py, not an
extension left over from before an edit)."""

from __future__ import annotations

import json
import os

import pytest

from proxy import native


def test_every_per_message_module_is_compiled_from_its_current_source() -> None:
    if os.environ.get("JITGATE_PURE_PYTHON") == "1" and os.environ.get("CI") != "true":
        pytest.skip("built with JITGATE_PURE_PYTHON=1: the proxy runs interpreted")
    modules = native.status()
    assert [m.name for m in modules] == [*native.MODULES, *native.C_EXTENSIONS]
    interpreted = [m.name for m in modules if not m.compiled]
    assert not interpreted, f"interpreted, not compiled (run `make native`): {interpreted}"
    stale = [m.name for m in modules if m.current is False]
    assert not stale, f"compiled from an older source (run `make native`): {stale}"
    assert native.summary() == f"{len(modules)}/{len(modules)} compiled"


def test_a_module_edited_after_it_was_built_shows_as_stale(tmp_path, monkeypatch) -> None:
    built = json.loads(native.MANIFEST.read_text()) if native.MANIFEST.exists() else {}
    changed = dict(built, **{"proxy.machine": "0" * 64})
    manifest = tmp_path / "native_sources.json"
    manifest.write_text(json.dumps(changed))
    monkeypatch.setattr(native, "MANIFEST", manifest)
    machine = {m.name: m for m in native.status()}["proxy.machine"]
    # An interpreted module runs the source beside it whatever the manifest says.
    assert machine.current is (not machine.compiled)
    assert ("STALE" in native.summary()) is machine.compiled
