"""The bypass corpus (tests/corpus/bypass.yaml) through the CLI and through the real proxy.

On the wire every refused case (block, and review: this gateway has no approvals service)
must answer 42501, leave the session usable, and leave no trace upstream: same row counts,
same tables, no large object imported, no role switched.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import yaml

from proxy.records import syntax_error

ROOT = Path(__file__).parents[2]
CORPUS = ROOT / "tests" / "corpus" / "bypass.yaml"
CASES: list[dict[str, str]] = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))

pytestmark = pytest.mark.e2e


def test_corpus_matches_the_engine_through_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli.main", "policy", "check", "--corpus", str(CORPUS)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CASES)} of {len(CASES)} as expected" in result.stderr


def _footprint(conn: psycopg.Connection) -> tuple[object, ...]:
    row = conn.execute(
        "select (select count(*) from customers), (select count(*) from orders),"
        " (select count(*) from pg_class where relkind = 'r' and relnamespace = 'public'::regnamespace),"
        " (select count(*) from pg_largeobject_metadata)"
    ).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.parametrize("case", CASES, ids=[c["sql"][:40] for c in CASES])
def test_corpus_on_the_wire(gateway, upstream, case: dict[str, str]) -> None:
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin, \
            psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        before = _footprint(admin)
        user = conn.execute("select current_user").fetchone()
        if case["expect"] == "allow":
            conn.execute(case["sql"])
        elif syntax_error(case["sql"]) is not None:
            # What the gateway's parser rejects is answered as PostgreSQL's syntax error.
            with pytest.raises(psycopg.errors.SyntaxError) as err:
                conn.execute(case["sql"])
            assert "jitgate" in (err.value.diag.message_detail or "")
        else:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
                conn.execute(case["sql"])
            assert err.value.sqlstate == "42501"
            assert "jitgate" in str(err.value)
        # The session is still usable, still the same login, and nothing reached the upstream.
        assert conn.execute("select current_user").fetchone() == user
        assert _footprint(admin) == before
