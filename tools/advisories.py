"""Known vulnerabilities in the pinned dependencies, checked offline against a snapshot.

`make audit-deps` asks a live advisory service (pip-audit); that needs pypi.org's JSON API or
osv.dev, which not every machine (nor this project's CI) reaches. So `make test` checks every
pin in requirements.lock against a committed snapshot of the PyPA advisory database
(https://github.com/pypa/advisory-database, OSV format, CC-BY-4.0), `infra/advisories/`:

    pypa-snapshot.json   per pinned package, its advisories: id, aliases, affected ranges
    accepted.yaml        advisories judged not to apply to jitgate, each with its reason

    python tools/advisories.py check [--lock requirements.lock]
    python tools/advisories.py refresh --database ~/src/advisory-database

`check` fails when a pin falls in an advisory's affected range (not withdrawn, not accepted)
or when a pinned package is missing from the snapshot (re-locked without a refresh: it would
pass unchecked). `refresh` rewrites the snapshot from a checkout of the database for what
requirements.lock pins now. The snapshot is only as new as its last refresh; its "taken" date
says when, and `make audit-deps` is the live check where the service is reachable.

Versions compare by PEP 440 (`packaging`), which is what the database's ECOSYSTEM ranges for
PyPI mean. A range's events are applied in version order: `introduced` opens it, `fixed`
closes it at that version, `last_affected` closes it after that version.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
SNAPSHOT = ROOT / "infra" / "advisories" / "pypa-snapshot.json"
ACCEPTED = ROOT / "infra" / "advisories" / "accepted.yaml"
SOURCE = "PyPA advisory database, https://github.com/pypa/advisory-database (CC-BY-4.0)"

_EVENT_KINDS = ("introduced", "fixed", "last_affected")
_ZERO = Version("0")


class AdvisoryError(Exception):
    """A snapshot, accepted list or lock file that cannot be read; says which and why."""


@dataclass(frozen=True, slots=True)
class Finding:
    package: str
    version: str
    advisory: str  # its id, then its aliases
    fixed: str | None  # the lowest version that fixes it above the pin, if the advisory says

    def __str__(self) -> str:
        upgrade = f"; fixed in {self.fixed}" if self.fixed else "; no fixed version published"
        return f"{self.package}=={self.version} is affected by {self.advisory}{upgrade}"


def read_pins(path: Path = LOCK) -> dict[str, str]:
    """requirements.lock's `name==version` lines, names canonicalised (PEP 503)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if match is None:
            raise AdvisoryError(f"{path.name}:{number}: not a name==version pin: {raw!r}")
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def _version(text: str, where: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise AdvisoryError(f"{where}: {text!r} is not a PEP 440 version") from None


def _range_affects(events: list[Mapping[str, str]], version: Version, where: str) -> bool:
    """OSV ECOSYSTEM range semantics, events applied in version order."""
    ordered: list[tuple[Version, str]] = []
    for event in events:
        (kind, value), *more = event.items()
        if more or kind not in _EVENT_KINDS:
            raise AdvisoryError(f"{where}: an event has one key of {', '.join(_EVENT_KINDS)}, not {dict(event)}")
        ordered.append((_ZERO if value == "0" else _version(value, where), kind))
    # At one version, `fixed` wins over `introduced` (a range may close and reopen there).
    ordered.sort(key=lambda item: (item[0], item[1] != "introduced"))
    affected = False
    for at, kind in ordered:
        if kind == "introduced" and version >= at:
            affected = True
        elif kind == "fixed" and version >= at or kind == "last_affected" and version > at:
            affected = False
    return affected


def _fixed_above(advisory: Mapping[str, Any], version: Version) -> str | None:
    where = f"advisory {advisory.get('id', '?')}"
    fixes = sorted(
        (at, value)
        for events in advisory.get("ranges", []) for event in events for kind, value in event.items()
        if kind == "fixed" and (at := _version(value, where)) > version
    )
    return fixes[0][1] if fixes else None


def affects(advisory: Mapping[str, Any], version_text: str) -> bool:
    """Whether the (not withdrawn) advisory covers this version of its package."""
    where = f"advisory {advisory.get('id', '?')}"
    version = _version(version_text, where)
    if any(_range_affects(events, version, where) for events in advisory.get("ranges", [])):
        return True
    listed = {_version(v, where) for v in advisory.get("versions", [])}
    return version in listed


def check(
    pins: Mapping[str, str], snapshot: Mapping[str, Any], accepted: Mapping[str, str]
) -> tuple[list[Finding], list[str]]:
    """The pins an advisory affects, and the pinned packages the snapshot does not cover."""
    packages: Mapping[str, list[Mapping[str, Any]]] = snapshot.get("packages", {})
    findings: list[Finding] = []
    uncovered = sorted(name for name in pins if name not in packages)
    for name, version in sorted(pins.items()):
        for advisory in packages.get(name, []):
            names = [advisory["id"], *advisory.get("aliases", [])]
            if advisory.get("withdrawn") or any(n in accepted for n in names) or not affects(advisory, version):
                continue
            findings.append(Finding(name, version, ", ".join(names), _fixed_above(advisory, Version(version))))
    return findings, uncovered


def read_accepted(path: Path = ACCEPTED) -> dict[str, str]:
    """accepted.yaml: advisory id (or alias) -> why it does not apply; a reason is required."""
    if not path.exists():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise AdvisoryError(f"{path.name}: expected a mapping of advisory id to reason")
    for key, reason in data.items():
        if not isinstance(reason, str) or not reason.strip():
            raise AdvisoryError(f"{path.name}: {key}: say why it does not apply (a non-empty reason)")
    return {str(k): str(v) for k, v in data.items()}


def read_snapshot(path: Path = SNAPSHOT) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdvisoryError(f"{path}: cannot read the advisory snapshot: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("packages"), dict):
        raise AdvisoryError(f"{path}: expected an object with a 'packages' mapping")
    return data


def entry_from_osv(record: Mapping[str, Any], package: str) -> dict[str, Any] | None:
    """The parts of one OSV record (a database YAML file) that `check` reads, for `package`."""
    ranges: list[list[dict[str, str]]] = []
    versions: list[str] = []
    for affected in record.get("affected", []):
        named = affected.get("package", {})
        if named.get("ecosystem") != "PyPI" or canonicalize_name(named.get("name", "")) != package:
            continue
        ecosystem = [r for r in affected.get("ranges", []) if r.get("type") == "ECOSYSTEM"]
        for r in ecosystem:
            ranges.append([{k: str(v) for k, v in e.items() if k in _EVENT_KINDS} for e in r.get("events", [])])
        if not ecosystem:
            versions.extend(str(v) for v in affected.get("versions", []))
    if not ranges and not versions:
        return None
    entry: dict[str, Any] = {"id": record["id"], "aliases": list(record.get("aliases") or [])}
    if record.get("withdrawn"):
        entry["withdrawn"] = str(record["withdrawn"])
    entry["modified"] = str(record.get("modified", ""))
    entry["ranges"] = ranges
    if versions:
        entry["versions"] = versions
    return entry


def build_snapshot(database: Path, packages: Iterable[str], taken: dt.date) -> dict[str, Any]:
    """A snapshot of `database` (a checkout of pypa/advisory-database) for `packages`."""
    vulns = database / "vulns"
    if not vulns.is_dir():
        raise AdvisoryError(f"{database}: no vulns/ folder: not a checkout of pypa/advisory-database")
    folders: dict[str, Path] = {canonicalize_name(p.name): p for p in vulns.iterdir() if p.is_dir()}
    out: dict[str, list[dict[str, Any]]] = {}
    for package in sorted(packages):
        entries = []
        folder = folders.get(package)
        for path in sorted(folder.glob("*.yaml")) if folder else []:
            entry = entry_from_osv(yaml.safe_load(path.read_text()), package)
            if entry is not None:
                entries.append(entry)
        out[package] = entries
    return {"source": SOURCE, "taken": taken.isoformat(), "packages": out}


def _check(args: argparse.Namespace) -> int:
    pins = read_pins(args.lock)
    snapshot = read_snapshot(args.snapshot)
    findings, uncovered = check(pins, snapshot, read_accepted(args.accepted))
    count = sum(len(v) for v in snapshot["packages"].values())
    for finding in findings:
        print(f"VULNERABLE  {finding}", file=sys.stderr)
    for name in uncovered:
        print(f"UNCHECKED   {name}=={pins[name]} is pinned but not in {args.snapshot.name}: "
              "run `python tools/advisories.py refresh --database <checkout>`", file=sys.stderr)
    verdict = "FAILED" if findings or uncovered else "ok"
    print(f"advisories: {verdict}: {len(pins)} pins against {count} advisories "
          f"({snapshot.get('source', '?')}, taken {snapshot.get('taken', '?')})")
    return 1 if findings or uncovered else 0


def _refresh(args: argparse.Namespace) -> int:
    snapshot = build_snapshot(args.database, read_pins(args.lock), dt.date.today())
    args.snapshot.write_text(json.dumps(snapshot, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.snapshot}: {sum(len(v) for v in snapshot['packages'].values())} advisories")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", type=Path, default=LOCK)
    parser.add_argument("--snapshot", type=Path, default=SNAPSHOT)
    parser.add_argument("--accepted", type=Path, default=ACCEPTED)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="fail on a pin an advisory affects, or one the snapshot lacks")
    refresh = sub.add_parser("refresh", help="rewrite the snapshot from a checkout of the database")
    refresh.add_argument("--database", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        return _check(args) if args.command == "check" else _refresh(args)
    except AdvisoryError as exc:
        print(f"advisories: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
