"""Runs of result rows at once (proxy.protocol.rowrun): the C walks agree with their Python
references on any bytes, the run's gate opens whenever one of its rows' would, and a session
masks exactly what the per-row path masks, byte for byte."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.masking import Masker
from broker.masking.types import ColumnInfo
from proxy.protocol import messages as m
from proxy.protocol import rowrun
from proxy.protocol.frames import split_messages
from proxy.records import StatementEvent
from tests.proxy.test_machine import complete, machine, row_description, sent

TEXT, INT4 = 25, 23
D = rowrun.DATA_ROW
Value = bytes | None


def data_row(values: list[Value]) -> bytes:
    return m.data_row(values)


def test_the_c_walk_is_the_one_built() -> None:
    import os

    if os.environ.get("JITGATE_PURE_PYTHON") == "1" and os.environ.get("CI") != "true":
        pytest.skip("built with JITGATE_PURE_PYTHON=1")
    assert rowrun.NATIVE and rowrun.join_scanned is not rowrun.join_scanned_py
    assert rowrun.mask_run is not rowrun.mask_run_py


@pytest.mark.parametrize("join", [rowrun.join_scanned, rowrun.join_scanned_py], ids=["c", "python"])
def test_joins_the_scanned_values_of_complete_rows_and_stops_at_anything_else(join) -> None:
    rows = data_row([b"1", b"alpha", None]) + data_row([b"2", None, b"x"]) + data_row([b"3", b"", b"y"])
    tail = complete("SELECT 3")
    buf = bytearray(rows + tail)
    assert join(buf, 0, len(buf), b"\x00\x01\x01", 1 << 20, 64, D) == (b"alpha\x00x\x00\x00y\x00", len(rows), 3)
    assert join(bytes(buf), 0, len(buf), b"\x00\x01\x01", 1 << 20, 2, D) == (
        b"alpha\x00x\x00", len(data_row([b"1", b"alpha", None]) + data_row([b"2", None, b"x"])), 2)
    # Incomplete: the last row is cut; it waits for the rest of it.
    assert join(buf, 0, len(rows) - 1, b"\x01\x01\x01", 1 << 20, 64, D)[2] == 2
    # Another column count, a longer message than allowed, a start inside a message.
    assert join(buf, 0, len(buf), b"\x01\x01", 1 << 20, 64, D) == (b"", 0, 0)
    assert join(buf, 0, len(buf), b"\x01\x01\x01", 10, 64, D) == (b"", 0, 0)
    assert join(buf, 1, len(buf), b"\x01\x01\x01", 1 << 20, 64, D) == (b"", 1, 0)
    with pytest.raises(ValueError):
        join(buf, 0, len(buf) + 1, b"\x01", 1 << 20, 64, D)


@pytest.mark.parametrize("join", [rowrun.join_scanned, rowrun.join_scanned_py], ids=["c", "python"])
@pytest.mark.parametrize(
    "bad",
    [
        b"D" + struct.pack("!ih", 6 + 4, 1) + struct.pack("!i", 5),  # a value past the message
        b"D" + struct.pack("!ih", 6 + 4 + 2, 1) + struct.pack("!i", 1) + b"ab",  # bytes after it
        b"D" + struct.pack("!ih", 6 + 4, 1) + struct.pack("!i", -2),  # a negative length not -1
        b"D" + struct.pack("!ih", 6 + 2, 2) + b"\x00\x00",  # a length cut short
        b"D" + struct.pack("!i", 5) + b"\x00",  # no column count
    ],
)
def test_a_malformed_row_is_left_to_the_per_row_path(join, bad) -> None:
    good = data_row([b"ok"])
    buf = good + bad + good
    assert join(buf, 0, len(buf), b"\x01", 1 << 20, 64, D) == (b"ok\x00", len(good), 1)


_values = st.lists(st.one_of(st.none(), st.binary(max_size=12)), min_size=0, max_size=4)


@st.composite
def wire(draw: st.DrawFn) -> tuple[bytes, int, int, bytes, int, int, int]:
    """Messages of one kind (DataRows, or binary COPY CopyData: the same layout) and others."""
    ncols = draw(st.integers(0, 4))
    msg = draw(st.sampled_from([rowrun.DATA_ROW, rowrun.COPY_DATA]))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["row", "row", "row", "other", "junk"]))
        if kind == "row":
            n = draw(st.sampled_from([ncols, ncols, draw(st.integers(0, 5))]))
            row = data_row([draw(st.one_of(st.none(), st.binary(max_size=12))) for _ in range(n)])
            parts.append(bytes((msg,)) + row[1:])
        elif kind == "other":
            parts.append(complete("SELECT 1"))
        else:
            parts.append(draw(st.binary(max_size=16)))
    buf = b"".join(parts)
    if buf and draw(st.booleans()):  # flip one byte anywhere: lengths, counts, kinds
        i = draw(st.integers(0, len(buf) - 1))
        buf = buf[:i] + bytes([draw(st.integers(0, 255))]) + buf[i + 1:]
    start = draw(st.integers(0, len(buf)))
    stop = draw(st.integers(start, len(buf)))
    scanned = bytes(draw(st.lists(st.integers(0, 1), min_size=ncols, max_size=ncols)))
    return buf, start, stop, scanned, draw(st.sampled_from([6, 20, 1 << 20])), draw(st.integers(0, 8)), msg


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(wire())
def test_c_and_python_give_the_same_answer_on_any_bytes(case) -> None:
    buf, start, stop, scanned, max_length, max_rows, kind = case
    expected = rowrun.join_scanned_py(buf, start, stop, scanned, max_length, max_rows, kind)
    assert rowrun.join_scanned(buf, start, stop, scanned, max_length, max_rows, kind) == expected
    assert rowrun.join_scanned(bytearray(buf), start, stop, scanned, max_length, max_rows, kind) == expected


def _fn(kind: str):
    return {
        "same": lambda v: v,
        "null": lambda v: None,
        "stars": lambda v: b"********",
        "longer": lambda v: v * 3 + b"!",
        "empty": lambda v: b"",
        "copy": lambda v: bytes(bytearray(v)),  # equal, but another object: counted as changed
    }[kind]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(wire(), st.data())
def test_mask_run_c_and_python_give_the_same_answer_on_any_bytes(case, data) -> None:
    buf, start, stop, flags, max_length, max_rows, kind = case
    kinds = [data.draw(st.sampled_from(["same", "null", "stars", "longer", "empty", "copy"])) for _ in flags]
    fns = tuple(_fn(k) if f else None for k, f in zip(kinds, flags))
    expected = rowrun.mask_run_py(buf, start, stop, flags, fns, max_length, max_rows, kind)
    assert rowrun.mask_run(buf, start, stop, flags, fns, max_length, max_rows, kind) == expected
    assert rowrun.mask_run(bytearray(buf), start, stop, flags, fns, max_length, max_rows, kind) == expected
    # The same rows as the per-row path: parse, replace, rebuild.
    out, end, rows, changed = expected
    rebuilt, count = [], 0
    for _, body in split_messages(bytes(buf[start:end]))[0]:
        values = m.parse_data_row(body)
        for i, fn in enumerate(fns):
            if fn is not None and values[i] is not None:
                new = fn(values[i])
                count += new is not values[i]
                values[i] = new
        rebuilt.append(bytes((kind,)) + data_row(values)[1:])
    assert (out, changed) == (b"".join(rebuilt), count)


@pytest.mark.parametrize("mask_run", [rowrun.mask_run, rowrun.mask_run_py], ids=["c", "python"])
def test_mask_run_passes_errors_on_and_refuses_what_is_not_a_value(mask_run) -> None:
    buf = data_row([b"a", b"b"]) * 3

    def refuse(v):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError, match="no"):
        mask_run(buf, 0, len(buf), b"\x00\x01", (None, refuse), 1 << 20, 64, D)
    with pytest.raises(TypeError):
        mask_run(buf, 0, len(buf), b"\x00\x01", (None, lambda v: "text"), 1 << 20, 64, D)
    with pytest.raises(ValueError):
        mask_run(buf, 0, len(buf), b"\x00\x01", (None,), 1 << 20, 64, D)


# Values that open the default detectors' gates, and values that do not.
_secretish = st.sampled_from([
    b"ann@example.com", b"4242 4242 4242 4242", b"123-45-6789", b"password=hunter2", b"$2b$12$abc",
    b"AKIAFAKEFAKEFAKEFAKE", b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", b"+1 415 555 0100", b"a:b",
])
_plain = st.binary(max_size=20) | st.text(alphabet="abc xyz-.,", max_size=30).map(str.encode)


@settings(max_examples=400)
@given(st.lists(st.lists(st.one_of(st.none(), _plain, _secretish), min_size=3, max_size=3), min_size=1, max_size=12),
       st.lists(st.integers(0, 1), min_size=3, max_size=3))
def test_the_run_gate_opens_whenever_one_row_gate_would(rows, flags) -> None:
    columns = [ColumnInfo(name, TEXT, 0) for name in ("note", "body", "memo")]
    plan = Masker().plan_rows(columns)
    assert plan is not None and plan.scanned == b"\x01\x01\x01"
    scanned = bytes(flags)
    buf = b"".join(data_row(r) for r in rows)
    joined, end, taken = rowrun.join_scanned(buf, 0, len(buf), scanned, 1 << 20, 64, D)
    assert (end, taken) == (len(buf), len(rows))
    for r in rows:
        one = b"\x00".join(v for v, f in zip(r, scanned) if f and v is not None)
        if plan.triggered(one):
            assert plan.triggered(joined), (r, joined)


def test_a_plan_says_which_columns_are_scanned_and_which_rewritten() -> None:
    masker = Masker()
    scan_only = masker.plan_rows([ColumnInfo("id", INT4, 0), ColumnInfo("note", TEXT, 0)])
    assert scan_only is not None and (scan_only.scanned, scan_only.rewrite) == (b"\x00\x01", None)
    both = masker.plan_rows([ColumnInfo("id", INT4, 0), ColumnInfo("email", TEXT, 0), ColumnInfo("note", TEXT, 0)])
    assert both is not None and (both.scanned, both.rewrite) == (b"\x00\x00\x01", b"\x00\x03\x00")  # 3: e-mail, in C
    assert both.rewrite_fns[0] is None and both.rewrite_fns[1] is not None


def _session_rows(
    masker: Masker, columns: list[tuple[str, int]], rows: list[list[Value]], chunk: int
) -> tuple[list[list[Value]], list[StatementEvent]]:
    events: list[StatementEvent] = []
    mach = machine(masker=masker, events=events)
    mach.feed_client(m.query_message("select * from t"))
    sent(mach)
    answer = (row_description(*columns) + b"".join(data_row(r) for r in rows)
              + complete(f"SELECT {len(rows)}") + m.ready_for_query(b"I"))
    for i in range(0, len(answer), chunk):
        mach.feed_server(answer[i:i + chunk])
    out = [m.parse_data_row(body) for kind, body in sent(mach, "out_client") if kind == ord("D")]
    return out, events


def _per_row(masker: Masker, columns: list[tuple[str, int]], rows: list[list[Value]]) -> tuple[list, int]:
    plan = masker.plan_rows([ColumnInfo(name, oid, 0) for name, oid in columns])
    assert plan is not None
    expected, count = [], 0
    for r in rows:
        masked, n = plan.mask_values(list(r))
        expected.append(r if masked is None else masked)
        count += n
    return expected, count


SCANNED = [("id", INT4), ("note", TEXT), ("memo", TEXT)]
MIXED = [("id", INT4), ("email", TEXT), ("note", TEXT), ("api_key", TEXT)]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
@pytest.mark.parametrize("columns", [SCANNED, MIXED], ids=["scanned", "by-name-and-scanned"])
def test_a_session_masks_what_the_per_row_path_masks_and_counts_every_row(chunk, columns) -> None:
    masker = Masker()
    rows: list[list[Value]] = []
    for i in range(300):
        row: list[Value] = [str(i).encode()] + [b"nothing to see"] * (len(columns) - 1)
        if len(columns) == 4:
            row[1] = f"user{i}@example.com".encode() if i % 7 else None
            row[3] = b"" if i % 11 == 0 else b"fake-api-key-" + str(i).encode()
        rows.append(row)
    note = [name for name, _ in columns].index("note")
    rows[5][note] = b"write to ann@example.com"
    rows[200][-1 if columns is SCANNED else note] = b"card 4242 4242 4242 4242 ok"
    rows[299][note] = b"key AKIAFAKEFAKEFAKEFAKE"
    out, events = _session_rows(masker, columns, rows, chunk)
    expected, count = _per_row(masker, columns, rows)
    assert out == expected
    assert b"ann@" not in out[5][note] and out[299][note] != rows[299][note]
    assert out[6][note] == rows[6][note]
    if columns is MIXED:
        assert out[1][1] == b"u***@example.com" and out[7][1] is None and out[11][3] == b""
        assert out[1][3] == b"********"
    [event] = events
    assert event.rows == 300 and event.masked == count > 0


# -- text COPY lines ---------------------------------------------------------------------------

_TEXT_ALPHABET = [b"a", b"Z", b"7", b"@", b" ", b"-", b"\t", b"\\", b"\n", b"\\t", b"\\n", b"\\\\", b"\\N", b"\\101",
                  b"\\x41", b"\\q", b"\xc3\xa9", b"=", b":", b"4242 4242 4242 4242", b"ann@example.com"]


def copy_line(line: bytes) -> bytes:
    return b"d" + (len(line) + 4).to_bytes(4, "big") + line


@st.composite
def text_wire(draw: st.DrawFn) -> tuple[bytes, int, int, bytes, bytes, int, int]:
    ncols = draw(st.integers(1, 4))
    null = draw(st.sampled_from([b"\\N", b"", b"NULL"]))
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        what = draw(st.sampled_from(["line", "line", "line", "other", "junk"]))
        if what == "line":
            n = draw(st.sampled_from([ncols, ncols, draw(st.integers(1, 5))]))
            fields = [null if draw(st.integers(0, 5)) == 0 else
                      b"".join(draw(st.lists(st.sampled_from(_TEXT_ALPHABET), max_size=4))) for _ in range(n)]
            parts.append(copy_line(b"\t".join(fields) + draw(st.sampled_from([b"\n", b"\n", b"", b"\n\n"]))))
        elif what == "other":
            parts.append(m.frame(b"c", b""))
        else:
            parts.append(draw(st.binary(max_size=12)))
    buf = b"".join(parts)
    if buf and draw(st.booleans()):
        i = draw(st.integers(0, len(buf) - 1))
        buf = buf[:i] + bytes([draw(st.integers(0, 255))]) + buf[i + 1:]
    start = draw(st.integers(0, len(buf)))
    stop = draw(st.integers(start, len(buf)))
    flags = bytes(draw(st.lists(st.integers(0, 1), min_size=ncols, max_size=ncols)))
    return buf, start, stop, null, flags, draw(st.sampled_from([5, 30, 1 << 20])), draw(st.integers(0, 8))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(text_wire(), st.data())
def test_text_copy_runs_c_and_python_give_the_same_answer_on_any_bytes(case, data) -> None:
    buf, start, stop, null, flags, max_length, max_rows = case
    expected = rowrun.join_text_py(buf, start, stop, null, flags, max_length, max_rows)
    assert rowrun.join_text(buf, start, stop, null, flags, max_length, max_rows) == expected
    assert rowrun.join_text(bytearray(buf), start, stop, null, flags, max_length, max_rows) == expected
    kinds = [data.draw(st.sampled_from(["same", "null", "stars", "longer", "empty", "copy"])) for _ in flags]
    fns = tuple(_fn(k) if f else None for k, f in zip(kinds, flags))
    expected = rowrun.mask_text_run_py(buf, start, stop, null, flags, fns, max_length, max_rows)
    assert rowrun.mask_text_run(buf, start, stop, null, flags, fns, max_length, max_rows) == expected


_controls = st.lists(st.sampled_from([b"a", b"\t", b"\n", b"\\", b"\r", b"\x08", b"1", b" ", b"-"]), max_size=6)
_quiet = st.one_of(st.none(), _controls.map(b"".join))  # never opens the gate: runs of 6 at most
_text_value = st.one_of(_quiet, _secretish, _plain, _controls.map(lambda parts: b"@".join(parts)))


_any_row = st.lists(_text_value, min_size=4, max_size=4)
_quiet_row = st.tuples(_quiet, _text_value, _quiet, _text_value).map(list)  # id and note scanned


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(_any_row, min_size=1, max_size=70), st.lists(_quiet_row, min_size=1, max_size=70)))
def test_text_copy_runs_mask_what_the_per_line_plan_masks(rows) -> None:
    from broker.masking.copyout.text import TextCodec, TextCopyPlan

    columns = [ColumnInfo(name, TEXT, 0) for name in ("id", "email", "note", "api_key")]
    plan = Masker().plan_rows(columns)
    assert plan is not None and plan.scanned == b"\x01\x00\x01\x00" and plan.rewrite == b"\x00\x03\x00\x02"
    codec = TextCodec(b"\t")
    lines = [b"\t".join(b"\\N" if v is None else codec.escape(v) for v in r) + b"\n" for r in rows]
    buf = b"".join(copy_line(line) for line in lines)
    joined, end, taken = rowrun.join_text(buf, 0, len(buf), b"\\N", plan.scanned, 1 << 20, 1 << 10)
    assert (end, taken) == (len(buf), len(rows))  # PostgreSQL's escapes only: every line is taken
    per_line = TextCopyPlan(plan, delimiter=b"\t", null=b"\\N", header=False)
    expected = [per_line.mask_copy_data(line) for line in lines]
    for r in rows:  # the gate over raw fields opens whenever one over a row's values would
        values = [v for v, f in zip(r, plan.scanned) if f and v is not None]
        if plan.triggered(b"\x00".join(values)):
            assert plan.triggered(joined)
    if plan.triggered(joined):
        return  # the rows go one by one: the per-line plan itself
    out, end, taken, changed = rowrun.mask_text_run(buf, 0, len(buf), b"\\N", plan.rewrite, plan.rewrite_fns,
                                                    1 << 20, 1 << 10)
    assert (end, taken) == (len(buf), len(rows))
    assert out == b"".join(copy_line(data) for data, _ in expected)
    assert changed == sum(n for _, n in expected)


def test_the_gate_may_read_text_copy_fields_raw_with_the_shipped_detectors() -> None:
    """A detector looking at a byte an escape stands for (a control character, a backslash)
    would turn text COPY runs off (TextCopyPlan.run_plan): none of today's does."""
    from broker.masking.copyout import text

    assert text.RAW_FIELDS_GATE_EXACTLY
