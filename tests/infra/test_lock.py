"""requirements.lock: the pinned versions `make install` applies as constraints.

A dependency added to pyproject without re-locking would install unpinned; a pin that
pyproject's range excludes would make the install fail; a venv that drifted from the lock
would mean CI tested something else than what the lock says.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"requirements.lock: not a name==version pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    return [Requirement(line) for line in lines]


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in _declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_the_venv_holds_the_locked_versions() -> None:
    drifted = {}
    for name, version in _pins().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # pinned for another platform or Python, not installed here
        if installed != version:
            drifted[name] = (version, installed)
    assert not drifted, f"installed versions differ from requirements.lock (locked, installed): {drifted}"


#: Features the code uses -> (first version that has them, the last one before): pyproject's
#: minimum must not allow the older one (the lock installs a newer one, so nothing else shows it).
NEEDS = {
    "pydantic": [("validate_by_name", "2.11", "2.10.6")],  # ConfigDict(validate_by_name=, validate_by_alias=)
}


def test_declared_minimums_have_what_the_code_uses() -> None:
    declared = {canonicalize_name(r.name): r for r in _declared()}
    files = [p for d in ("broker", "proxy", "slackapp", "workers") for p in (ROOT / d).rglob("*.py")]
    sources = "\n".join(p.read_text() for p in files)
    for name, features in NEEDS.items():
        for feature, since, older in features:
            allowed = declared[canonicalize_name(name)].specifier
            if feature in sources:
                assert not allowed.contains(older), f"{name}'s {feature} is new in {since}; pyproject: {allowed}"
