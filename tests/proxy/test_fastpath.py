"""The fast path (proxy.fastpath) against the full machine: for every script of client reads
and server answers, a machine with the fast path and one without must send the same bytes
each way and record the same statements. The fast path may only be faster, never different.

Real policy (agent-safe) and real masking (the defaults), as the proxy builds them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config import ResourceSettings
from broker.policy.model import Decision, Verdict
from proxy.exceptions import SessionDesync
from proxy.fastpath import shape
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation
from proxy.records import StatementEvent
from proxy.session import UNRECORDABLE
from proxy.wiring import build_resource

RESOURCE = build_resource(
    "db",
    ResourceSettings.model_validate(
        {"upstream": {"host": "h", "dbname": "db", "username": "u", "password": "p"}, "policy": "agent-safe"}
    ),
)

SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
SECRET = "SELECT email FROM users WHERE id = $1"
DELETE = "DELETE FROM pgbench_accounts"


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return m.frame(kind, body)


def bind(statement: str, value: bytes | None, portal: str = "") -> bytes:
    param = struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    names = portal.encode() + b"\0" + statement.encode() + b"\0"
    body = names + struct.pack("!hh", 0, 1) + param + struct.pack("!h", 0)
    return frame(b"B", body)


def batch(statement: str, value: bytes | None, *, parse: str | None = None, limit: int = 0) -> bytes:
    """What libpq sends for PQexecPrepared (PQexecParams with `parse`)."""
    head = m.parse_message("", parse, [0]) if parse is not None else b""
    execute = frame(b"E", b"\0" + struct.pack("!i", limit))
    return head + bind(statement, value) + m.describe_message("P", "") + execute + frame(b"S")


def row_description(column: str, oid: int = 23) -> bytes:
    body = struct.pack("!h", 1) + column.encode() + b"\0" + struct.pack("!IhIhih", 16400, 3, oid, 4, -1, 0)
    return frame(b"T", body)


PARSE_COMPLETE = frame(b"1")
BIND_COMPLETE = frame(b"2")
READY = frame(b"Z", b"I")


def answer(*rows: bytes, column: str = "abalance", oid: int = 23, parse: bool = False, ready: bytes = READY) -> bytes:
    head = (PARSE_COMPLETE if parse else b"") + BIND_COMPLETE + row_description(column, oid)
    return head + b"".join(m.data_row([r]) for r in rows) + frame(b"C", f"SELECT {len(rows)}\0".encode()) + ready


PREPARE = m.parse_message("P0_1", SELECT, [0]) + frame(b"S")
PREPARED = PARSE_COMPLETE + READY


class Pair:
    """The same script through a machine with the fast path and one without."""

    def __init__(self, unrecordable: Callable[[], Verdict | None] | None = None) -> None:
        self.classify = lambda sql: RESOURCE.policy(sql, ("ai-agents",))
        self.resource = RESOURCE  # a reload puts another one here
        self.events: tuple[list[StatementEvent], list[StatementEvent]] = ([], [])
        self.machines = tuple(
            SessionMachine(
                classify=lambda sql: self.classify(sql), masker=RESOURCE.masker, on_statement=events.append,
                client_user="agent", upstream_user="u", unrecordable=unrecordable, fast_path=fast,
                # As proxy.session gives it: the policy object, another one after a reload.
                policy_epoch=lambda: self.classify,
                current_resource=lambda: self.resource,
            )
            for fast, events in ((True, self.events[0]), (False, self.events[1]))
        )

    @property
    def fast(self) -> SessionMachine:
        return self.machines[0]

    def step(self, side: str, data: bytes) -> tuple[bytes, bytes]:
        """Feed both; the bytes each sent (upstream, client) must be equal; returns them."""
        outcomes = []
        for machine in self.machines:
            try:
                (machine.feed_client if side == "client" else machine.feed_server)(data)
                outcome: object = (b"".join(machine.out_upstream), b"".join(machine.out_client))
            except (SessionDesync, ProtocolViolation) as exc:
                outcome = type(exc)
            machine.out_upstream.clear()
            machine.out_client.clear()
            outcomes.append(outcome)
        assert outcomes[0] == outcomes[1]
        if isinstance(outcomes[0], type):
            raise outcomes[0]("both machines refused this")
        upstream, client = outcomes[0]
        assert isinstance(upstream, bytes) and isinstance(client, bytes)
        return upstream, client

    def records(self) -> list[list[tuple[object, ...]]]:
        return [
            [(e.sql, e.verdict.decision, e.verdict.rule, e.rows, e.masked, e.error_sqlstate) for e in events]
            for events in self.events
        ]

    def check(self) -> None:
        fast, full = self.records()
        assert fast == full
        assert self.fast.txn_status == self.machines[1].txn_status
        assert self.fast.in_flight == self.machines[1].in_flight


def prepared_pair(**kwargs: object) -> Pair:
    pair = Pair(**kwargs)  # type: ignore[arg-type]
    assert pair.step("client", PREPARE) == (PREPARE, b"")
    assert pair.step("server", PREPARED) == (b"", PREPARED)
    return pair


def test_a_repeated_batch_goes_the_fast_way_and_is_recorded_as_the_full_machine_records_it():
    pair = prepared_pair()
    for i in range(1, 21):
        data = batch("P0_1", str(i).encode())
        assert pair.step("client", data) == (data, b"")
        reply = answer(str(i * 10).encode())
        assert pair.step("server", reply) == (b"", reply)
    assert pair.fast.fast_batches == 19  # the first one was learned by the full machine
    pair.check()
    assert pair.records()[0][-1] == (SELECT, Decision.ALLOW, pair.events[0][-1].verdict.rule, 1, 0, None)
    assert pair.fast.idle


def test_rows_with_masked_columns_are_masked_on_the_fast_path_as_on_the_full_one():
    pair = Pair()
    prepare = m.parse_message("S1", SECRET, [0]) + frame(b"S")
    pair.step("client", prepare)
    pair.step("server", PARSE_COMPLETE + READY)
    for i in range(1, 8):
        pair.step("client", batch("S1", str(i).encode()))
        _, relayed = pair.step("server", answer(b"alice@example.com", b"bob@example.org", column="email", oid=25))
        assert b"alice@" not in relayed and b"bob@" not in relayed
    assert pair.fast.fast_batches == 6
    pair.check()
    assert {r[4] for r in pair.records()[0]} == {2}  # two values masked, each time


def query_answer(*rows: bytes, column: str = "abalance", oid: int = 23) -> bytes:
    return row_description(column, oid) + b"".join(m.data_row([r]) for r in rows) + frame(
        b"C", f"SELECT {len(rows)}\0".encode()
    ) + READY


def test_a_simple_query_of_a_known_shape_repeats_fast_and_records_its_own_text():
    pair = Pair()
    for i in range(1, 8):
        text = f"SELECT abalance FROM pgbench_accounts WHERE aid = {i * 7919}"
        data = m.query_message(text)
        assert pair.step("client", data) == (data, b"")
        reply = query_answer(str(i).encode())
        assert pair.step("server", reply) == (b"", reply)
        assert pair.events[0][-1].sql == text
    assert pair.fast.fast_batches == 6
    pair.check()


@pytest.mark.parametrize("text", [
    "SELECT email FROM users WHERE id = {}",  # masked: the plan applies on the fast path too
    "SELECT abalance FROM pgbench_accounts WHERE aid = {}; SELECT 1",  # two statements: never fast
    "BEGIN",  # a transaction statement: never fast
    "SET search_path = public, pg_catalog",  # session settings: whatever the policy says, the same
    "PREPARE q{} AS SELECT 1",  # makes a name: never fast
])
def test_simple_queries_are_the_same_with_and_without_the_fast_path(text: str):
    pair = Pair()
    for i in range(1, 6):
        pair.step("client", m.query_message(text.format(i)))
        try:
            if "email" in text:
                _, relayed = pair.step("server", query_answer(b"alice@example.com", column="email", oid=25))
                assert b"alice@" not in relayed
            else:
                pair.step("server", frame(b"C", b"SELECT 1\0") + READY)
        except (SessionDesync, ProtocolViolation):
            break
    pair.check()
    if "email" in text:
        assert pair.fast.fast_batches == 4
        assert {r[4] for r in pair.records()[0]} == {1}


def test_a_simple_query_falls_back_on_an_error_and_on_a_policy_reload():
    pair = Pair()
    for i in range(1, 4):
        pair.step("client", m.query_message(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i}"))
        pair.step("server", query_answer(b"5"))
    pair.step("client", m.query_message("SELECT abalance FROM pgbench_accounts WHERE aid = 99"))
    _, relayed = pair.step("server", row_description("abalance") + m.error_response("57014", "canceled") + READY)
    assert b"C57014" in relayed
    assert pair.fast.fast_batches == 3  # forwarded fast, answered by the full machine
    blocked = Verdict(Decision.BLOCK, "reloaded/no-reads", "reads are off now")
    pair.classify = lambda sql: blocked
    upstream, _ = pair.step("client", m.query_message("SELECT abalance FROM pgbench_accounts WHERE aid = 5"))
    assert b"pgbench_accounts" not in upstream
    assert pair.fast.fast_batches == 3
    pair.check()


def test_parse_of_the_unnamed_statement_repeats_fast_too():
    pair = Pair()
    for i in range(1, 6):
        data = batch("", str(i).encode(), parse=SELECT)
        assert pair.step("client", data) == (data, b"")
        reply = answer(b"7", b"8", parse=True)
        assert pair.step("server", reply) == (b"", reply)
    assert pair.fast.fast_batches == 4
    pair.check()


def test_a_batch_without_describe_repeats_fast_when_the_statement_was_described():
    # asyncpg: Parse + Describe statement once, then Bind, Execute, Sync per execution.
    pair = Pair()
    prepare = m.parse_message("stmt_1", SELECT, [0]) + m.describe_message("S", "stmt_1") + frame(b"S")
    pair.step("client", prepare)
    pair.step("server", PARSE_COMPLETE + frame(b"t", struct.pack("!hI", 1, 23)) + row_description("abalance") + READY)
    execute = frame(b"E", b"\0" + struct.pack("!i", 0))
    for i in range(1, 6):
        data = bind("stmt_1", str(i).encode()) + execute + frame(b"S")
        assert pair.step("client", data) == (data, b"")
        reply = BIND_COMPLETE + m.data_row([b"9"]) + frame(b"C", b"SELECT 1\0") + READY
        assert pair.step("server", reply) == (b"", reply)
    assert pair.fast.fast_batches == 4
    # Described again as something else (same name, redefined): the rows are planned again.
    pair.step("client", m.close_message("S", "stmt_1") + m.parse_message("stmt_1", SECRET, [0])
              + m.describe_message("S", "stmt_1") + frame(b"S"))
    pair.step("server", frame(b"3") + PARSE_COMPLETE + frame(b"t", struct.pack("!hI", 1, 23))
              + row_description("email", 25) + READY)
    pair.step("client", bind("stmt_1", b"1") + execute + frame(b"S"))
    _, relayed = pair.step("server", BIND_COMPLETE + m.data_row([b"a@b.c"]) + frame(b"C", b"SELECT 1\0") + READY)
    assert b"a@b.c" not in relayed
    assert pair.fast.fast_batches == 4
    pair.check()


def test_shape_refuses_anything_but_the_plain_batch():
    assert shape(batch("P0_1", b"1")) is not None
    assert shape(batch("P0_1", None)) is not None
    assert shape(bind("P0_1", b"1") + frame(b"E", b"\0\0\0\0\0") + frame(b"S")) is not None
    assert shape(batch("", b"1", parse=SELECT)) is not None
    assert shape(batch("P0_1", b"1", parse=SELECT)) is None  # '' parsed, another bound
    assert shape(batch("P0_1", b"1") + frame(b"S")) is None
    assert shape(batch("P0_1", b"1")[:-1]) is None
    assert shape(m.query_message("SELECT 1")) is None
    other_portal = bind("P0_1", b"1") + m.describe_message("P", "x") + frame(b"E", b"\0\0\0\0\0") + frame(b"S")
    assert shape(other_portal) is None
    described_statement = m.describe_message("S", "P0_1")
    assert shape(bind("P0_1", b"1") + described_statement + frame(b"E", b"\0\0\0\0\0") + frame(b"S")) is None
    # The key leaves out the parameter values, and only them.
    assert shape(batch("P0_1", b"1")).key == shape(batch("P0_1", b"123456")).key  # type: ignore[union-attr]
    assert shape(batch("P0_1", b"1")).key == shape(batch("P0_1", None)).key  # type: ignore[union-attr]
    assert shape(batch("P0_1", b"1")).key != shape(batch("P0_2", b"1")).key  # type: ignore[union-attr]
    assert shape(batch("P0_1", b"1")).key != shape(batch("P0_1", b"1", limit=5)).key  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(BIND_COMPLETE + m.error_response("22P02", "invalid input syntax") + READY, id="error"),
        pytest.param(answer(b"1")[:-6] + m.notice_response("hello") + READY, id="notice"),
        pytest.param(m.parameter_status("TimeZone", "UTC") + answer(b"1"), id="parameter-status"),
        pytest.param(answer(b"1", ready=frame(b"Z", b"T")), id="in-transaction"),
        pytest.param(answer(column="other"), id="another-description"),
        pytest.param(BIND_COMPLETE + row_description("abalance") + m.data_row([b"1"]) + frame(b"s") + READY,
                     id="suspended"),
    ],
)
def test_an_unexpected_answer_goes_through_the_full_machine(reply: bytes):
    pair = prepared_pair()
    for value in (b"1", b"2"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    pair.step("client", batch("P0_1", b"3"))
    try:
        pair.step("server", reply)
    except (SessionDesync, ProtocolViolation):
        pass  # both ended the session the same way
    pair.check()


def test_an_answer_in_pieces_and_a_pipelined_batch_go_through_the_full_machine():
    pair = prepared_pair()
    for value in (b"1", b"2"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    reply = answer(b"1")
    pair.step("client", batch("P0_1", b"3"))
    assert pair.step("server", reply[:9]) == (b"", BIND_COMPLETE)  # what is complete, as the full machine
    pair.step("server", reply[9:])
    # The client sends its next batch before the answer to the one in flight.
    pair.step("client", batch("P0_1", b"4"))
    pair.step("client", batch("P0_1", b"5"))
    pair.step("server", answer(b"1") + answer(b"2"))
    pair.check()
    assert pair.fast.idle


def test_a_redefined_statement_is_judged_and_masked_again():
    pair = prepared_pair()
    for value in (b"1", b"2"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    # Same name, other text: the bytes of the next batch are the same as before.
    redefine = m.close_message("S", "P0_1") + m.parse_message("P0_1", SECRET, [0]) + frame(b"S")
    pair.step("client", redefine)
    pair.step("server", frame(b"3") + PARSE_COMPLETE + READY)
    pair.step("client", batch("P0_1", b"1"))
    _, relayed = pair.step("server", answer(b"alice@example.com", column="email", oid=25))
    assert b"alice@example.com" not in relayed
    pair.check()
    assert pair.records()[0][-1][0] == SECRET
    assert pair.records()[0][-1][4] == 1  # one value masked


@pytest.mark.parametrize("text", [
    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = $1 RETURNING abalance",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1 OR true",
])
def test_a_redefinition_with_the_same_columns_is_not_run_as_the_old_statement(text: str):
    # The answer would look the same as before: only the statement's identity tells.
    pair = prepared_pair()
    for value in (b"1", b"2"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    pair.step("client", m.close_message("S", "P0_1") + m.parse_message("P0_1", text, [0]) + frame(b"S"))
    pair.step("server", frame(b"3") + PARSE_COMPLETE + READY)
    fast_batches = pair.fast.fast_batches
    before = len(pair.events[0])
    try:
        pair.step("client", batch("P0_1", b"1"))
        pair.step("server", answer(b"5"))
    except (SessionDesync, ProtocolViolation):
        pass
    assert pair.fast.fast_batches == fast_batches
    pair.check()
    assert all(record[0] == text for record in pair.records()[0][before:])


def test_sql_prepare_of_the_same_name_is_seen():
    pair = prepared_pair()
    for value in (b"1", b"2"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    sql = f"DEALLOCATE \"P0_1\"; PREPARE \"P0_1\" AS {SECRET.replace('$1', '$1::int')}"
    pair.step("client", m.query_message(sql))
    pair.step("server", frame(b"C", b"DEALLOCATE\0") + frame(b"C", b"PREPARE\0") + READY)
    pair.step("client", batch("P0_1", b"1"))
    _, relayed = pair.step("server", answer(b"alice@example.com", column="email", oid=25))
    assert b"alice@example.com" not in relayed
    pair.check()


def test_a_policy_reload_is_applied_to_a_repeated_parse():
    pair = Pair()
    for value in (b"1", b"2", b"3"):
        pair.step("client", batch("", value, parse=SELECT))
        pair.step("server", answer(b"5", parse=True))
    assert pair.fast.fast_batches == 2
    blocked = Verdict(Decision.BLOCK, "reloaded/no-reads", "reads are off now")
    pair.classify = lambda sql: blocked
    upstream, _ = pair.step("client", batch("", b"4", parse=SELECT))
    assert SELECT.encode() not in upstream  # refused: the upstream gets the gateway's error instead
    assert pair.fast.fast_batches == 2


@pytest.mark.parametrize("described", [True, False])  # libpq asks for NoData; asyncpg has it
def test_a_statement_without_rows_repeats_fast_and_rows_for_it_are_never_relayed(described: bool):
    pair = Pair()
    insert = "INSERT INTO pgbench_history VALUES ($1)"
    pair.step("client", m.parse_message("ins", insert, [0]) + m.describe_message("S", "ins") + frame(b"S"))
    pair.step("server", PARSE_COMPLETE + frame(b"t", struct.pack("!hI", 1, 23)) + frame(b"n") + READY)
    execute = frame(b"E", b"\0" + struct.pack("!i", 0))
    describe = m.describe_message("P", "") if described else b""
    no_data = frame(b"n") if described else b""
    for i in range(1, 5):
        data = bind("ins", str(i).encode()) + describe + execute + frame(b"S")
        assert pair.step("client", data) == (data, b"")
        reply = BIND_COMPLETE + no_data + frame(b"C", b"INSERT 0 1\0") + READY
        assert pair.step("server", reply) == (b"", reply)
    assert pair.fast.fast_batches == 3
    # A server that sent rows for it anyway: the full machine's call (it ends the session).
    pair.step("client", bind("ins", b"9") + describe + execute + frame(b"S"))
    with pytest.raises(SessionDesync):
        pair.step("server", BIND_COMPLETE + no_data + m.data_row([b"secret"]) + frame(b"C", b"INSERT 0 1\0") + READY)
    pair.check()


def test_a_policy_reload_reaches_a_statement_prepared_before_it():
    pair = prepared_pair()
    for value in (b"1", b"2", b"3"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    assert pair.fast.fast_batches == 2
    blocked = Verdict(Decision.BLOCK, "reloaded/no-reads", "reads are off now")
    pair.classify = lambda sql: blocked
    upstream, _ = pair.step("client", batch("P0_1", b"4"))
    assert bind("P0_1", b"4") not in upstream  # the Bind itself is refused now
    assert pair.fast.fast_batches == 2
    assert pair.records()[0][-1][1:3] == (Decision.BLOCK, "reloaded/no-reads")
    pair.check()


def test_a_template_is_judged_once_per_policy_and_again_after_each_reload():
    """The fast path asks the policy about a repeated statement once per policy object: a
    Bind under the policy that confirmed its verdict is not judged again; after a reload
    (another policy object, even one giving the same verdicts) it is asked again, once."""
    pair = prepared_pair()
    asked: list[str] = []
    policy = pair.classify

    def run(values: list[bytes]) -> list[int]:
        """The policy's answers given per batch (both machines: the full one asks the same
        number of times at every Bind, so the differences are the fast machine's)."""
        per = []
        for value in values:
            before = len(asked)
            pair.step("client", batch("P0_1", value))
            pair.step("server", answer(b"5"))
            per.append(len(asked) - before)
        return per

    def counting(sql: str) -> Verdict:
        asked.append(sql)
        return policy(sql)

    pair.classify = counting
    per = run([b"1", b"2", b"3", b"4", b"5"])
    assert pair.fast.fast_batches == 4  # the first one teaches the fast path its template
    # At the first repeat the fast machine asks once; at the next ones, not at all (given
    # no epoch, it would ask at each of them: per[2:] would equal per[1]).
    assert per[1] == per[2] + 1 and per[2] == per[3] == per[4], per

    def reloaded(sql: str) -> Verdict:  # the same rules, a new policy object
        asked.append(sql)
        return policy(sql)

    pair.classify = reloaded
    per = run([b"6", b"7", b"8"])
    assert pair.fast.fast_batches == 7  # same verdicts: still the fast way
    assert per[0] == per[1] + 1 and per[1] == per[2], per
    pair.check()


# A reload that masks pgbench's abalance column (what `resources.*.masking` would say).
MASKS_ABALANCE = build_resource(
    "db",
    ResourceSettings.model_validate({
        "upstream": {"host": "h", "dbname": "db", "username": "u", "password": "p"}, "policy": "agent-safe",
        "masking": {"extra_columns": ["abalance"]},
    }),
)


@pytest.mark.parametrize("parse", [None, SELECT], ids=["prepared", "unnamed"])
def test_a_reloaded_masking_reaches_a_live_session_on_both_paths(parse: str | None):
    """A reload that masks one more column: the rows of every statement sent after it are
    masked, on the fast path (whose templates hold the old plan) as on the full one."""
    pair = prepared_pair() if parse is None else Pair()
    name = "P0_1" if parse is None else ""
    for value in (b"1", b"2", b"3"):
        pair.step("client", batch(name, value, parse=parse))
        _, relayed = pair.step("server", answer(b"48213", parse=parse is not None))
        assert b"48213" in relayed
    assert pair.fast.fast_batches == 2
    pair.resource = MASKS_ABALANCE
    for value in (b"4", b"5", b"6"):
        pair.step("client", batch(name, value, parse=parse))
        _, relayed = pair.step("server", answer(b"48213", parse=parse is not None))
        assert b"48213" not in relayed, relayed
    assert pair.fast.fast_batches > 2  # the new plan is learned and repeats fast again
    pair.check()


# The same resource with masking off, and in the observe preset (forward, record what would
# have been refused).
UNMASKED = build_resource("db", ResourceSettings.model_validate({
    "upstream": {"host": "h", "dbname": "db", "username": "u", "password": "p"}, "policy": "agent-safe",
    "masking": {"enabled": False},
}))
OBSERVED = build_resource("db", ResourceSettings.model_validate({
    "upstream": {"host": "h", "dbname": "db", "username": "u", "password": "p"}, "policy": "observe",
}))


@pytest.mark.parametrize("fast", [True, False])
def test_a_reload_that_turns_masking_on_or_off_applies_when_idle_and_ends_a_busy_session(fast: bool):
    """Idle, the session takes the new setting at its next statement. With a statement in
    flight (sent without the Describe a masked result needs, or planned by a masker that is
    gone) the session ends, FATAL 57P01, and nothing more is sent."""
    from proxy.exceptions import ModeSwitched

    for before, after in ((UNMASKED, MASKS_ABALANCE), (MASKS_ABALANCE, UNMASKED)):
        resource = before
        machine = SessionMachine(
            classify=lambda sql: RESOURCE.policy(sql, ("ai-agents",)), masker=before.masker,  # type: ignore[arg-type]
            on_statement=lambda e: None, client_user="agent", upstream_user="u",
            current_resource=lambda: resource, fast_path=fast,
        )
        machine.feed_client(PREPARE)
        machine.feed_server(PREPARED)
        for value in (b"1", b"2"):
            machine.feed_client(batch("P0_1", value))
            machine.feed_server(answer(b"48213"))
        relayed = b"".join(machine.out_client)
        assert (b"48213" in relayed) == (before is UNMASKED)
        machine.out_client.clear()
        machine.out_upstream.clear()
        resource = after  # reloaded while idle: taken at the next statement
        machine.feed_client(batch("P0_1", b"3"))
        machine.feed_server(answer(b"48213"))
        assert (b"48213" in b"".join(machine.out_client)) == (after is UNMASKED)
        machine.out_upstream.clear()
        machine.feed_client(batch("P0_1", b"4"))  # in flight when masking switches back
        machine.out_upstream.clear()
        resource = before
        with pytest.raises(ModeSwitched) as refused:
            machine.feed_client(batch("P0_1", b"5"))
        assert refused.value.sqlstate == "57P01"
        assert not machine.out_upstream  # nothing of it was sent


def test_observe_turned_off_ends_the_session_and_turned_on_applies_when_idle():
    """Observe forwards what enforcement would refuse: a statement it prepared, a cursor it
    declared, a temporary function it created were never judged. A reload to enforcement
    ends such a session at its next read (FATAL 57P01), even idle, rather than let it go
    on with them; a new session is enforced from its start. The other way (enforcement to
    observe) is taken at the next statement when idle, and ends a busy session."""
    from proxy.exceptions import ModeSwitched

    resource = OBSERVED
    machine = SessionMachine(
        classify=lambda sql: resource.policy(sql, ("ai-agents",)), masker=OBSERVED.masker,  # type: ignore[arg-type]
        on_statement=lambda e: None, client_user="agent", upstream_user="u", shadow=True,
        current_resource=lambda: resource,
    )
    read_file = "SELECT pg_read_file($1)"  # agent-safe blocks it
    machine.feed_client(m.parse_message("rf", read_file, []) + frame(b"S"))
    assert read_file.encode() in b"".join(machine.out_upstream)  # observe: forwarded
    machine.feed_server(PREPARED)
    machine.out_upstream.clear()
    resource = RESOURCE  # enforcing now
    execute = frame(b"E", b"\0" + struct.pack("!i", 0))
    with pytest.raises(ModeSwitched) as ended:
        machine.feed_client(bind("rf", b"/etc/passwd") + execute + frame(b"S"))
    assert ended.value.sqlstate == "57P01" and "observe" in ended.value.message
    assert not machine.out_upstream  # nothing of it was sent

    resource = RESOURCE
    enforcing = SessionMachine(
        classify=lambda sql: resource.policy(sql, ("ai-agents",)), masker=RESOURCE.masker,  # type: ignore[arg-type]
        on_statement=lambda e: None, client_user="agent", upstream_user="u", current_resource=lambda: resource,
    )
    enforcing.feed_client(m.query_message("select 1"))
    enforcing.feed_server(frame(b"T", struct.pack("!h", 0)) + frame(b"C", b"SELECT 0\0") + READY)
    enforcing.out_upstream.clear()
    resource = OBSERVED  # idle: taken at the next statement, which observe forwards
    enforcing.feed_client(m.parse_message("rf", read_file, []) + frame(b"S"))
    assert read_file.encode() in b"".join(enforcing.out_upstream)
    resource = RESOURCE  # and back, with the Parse in flight: ended either way
    with pytest.raises(ModeSwitched):
        enforcing.feed_client(m.query_message("select 2"))


def test_nothing_runs_unrecorded_when_the_recorder_cannot_record():
    healthy = [True]
    pair = prepared_pair(unrecordable=lambda: None if healthy[0] else UNRECORDABLE)
    for value in (b"1", b"2"):
        pair.step("client", batch("P0_1", value))
        pair.step("server", answer(b"5"))
    healthy[0] = False
    upstream, _ = pair.step("client", batch("P0_1", b"3"))
    assert bind("P0_1", b"3") in upstream and b"E\x00\x00\x00\x09" not in upstream  # the Execute is replaced
    assert pair.fast.fast_batches == 1
    assert pair.records()[0][-1][1:3] == (Decision.BLOCK, "gateway/recorder-unavailable")
    # The server answers the Bind and the Describe, then the gateway's stand-in for the
    # Execute fails; the client gets 57P03.
    reply = BIND_COMPLETE + row_description("abalance") + m.error_response("42601", "syntax error") + READY
    _, relayed = pair.step("server", reply)
    assert b"C57P03\x00" in relayed


@pytest.mark.parametrize("repeats", [1, 3])  # the last one sent by the full machine, or the fast path
def test_what_was_sent_and_never_answered_is_recorded_at_the_end(repeats: int):
    pair = prepared_pair()
    for i in range(repeats - 1):
        pair.step("client", batch("P0_1", str(i).encode()))
        pair.step("server", answer(b"5"))
    pair.step("client", batch("P0_1", b"9"))
    assert [machine.abandon() for machine in pair.machines] == [1, 1]
    fast, full = pair.records()
    assert fast == full
    assert fast[-1][0] == SELECT and fast[-1][3] is None and fast[-1][5] == "08006"
    assert all(machine.in_flight == 0 for machine in pair.machines)


# Hypothesis: any interleaving of these client reads and server answers, the same both ways.
CLIENT = [
    batch("P0_1", b"1"), batch("P0_1", b"22"), batch("P0_1", None), batch("", b"3", parse=SELECT),
    m.query_message("SELECT abalance FROM pgbench_accounts WHERE aid = 1"),
    m.query_message("SELECT abalance FROM pgbench_accounts WHERE aid = 2"),
    batch("P0_1", b"1", limit=1), m.query_message("SELECT 1"), PREPARE,
    m.close_message("S", "P0_1") + frame(b"S"), m.parse_message("P0_1", SECRET, [0]) + frame(b"S"),
    m.query_message(DELETE),
]
SERVER = [
    query_answer(b"5"), query_answer(b"5", column="email", oid=25),
    answer(b"5"), answer(b"5", parse=True), answer(), answer(b"1", b"2"), PREPARED,
    frame(b"3") + READY, BIND_COMPLETE + m.error_response("22P02", "invalid") + READY,
    answer(b"a@b.c", column="email", oid=25), m.notice_response("n"),
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["client", "server"]), st.integers(0, 20), st.integers(0, 40)),
                min_size=1, max_size=30))
def test_any_script_is_the_same_with_and_without_the_fast_path(script: list[tuple[str, int, int]]):
    pair = prepared_pair()
    for _ in range(2):  # learned, then fast
        pair.step("client", batch("P0_1", b"1"))
        pair.step("server", answer(b"5"))
    for side, index, cut in script:
        pool = CLIENT if side == "client" else SERVER
        data = pool[index % len(pool)]
        try:
            if cut and cut < len(data) and side == "server":
                pair.step(side, data[:cut])
                pair.step(side, data[cut:])
            else:
                pair.step(side, data)
        except (SessionDesync, ProtocolViolation):
            break  # both ended the session, at the same point
    pair.check()
