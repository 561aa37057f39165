"""The relay state machine, driven with bytes: no sockets, no upstream."""

from __future__ import annotations

import struct

import pytest

from broker.policy.model import Decision, Verdict
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation, split_messages
from proxy.records import BLOCKED_STMT, BLOCKED_TEXT, StatementEvent
from proxy.side_channel import FunctionName

ALLOW = Verdict(Decision.ALLOW, "test/allow", "ok")
BLOCK = Verdict(Decision.BLOCK, "test/block", "dangerous")
REVIEW = Verdict(Decision.REVIEW, "test/review", "risky")


def classify(sql: str) -> Verdict:
    if "danger" in sql:
        return BLOCK
    if "risky" in sql:
        return REVIEW
    return ALLOW


def machine(masker=None, events=None) -> SessionMachine:
    return SessionMachine(
        classify=classify,
        masker=masker,
        on_statement=(events.append if events is not None else lambda e: None),
        client_user="agent",
        upstream_user="v-token-rw-123",
    )


def sent(mach: SessionMachine, attr: str = "out_upstream") -> list[tuple[int, bytes]]:
    data = b"".join(getattr(mach, attr))
    getattr(mach, attr).clear()
    msgs, used = split_messages(data)
    assert used == len(data)
    return msgs


def row_description(*cols: tuple[str, int]) -> bytes:
    body = struct.pack("!h", len(cols))
    for name, oid in cols:
        body += m.cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, 0)
    return m.frame(b"T", body)


def complete(tag: str) -> bytes:
    return m.frame(b"C", m.cstr(tag))


def test_allowed_query_is_forwarded_byte_for_byte():
    mach = machine()
    q = m.query_message("select 1")
    mach.feed_client(q)
    assert b"".join(mach.out_upstream) == q


def test_blocked_query_never_reaches_upstream_and_error_is_ours():
    events: list[StatementEvent] = []
    mach = machine(events=events)
    mach.feed_client(m.query_message("select danger()"))
    up = sent(mach)
    assert up == [(ord("Q"), m.cstr(BLOCKED_TEXT))]
    assert b"danger" not in b"".join(body for _, body in up)
    # the upstream answers the placeholder with a syntax error inside a transaction block
    mach.feed_server(m.error_response("42601", "syntax error at or near JITGATE") + m.ready_for_query(b"E"))
    out = sent(mach, "out_client")
    assert out[0][0] == ord("E")
    fields = m.parse_fields(out[0][1])
    assert m.field(fields, "C") == "42501"
    assert "test/block" in m.field(fields, "M")
    assert out[1] == (ord("Z"), b"E")  # the real transaction status, not a made-up one
    assert [e.verdict.decision for e in events] == [Decision.BLOCK]


def test_pipeline_with_blocked_parse_in_the_middle():
    mach = machine()
    batch = (
        m.parse_message("", "select 1")
        + m.frame(b"B", m.cstr("") + m.cstr("") + b"\0\0\0\0\0\0")
        + m.frame(b"E", m.cstr("") + b"\0\0\0\0")
        + m.parse_message("s2", "select danger()")
        + m.frame(b"B", m.cstr("") + m.cstr("s2") + b"\0\0\0\0\0\0")
        + m.frame(b"E", m.cstr("") + b"\0\0\0\0")
        + m.SYNC
    )
    mach.feed_client(batch)
    up = sent(mach)
    kinds = [chr(k) for k, _ in up]
    # what follows the refused Parse up to Sync is dropped, as the server would skip it
    assert kinds == ["P", "B", "E", "P", "S"]
    assert m.parse_parse(up[3][1]) == m.Parse(BLOCKED_STMT, BLOCKED_TEXT, ())
    # upstream: first statement runs, the placeholder fails, the rest is skipped until Sync
    mach.feed_server(
        m.frame(b"1", b"")
        + m.frame(b"2", b"")
        + m.data_row([b"1"])
        + complete("SELECT 1")
        + m.error_response("42601", "syntax error")
        + m.ready_for_query(b"I")
    )
    out = sent(mach, "out_client")
    assert [chr(k) for k, _ in out] == ["1", "2", "D", "C", "E", "Z"]
    assert m.field(m.parse_fields(out[4][1]), "C") == "42501"
    assert mach.idle


def test_bind_to_statement_never_parsed_is_refused():
    mach = machine()
    mach.feed_client(m.frame(b"B", m.cstr("") + m.cstr("ghost") + b"\0\0\0\0\0\0") + m.SYNC)
    up = sent(mach)
    assert up[0][0] == ord("P") and BLOCKED_TEXT.encode() in up[0][1]


def test_sql_level_execute_takes_the_prepared_statements_decision():
    verdicts = {
        "prepare p as delete from t": Verdict(
            Decision.REVIEW, "r", "x", prepares=(("p", Verdict(Decision.REVIEW, "r", "x")),)
        ),
        "execute p": Verdict(Decision.ALLOW, "agent-safe/execute", "", executes=("p",)),
        "execute q": Verdict(Decision.ALLOW, "agent-safe/execute", "", executes=("q",)),
    }
    mach = SessionMachine(
        classify=verdicts.__getitem__,
        masker=None,
        on_statement=lambda e: None,
        client_user="a",
        upstream_user="u",
    )
    mach.feed_client(m.query_message("execute q"))
    assert BLOCKED_TEXT.encode() in b"".join(mach.out_upstream)


def test_review_parks_and_resumes_on_approval():
    mach = machine()
    q = m.query_message("truncate risky")
    mach.feed_client(q + m.query_message("select 2"))
    assert mach.parked is not None and mach.out_upstream == []
    assert mach.resume(approved=True) is True
    assert b"".join(mach.out_upstream) == q + m.query_message("select 2")


def test_review_denied_is_refused_with_reason():
    mach = machine()
    mach.feed_client(m.query_message("truncate risky"))
    mach.resume(approved=False, reason="not on a Friday")
    assert sent(mach) == [(ord("Q"), m.cstr(BLOCKED_TEXT))]
    mach.feed_server(m.error_response("42601", "syntax") + m.ready_for_query(b"I"))
    err = m.parse_fields(sent(mach, "out_client")[0][1])
    assert "not on a Friday" in m.field(err, "M")


def test_each_released_statement_is_recorded_under_its_own_approval():
    """The same text twice, each approved while the first still runs: every record carries
    the approval that released that statement, not the last one given for the text."""
    events: list[StatementEvent] = []
    mach = machine(events=events)
    mach.feed_client(m.query_message("truncate risky") * 2)
    assert mach.resume(approved=True, approval_id="a-1") is True
    assert mach.parked is not None  # the second one, parked in turn
    assert mach.resume(approved=True, approval_id="a-2") is True
    done = complete("TRUNCATE TABLE") + m.ready_for_query(b"I")
    mach.feed_server(done + done)
    assert [e.approval_id for e in events] == ["a-1", "a-2"]


def test_a_refusal_by_review_is_recorded_under_its_approval():
    events: list[StatementEvent] = []
    mach = machine(events=events)
    mach.feed_client(m.query_message("truncate risky"))
    mach.resume(approved=False, reason="not on a Friday", approval_id="a-9")
    mach.feed_client(m.query_message("select 1"))
    mach.feed_server(m.error_response("42601", "syntax") + m.ready_for_query(b"I"))
    mach.feed_server(complete("SELECT 1") + m.ready_for_query(b"I"))
    assert [(e.sql, e.approval_id) for e in events] == [("truncate risky", "a-9"), ("select 1", None)]


def test_a_parked_write_is_parked_at_once_and_nothing_is_asked_on_the_client_connection():
    mach = machine()
    q = m.query_message("delete risky")
    mach.feed_client(q + m.query_message("select 2"))
    # The planner's estimate is asked on the side channel (proxy.side_channel), never here.
    assert mach.parked is not None and mach.out_upstream == []
    assert mach.resume(approved=True) is True
    assert b"".join(mach.out_upstream) == q + m.query_message("select 2")


class NameMasker:
    """A real-seam fake: masks the 'email' column as the masking package would."""

    def plan_rows(self, columns, lineage=None):
        idx = [i for i, c in enumerate(columns) if c.name == "email"]
        if not idx:
            return None

        class Plan:
            scanned = rewrite = None

            def mask_values(self, values):
                out = list(values)
                for i in idx:
                    out[i] = b"j***@example.com"
                return out, len(idx)

        return Plan()

    def plan_copy(self, columns, info, lineage=None):
        return None


def test_masking_rewrites_only_rows_of_matching_results():
    events: list[StatementEvent] = []
    mach = machine(masker=NameMasker(), events=events)
    mach.feed_client(m.query_message("select id, email from customers"))
    sent(mach)
    mach.feed_server(
        row_description(("id", 23), ("email", 25))
        + m.data_row([b"1", b"jane@example.com"])
        + complete("SELECT 1")
        + m.ready_for_query(b"I")
    )
    out = sent(mach, "out_client")
    assert m.parse_data_row(out[1][1]) == [b"1", b"j***@example.com"]
    assert events[0].masked == 1 and events[0].rows == 1


def test_execute_without_describe_gets_an_injected_describe_for_masking():
    mach = machine(masker=NameMasker())
    mach.feed_client(m.parse_message("s", "select email from c") + m.SYNC)
    sent(mach)
    mach.feed_server(m.frame(b"1", b"") + m.ready_for_query(b"I"))
    sent(mach, "out_client")
    mach.feed_client(
        m.frame(b"B", m.cstr("") + m.cstr("s") + b"\0\0\0\0\0\0") + m.frame(b"E", m.cstr("") + b"\0\0\0\0") + m.SYNC
    )
    up = sent(mach)
    assert [chr(k) for k, _ in up] == ["B", "D", "E", "S"]
    mach.feed_server(
        m.frame(b"2", b"")
        + row_description(("email", 25))
        + m.data_row([b"a@b.co"])
        + complete("SELECT 1")
        + m.ready_for_query(b"I")
    )
    out = sent(mach, "out_client")
    # the injected Describe's RowDescription is not relayed; the row is masked
    assert [chr(k) for k, _ in out] == ["2", "D", "C", "Z"]
    assert m.parse_data_row(out[1][1]) == [b"j***@example.com"]


def test_upstream_role_name_is_scrubbed_from_errors_and_parameters():
    mach = machine()
    mach.feed_client(m.query_message("select 1"))
    sent(mach)
    mach.feed_server(
        m.parameter_status("session_authorization", "v-token-rw-123")
        + m.error_response("42501", 'permission denied for role "v-token-rw-123"')
        + m.ready_for_query(b"I")
    )
    data = b"".join(mach.out_client)
    assert b"v-token-rw-123" not in data
    assert b"agent" in data


def test_oversized_message_is_a_violation():
    mach = machine()
    with pytest.raises(ProtocolViolation):
        mach.feed_client(b"Q" + struct.pack("!I", 1 << 30))


def _function_call(oid: int) -> bytes:
    return m.frame(b"F", struct.pack("!i", oid) + b"\0\0" + b"\0\0" + b"\0\0")


def test_function_call_is_judged_by_the_name_behind_its_oid():
    events: list[StatementEvent] = []
    mach = machine(events=events)
    call = _function_call(2620)
    mach.feed_client(call + m.query_message("select 1"))
    # Held until the side channel names the OID; nothing of it (or after it) goes up.
    assert mach.waiting == FunctionName(2620) and mach.out_upstream == []
    mach.lookup_done(("pg_catalog", "pg_read_file_danger", 25))
    assert sent(mach) == [(ord("Q"), m.cstr(BLOCKED_TEXT)), (ord("Q"), m.cstr("select 1"))]
    mach.feed_server(m.error_response("42601", "syntax") + m.ready_for_query(b"I"))
    err = m.parse_fields(sent(mach, "out_client")[0][1])
    assert m.field(err, "C") == "42501"
    assert events[-1].sql == 'SELECT "pg_catalog"."pg_read_file_danger"()'


def test_function_call_of_an_oid_nobody_can_name_is_refused():
    mach = machine()
    mach.feed_client(_function_call(99999))
    mach.lookup_done(None)
    assert sent(mach) == [(ord("Q"), m.cstr(BLOCKED_TEXT))]


def test_allowed_function_call_is_forwarded_and_the_name_cached():
    mach = machine()
    call = _function_call(964)
    mach.feed_client(call)
    assert mach.waiting is not None
    mach.lookup_done(("pg_catalog", "lo_open", 25))
    assert b"".join(mach.out_upstream) == call
    mach.out_upstream.clear()
    mach.feed_server(m.frame(b"V", struct.pack("!i", 4) + b"\0\0\0\0") + m.ready_for_query(b"T"))
    assert [k for k, _ in sent(mach, "out_client")] == [ord("V"), ord("Z")]
    mach.feed_client(call)  # second time: no lookup
    assert mach.waiting is None and b"".join(mach.out_upstream) == call


def test_a_failing_function_call_does_not_skip_the_query_after_it():
    """PostgreSQL answers a FunctionCall like a Query: after its error the next Query still
    runs, and its rows are relayed as the Query's (not taken for anything of the gateway's)."""
    mach = machine()
    mach.feed_client(_function_call(964))
    mach.lookup_done(("pg_catalog", "lo_open", 25))
    mach.feed_client(m.query_message("select 2"))
    sent(mach)
    mach.feed_server(
        m.error_response("22023", "bad argument") + m.ready_for_query(b"I")
        + row_description(("a", 25)) + m.data_row([b"2"]) + complete("SELECT 1") + m.ready_for_query(b"I")
    )
    assert [chr(k) for k, _ in sent(mach, "out_client")] == ["E", "Z", "T", "D", "C", "Z"]
    assert mach.idle


def test_prepare_and_execute_in_one_string():
    inner = Verdict(Decision.ALLOW, "a", "ok")
    verdict = Verdict(Decision.ALLOW, "a", "ok", prepares=(("p", inner),), executes=("p",))
    mach = SessionMachine(
        classify=lambda sql: verdict, masker=None, on_statement=lambda e: None, client_user="a", upstream_user="u"
    )
    q = m.query_message("prepare p as select 1; execute p")
    mach.feed_client(q)
    assert b"".join(mach.out_upstream) == q


def test_failing_closed_for_the_recorder_is_57P03_not_a_policy_block():
    from proxy.session import UNRECORDABLE

    events: list[StatementEvent] = []
    mach = SessionMachine(
        classify=lambda sql: UNRECORDABLE, masker=None, on_statement=events.append, client_user="a", upstream_user="u"
    )
    mach.feed_client(m.query_message("select 1"))
    assert sent(mach) == [(ord("Q"), m.cstr(BLOCKED_TEXT))]  # never sent unrecorded
    assert [e.error_sqlstate for e in events] == ["57P03"]  # recorded as the client is told
    mach.feed_server(m.error_response("42601", "syntax") + m.ready_for_query(b"I"))
    err = m.parse_fields(sent(mach, "out_client")[0][1])
    assert m.field(err, "C") == "57P03"
    assert "retry" in m.field(err, "H")


def test_idle_means_waiting_for_a_command_outside_a_transaction():
    """What the relay's idle timeout (proxy.idle_timeout_seconds) asks before ending a session."""
    mach = machine()
    assert mach.idle
    mach.feed_client(m.query_message("select pg_sleep(60)"))
    assert not mach.idle  # a statement running is not idle, however long it takes
    mach.feed_server(complete("SELECT 1") + m.ready_for_query(b"I"))
    assert mach.idle
    mach.feed_client(m.query_message("begin"))
    mach.feed_server(complete("BEGIN") + m.ready_for_query(b"T"))
    assert not mach.idle  # idle in a transaction: PostgreSQL's idle_session_timeout skips it too
    mach.feed_client(m.query_message("commit"))
    mach.feed_server(complete("COMMIT") + m.ready_for_query(b"I"))
    assert mach.idle
    mach.feed_client(m.query_message("select 1")[:3])  # half a message in
    assert not mach.idle
    extended = machine()
    extended.feed_client(m.parse_message("", "select 1"))  # a batch without its Sync yet
    assert not extended.idle


def _masking_machine(masker: object = "default") -> SessionMachine:
    from broker.masking import Masker
    from broker.policy import PolicyEngine

    policy = PolicyEngine.load("agent-safe")
    return SessionMachine(
        classify=lambda sql: policy.classify(sql),
        masker=Masker() if masker == "default" else masker,  # type: ignore[arg-type]
        on_statement=lambda e: None,
        client_user="agent",
        upstream_user="v-token-rw-123",
    )


def _rows_of(mach: SessionMachine, sql: str, *cols: str, row: list[bytes]) -> list[bytes | None]:
    mach.feed_client(m.query_message(sql))
    sent(mach)
    mach.feed_server(row_description(*((c, 25) for c in cols)) + m.data_row(row) + complete("SELECT 1")
                     + m.ready_for_query(b"T"))
    [values] = [m.parse_data_row(body) for kind, body in sent(mach, "out_client") if kind == ord("D")]
    return values


def _answer(mach: SessionMachine, tag: str) -> None:
    sent(mach)
    mach.feed_server(complete(tag) + m.ready_for_query(b"T"))
    sent(mach, "out_client")


def test_execute_and_fetch_rows_are_masked_by_the_lineage_of_what_they_run():
    mach = _masking_machine()
    mach.feed_client(m.query_message("prepare p as select reverse(api_key) r, full_name from customers"))
    _answer(mach, "PREPARE")
    assert _rows_of(mach, "execute p", "r", "full_name", row=[b"yek_evil_ks", b"Ann"]) == [b"********", b"Ann"]
    mach.feed_client(m.query_message("declare c cursor for select upper(email) e, full_name from customers"))
    _answer(mach, "DECLARE CURSOR")
    assert _rows_of(mach, "fetch 1 from c", "e", "full_name", row=[b"A@X.IO", b"Ann"]) == [b"********", b"Ann"]
    mach.feed_client(m.query_message("close c"))
    _answer(mach, "CLOSE CURSOR")
    # Not declared through the gateway (closed, or opened by a function): every field masked.
    assert _rows_of(mach, "fetch 1 from c", "e", "full_name", row=[b"x", b"Ann"]) == [b"********", b"********"]


def test_a_write_of_masked_values_under_another_name_is_parked_for_review():
    sql = "create table x as select reverse(api_key) k from customers"
    mach = _masking_machine()
    mach.feed_client(m.query_message(sql))
    assert m.query_message(sql) not in b"".join(mach.out_upstream)  # held (explained at most)
    if mach.parked is None:
        mach.feed_server(m.error_response("0A000", "no estimate") + m.ready_for_query(b"I"))
    assert mach.parked is not None
    assert mach.parked.verdict.rule == "masking/stored-unmasked"
    assert "x.k <- api_key" in mach.parked.verdict.reason
    # Without masking on the resource there is nothing to protect: it runs.
    plain = _masking_machine(masker=None)
    plain.feed_client(m.query_message(sql))
    assert b"".join(plain.out_upstream) == m.query_message(sql)
