"""Attacks on the runs of result rows (proxy.protocol.rowrun, proxy.answers).

- mask_run calls Python (a column's masking function) in the middle of a row it validated
  before the call. A function that changes the buffer in place (a resize is refused: the
  buffer is exported) must not make it copy bytes from outside the row it validated: the C
  re-reads each value's length from the buffer after the calls before it
  (proxy/protocol/_rowrun.c, mask_run's value loop), so a length changed meanwhile is
  trusted as it is, and the next row's bytes (or, with a larger length, memory past the
  buffer: an ASan build reports a read overflow) land in the rewritten row.
- A session sends, counts and refuses exactly what the per-row path does, whatever the
  columns (by name, JSON, jsonb binary, derived, scanned), NULLs and empty values, runs at
  63/64/65 rows, several results in one Query, portals suspended by Execute's row limit, and
  reads split anywhere.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.masking import Masker
from broker.policy import PolicyEngine
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.protocol import rowrun
from proxy.protocol.frames import split_messages

_KIND = (rowrun.DATA_ROW,)


@pytest.mark.parametrize("mask_run", [rowrun.mask_run, rowrun.mask_run_py], ids=["c", "python"])
def test_a_function_that_changes_the_buffer_in_place_cannot_pull_bytes_from_outside_the_row(mask_run) -> None:
    row = m.data_row([b"a", b"b"])
    after = m.data_row([b"secret-raw@example.com"])
    buf = bytearray(row + after)
    second_length = 5 + 2 + 4 + 1  # where the second value's length is, after 'D', length, count, value 1

    def meddle(v: bytes) -> bytes:
        # Stays inside the buffer, so the C's read is in bounds and this test cannot crash; a
        # length that reached past the buffer would be a read overflow.
        buf[second_length:second_length + 4] = struct.pack("!I", 20)
        return b"MASKED"

    try:
        out = mask_run(buf, 0, len(buf), b"\x01\x00", (meddle, None), 1 << 20, 1, *_KIND)[0]
    except (BufferError, RuntimeError, ValueError):
        return  # refusing a buffer that changed is fine
    [(kind, body)], used = split_messages(out)
    assert (kind, used) == (ord("D"), len(out))
    assert b"secret" not in out and len(m.parse_data_row(body)) == 2


# -- the session: the run path against the per-row path -------------------------------------

_POLICY = PolicyEngine.load("agent-safe")
TEXT, INT4, JSON, JSONB, BYTEA, VARCHAR = 25, 23, 114, 3802, 17, 1043


class _PerRow(Masker):
    """Plans that never take a run: the per-row path alone."""

    def plan_rows(self, columns, lineage=None):  # type: ignore[no-untyped-def]
        plan = self._build(tuple(columns), lineage)
        if plan is not None:
            plan.rewrite = None
            plan.scanned = None
        return plan


def _row_description(cols: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!h", len(cols))
    for name, oid in cols:
        body += m.cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, 0)
    return m.frame(b"T", body)


def _bind(formats: list[int]) -> bytes:
    body = m.cstr("") + m.cstr("") + struct.pack("!hhh", 0, 0, len(formats))
    return m.frame(b"B", body + b"".join(struct.pack("!h", f) for f in formats))


def _execute(limit: int) -> bytes:
    return m.frame(b"E", m.cstr("") + struct.pack("!i", limit))


_STATEMENTS = [
    ("select id, email, note, api_key from customers",
     [("id", INT4), ("email", TEXT), ("note", TEXT), ("api_key", TEXT)]),
    ("select email, ssn, phone, card_number, password, token from customers",
     [("email", TEXT), ("ssn", TEXT), ("phone", VARCHAR), ("card_number", TEXT), ("password", TEXT), ("token", TEXT)]),
    ("select email, ssn from customers", [("email", JSON), ("ssn", JSONB)]),
    ("select id, email from customers", [("id", INT4), ("email", BYTEA)]),
    ("select upper(email) as upper, note from customers", [("upper", TEXT), ("note", TEXT)]),  # derived: NULLs filled
    ("select email from customers", [("email", TEXT)]),
]
_VALUES = [b"ann@example.com", b"4242 4242 4242 4242", b"123-45-6789", b"password=hunter2", b"+1 415 555 0100",
           b"AKIAFAKEFAKEFAKEFAKE", b"", b"x", b"\x01\"a@b.co\"", b"\x01{\"a\": 1}", b"\x02zz",
           b"\"ann@example.com\"", b"\xff\xfe\x00", "é@ü.de".encode(), b"a" * 70000]
_value = st.one_of(st.none(), st.sampled_from(_VALUES), st.binary(max_size=24))


@st.composite
def _scenario(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    results = []
    for _ in range(draw(st.integers(1, 3))):
        sql, cols = draw(st.sampled_from(_STATEMENTS))
        n = draw(st.sampled_from([0, 1, 63, 64, 65, 130, draw(st.integers(0, 10))]))
        base = [draw(_value) for _ in cols]
        rows = []
        for _ in range(n):
            r = list(base)
            r[draw(st.integers(0, len(cols) - 1))] = draw(_value)
            if draw(st.integers(0, 200)) == 0:
                r.append(b"one value too many")  # the masker refuses the result
            rows.append(r)
        results.append((sql, cols, rows))
    extended = draw(st.booleans())
    formats = draw(st.sampled_from([[], [0], [1]])) if extended else []
    limit = draw(st.sampled_from([0, 1, 64, 65])) if extended else 0
    cuts = draw(st.lists(st.integers(0, 1 << 22), max_size=8))
    return results[:1] if extended else results, extended, formats, limit, cuts


def _play(masker: Masker, scenario) -> tuple:  # type: ignore[no-untyped-def, type-arg]
    results, extended, formats, limit, cuts = scenario
    events: list = []  # type: ignore[type-arg]
    mach = SessionMachine(classify=_POLICY.classify, masker=masker, on_statement=events.append,
                          client_user="agent", upstream_user="v-token-rw-123")
    if extended:
        sql, cols, rows = results[0]
        mach.feed_client(m.parse_message("", sql) + _bind(formats) + m.describe_message("P", "") + _execute(limit)
                         + (_execute(0) if limit else b"") + m.frame(b"S", b""))
        body = [m.data_row(r) for r in rows]
        answer = m.frame(b"1", b"") + m.frame(b"2", b"") + _row_description(cols)
        if limit and len(rows) > limit:
            answer += b"".join(body[:limit]) + m.frame(b"s", b"") + b"".join(body[limit:])
        else:
            answer += b"".join(body)
        answer += m.frame(b"C", m.cstr(f"SELECT {len(rows)}")) + m.ready_for_query(b"I")
    else:
        mach.feed_client(m.query_message("; ".join(sql for sql, _, _ in results)))
        answer = b"".join(
            _row_description(cols) + b"".join(m.data_row(r) for r in rows)
            + m.frame(b"C", m.cstr(f"SELECT {len(rows)}"))
            for _, cols, rows in results
        ) + m.ready_for_query(b"I")
    upstream = b"".join(mach.out_upstream)
    points = sorted({c % (len(answer) + 1) for c in cuts} | {0, len(answer)})
    error = None
    try:
        for a, b in zip(points, points[1:]):
            mach.feed_server(answer[a:b])
    except Exception as exc:
        error = (type(exc).__name__, str(exc))
    counts = [(e.sql, e.rows, e.masked, e.error_sqlstate) for e in events]
    return upstream, b"".join(mach.out_client), counts, error


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(_scenario())
def test_a_session_sends_counts_and_refuses_what_the_per_row_path_does(scenario) -> None:  # type: ignore[no-untyped-def]
    runs = _play(Masker(), scenario)
    per_row = _play(_PerRow(), scenario)
    assert runs[3] == per_row[3]
    assert runs[2] == per_row[2]
    assert runs[1] == per_row[1]
    assert runs[0] == per_row[0]
