"""tools/advisories.py: OSV range semantics, the check over pins, and the command line."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import yaml

from tools.advisories import AdvisoryError, affects, build_snapshot, check, main, read_accepted, read_pins


def advisory(*ranges: list[dict[str, str]], versions: list[str] | None = None, **extra: object) -> dict:
    return {"id": "PYSEC-0000-1", "aliases": ["CVE-0000-1", "GHSA-xxxx-yyyy-zzzz"], "ranges": list(ranges),
            "versions": versions or [], **extra}


@pytest.mark.parametrize(("events", "version", "expected"), [
    ([{"introduced": "0"}, {"fixed": "1.2"}], "1.1.9", True),
    ([{"introduced": "0"}, {"fixed": "1.2"}], "1.2", False),
    ([{"introduced": "0"}, {"fixed": "1.2"}], "1.2.0rc1", True),  # a pre-release comes before its release
    ([{"introduced": "0"}, {"fixed": "1.2"}], "1.2.post1", False),
    ([{"introduced": "1.0"}, {"fixed": "1.2"}], "0.9", False),
    ([{"introduced": "1.0"}, {"last_affected": "1.3"}], "1.3", True),
    ([{"introduced": "1.0"}, {"last_affected": "1.3"}], "1.3.1", False),
    ([{"introduced": "1.0"}], "99.0", True),  # never fixed
    # Closed and reopened: 2.x was affected again until 2.4 (events come in any order).
    ([{"fixed": "2.4"}, {"introduced": "0"}, {"introduced": "2.0"}, {"fixed": "1.5"}], "1.6", False),
    ([{"fixed": "2.4"}, {"introduced": "0"}, {"introduced": "2.0"}, {"fixed": "1.5"}], "2.3", True),
    ([{"fixed": "2.4"}, {"introduced": "0"}, {"introduced": "2.0"}, {"fixed": "1.5"}], "1.4", True),
])
def test_ecosystem_ranges_follow_osv_semantics(events: list[dict[str, str]], version: str, expected: bool) -> None:
    assert affects(advisory(events), version) is expected


def test_an_explicit_version_list_is_checked_when_there_is_no_range() -> None:
    assert affects(advisory(versions=["0.4.1", "0.4.2"]), "0.4.2")
    assert not affects(advisory(versions=["0.4.1", "0.4.2"]), "0.4.3")


def test_a_bad_event_says_which_advisory() -> None:
    with pytest.raises(AdvisoryError, match="PYSEC-0000-1.*'one-point-oh' is not a PEP 440 version"):
        affects(advisory([{"introduced": "0"}, {"fixed": "one-point-oh"}]), "1.0")
    with pytest.raises(AdvisoryError, match="PYSEC-0000-1: an event has one key"):
        affects(advisory([{"introduced": "0", "fixed": "1.0"}]), "1.0")


def test_check_reports_affected_pins_with_the_fix_and_skips_withdrawn_and_accepted() -> None:
    snapshot = {"packages": {
        "starlette": [
            advisory([{"introduced": "0.13.5"}, {"fixed": "0.27.0"}], [{"introduced": "0"}, {"fixed": "0.40"}])
        ],
        "jinja2": [advisory([{"introduced": "0"}, {"fixed": "9"}], id="PYSEC-2", withdrawn="2024-01-01")],
        "pyyaml": [advisory([{"introduced": "0"}, {"fixed": "9"}], id="PYSEC-3")],
        "idna": [advisory([{"introduced": "0"}, {"fixed": "3.7"}], id="PYSEC-4")],
    }}
    pins = {"starlette": "0.26.1", "jinja2": "3.1.0", "pyyaml": "6.0", "idna": "3.7", "left-out": "1.0"}

    findings, uncovered = check(pins, snapshot, accepted={"CVE-0000-1": "jitgate never calls it"})
    assert findings == []  # starlette's advisory is accepted by its alias
    assert uncovered == ["left-out"]  # pinned, never looked up: not silently "clean"

    findings, _ = check(pins, snapshot, accepted={})
    assert [(f.package, f.fixed) for f in findings] == [("pyyaml", "9"), ("starlette", "0.27.0")]
    assert str(findings[1]) == (
        "starlette==0.26.1 is affected by PYSEC-0000-1, CVE-0000-1, GHSA-xxxx-yyyy-zzzz; fixed in 0.27.0"
    )


def test_pins_are_read_canonically_and_a_bad_line_is_named(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pinned\nJinja2==3.1.6\nruamel.yaml==0.18.6  # comment\n\nslack_bolt==1.21.0\n")
    assert read_pins(lock) == {"jinja2": "3.1.6", "ruamel-yaml": "0.18.6", "slack-bolt": "1.21.0"}
    lock.write_text("requests>=2\n")
    with pytest.raises(AdvisoryError, match=r"requirements.lock:1: not a name==version pin: 'requests>=2'"):
        read_pins(lock)


def test_an_accepted_advisory_needs_a_reason(tmp_path: Path) -> None:
    accepted = tmp_path / "accepted.yaml"
    accepted.write_text("CVE-0000-1: ''\n")
    with pytest.raises(AdvisoryError, match="CVE-0000-1: say why"):
        read_accepted(accepted)


def _osv(id_: str, package: str, events: list[dict[str, str]], **extra: object) -> dict:
    return {"id": id_, "modified": "2024-05-01T00:00:00Z", "aliases": [f"CVE-{id_}"], "affected": [
        {"package": {"name": package, "ecosystem": "PyPI"},
         "ranges": [{"type": "GIT", "repo": "https://example.invalid", "events": [{"introduced": "abc123"}]},
                    {"type": "ECOSYSTEM", "events": events}]},
        {"package": {"name": "another-project", "ecosystem": "PyPI"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]},
    ], **extra}


def test_refresh_then_check_from_a_database_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    database = tmp_path / "advisory-database"
    (database / "vulns" / "python-multipart").mkdir(parents=True)
    (database / "vulns" / "python-multipart" / "PYSEC-2024-1.yaml").write_text(
        yaml.safe_dump(_osv("PYSEC-2024-1", "python-multipart", [{"introduced": "0"}, {"fixed": "0.0.7"}]))
    )
    (database / "vulns" / "python-multipart" / "PYSEC-2024-2.yaml").write_text(yaml.safe_dump(
        _osv("PYSEC-2024-2", "python_multipart", [{"introduced": "0"}, {"fixed": "0.0.9"}], withdrawn="2024-06-01")
    ))
    lock, snapshot = tmp_path / "requirements.lock", tmp_path / "snapshot.json"
    lock.write_text("python_multipart==0.0.6\nsix==1.16.0\n")
    args = ["--lock", str(lock), "--snapshot", str(snapshot), "--accepted", str(tmp_path / "none.yaml")]

    assert main([*args, "refresh", "--database", str(database)]) == 0
    written = json.loads(snapshot.read_text())
    assert written["packages"]["six"] == []  # looked up, nothing known
    [first, second] = written["packages"]["python-multipart"]
    assert first["ranges"] == [[{"introduced": "0"}, {"fixed": "0.0.7"}]]  # GIT range, other project left out
    assert second["withdrawn"] == "2024-06-01"

    capsys.readouterr()
    assert main([*args, "check"]) == 1
    err = capsys.readouterr().err
    assert "python-multipart==0.0.6 is affected by PYSEC-2024-1, CVE-PYSEC-2024-1; fixed in 0.0.7" in err
    assert "PYSEC-2024-2" not in err

    lock.write_text("python_multipart==0.0.7\nsix==1.16.0\nrequests==2.32.3\n")
    assert main([*args, "check"]) == 1
    assert "UNCHECKED   requests==2.32.3 is pinned but not in snapshot.json" in capsys.readouterr().err
    lock.write_text("python_multipart==0.0.7\nsix==1.16.0\n")
    assert main([*args, "check"]) == 0
    assert "advisories: ok: 2 pins against 2 advisories" in capsys.readouterr().out


def test_a_missing_snapshot_or_database_fails_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("six==1.16.0\n")
    assert main(["--lock", str(lock), "--snapshot", str(tmp_path / "nope.json"), "check"]) == 2
    assert "cannot read the advisory snapshot" in capsys.readouterr().err
    with pytest.raises(AdvisoryError, match="not a checkout of pypa/advisory-database"):
        build_snapshot(tmp_path, ["six"], date(2026, 1, 1))
