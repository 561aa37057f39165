"""200 concurrent sessions through one `jitgate proxy` process (bench/load_sessions.py, small).

Every decision must be right under load (reads succeed, blocked statements answer 42501,
masked columns never show a seeded raw value), no session may leak (the proxy's
`jitgate_sessions_active` and the store's open sessions back to 0), and the proxy's memory and
open fds must come back near where they started.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BENCH = Path(__file__).parents[2] / "bench" / "load_sessions.py"
_spec = importlib.util.spec_from_file_location("load_sessions", BENCH)
assert _spec is not None and _spec.loader is not None
load_sessions = importlib.util.module_from_spec(_spec)
sys.modules["load_sessions"] = load_sessions
_spec.loader.exec_module(load_sessions)

SESSIONS = 200
SECONDS = 6


@pytest.mark.timeout(90)
def test_200_sessions_decide_right_and_leave_nothing_behind():
    mib = 1024 * 1024
    # Not under tmp_path: the embedded server may run as another account, which must reach its files.
    with tempfile.TemporaryDirectory(prefix="jitgate-load-") as tmp, \
            load_sessions.rig(Path(tmp), max_connections=SESSIONS + 50) as rig:
        before = rig.usage()
        result = asyncio.run(load_sessions.run_load(rig, sessions=SESSIONS, seconds=SECONDS))
        active, open_in_store = asyncio.run(load_sessions.settle(rig))
        time.sleep(1)
        after = rig.usage()
    assert result.connect_failures == []
    # Every session got in: a connect burst's session starts share store transactions, so
    # none waits long enough to be refused (08006) as it could when each took its own.
    assert result.sessions == SESSIONS, result.refusal_reasons
    assert result.all_connected is not None and result.steady
    assert result.wrong == []
    assert all(result.counts[k] > SESSIONS for k in ("read", "masked")) and result.counts["blocked"] > 0
    assert (active, open_in_store) == (0, 0)
    # Per-session buffers are released: back near the start, not growing with sessions served.
    assert after[1] <= before[1] + 40, (before, after)
    assert after[0] <= before[0] + 150 * mib, (before, after)
