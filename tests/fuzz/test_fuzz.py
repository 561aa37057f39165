"""The fuzz targets under hypothesis: a short run here, minutes under `make fuzz`.

`make fuzz` sets HYPOTHESIS_PROFILE=fuzz (many more examples, no deadline) and then runs the
atheris driver when atheris is installed.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.protocol import messages as m
from tests.fuzz import targets

settings.register_profile("fuzz", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.register_profile("default", max_examples=150, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Frames that look like the protocol, so the fuzzer gets past the framing often.
_KINDS = st.sampled_from(b"QPBDESCHFdcfXpTZNAKRs1234tnIGW?\x00")
_frame = st.builds(
    lambda kind, body, lie: bytes([kind]) + (len(body) + 4 + lie).to_bytes(4, "big", signed=False) + body,
    _KINDS, st.binary(max_size=80), st.sampled_from([0, 0, 0, 1, -1, 1 << 20]).filter(lambda x: x >= -1),
)
_stream = st.lists(_frame, max_size=12).map(b"".join)
_sqlish = st.sampled_from([
    "select 1", "delete from customers", "update t set a = 1", "drop table t", "copy t to program 'x'",
    "select pg_read_file('/etc/passwd')", "prepare p as delete from t", "execute p", "begin", "commit",
])


def _query(sql: str) -> bytes:
    return m.query_message(sql)


@given(st.one_of(st.binary(max_size=400), _stream))
def test_codec(data):
    targets.codec(data)


@given(st.integers(0, 255), st.lists(st.one_of(_sqlish.map(_query), _frame), max_size=8), _stream)
def test_session(split, client, server):
    client_bytes = b"".join(client)
    targets.session(bytes([min(split, len(client_bytes))]) + client_bytes + server)


@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode), _sqlish.map(str.encode)))
def test_policy(data):
    targets.policy(data)
