"""The machine's model of the session against PostgreSQL's rules, driven with bytes.

Each sequence of backend messages here is what PostgreSQL really sends for the client's
messages (checked against a server in tests/e2e/test_conformance.py); the real policy engine
and the real masker judge and mask.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from broker.masking import Masker
from broker.policy.engine import PolicyEngine
from broker.policy.model import Decision, Verdict
from proxy.exceptions import SessionDesync
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation, split_messages
from proxy.records import BLOCKED_STMT, BLOCKED_TEXT

ENGINE = PolicyEngine.preset("agent-safe")
SSN = b"123-45-6789"


def allow_all(sql: str) -> Verdict:
    """The agent-safe verdict's facts, allowed (COPY FROM STDIN is review under agent-safe)."""
    return replace(ENGINE.classify(sql, resource=None, groups=("ai-agents",)), decision=Decision.ALLOW)


def machine(masker: bool = True) -> SessionMachine:
    return SessionMachine(
        classify=lambda sql: ENGINE.classify(sql, resource=None, groups=("ai-agents",)),
        masker=Masker() if masker else None,
        on_statement=lambda event: None,
        client_user="agent",
        upstream_user="v-token-rw-123",
    )


def sent(mach: SessionMachine, attr: str = "out_upstream") -> list[tuple[int, bytes]]:
    data = b"".join(getattr(mach, attr))
    getattr(mach, attr).clear()
    msgs, used = split_messages(data)
    assert used == len(data)
    return msgs


def kinds(msgs: list[tuple[int, bytes]]) -> str:
    return "".join(chr(k) for k, _ in msgs)


def row_description(*cols: tuple[str, int], fmt: int = 0) -> bytes:
    body = struct.pack("!h", len(cols))
    for name, oid in cols:
        body += m.cstr(name) + struct.pack("!IhIhih", 0, 0, oid, -1, -1, fmt)
    return m.frame(b"T", body)


def complete(tag: str) -> bytes:
    return m.frame(b"C", m.cstr(tag))


def bind(portal: str = "", statement: str = "") -> bytes:
    return m.frame(b"B", m.cstr(portal) + m.cstr(statement) + b"\0\0\0\0\0\0")


def execute(portal: str = "", rows: int = 0) -> bytes:
    return m.frame(b"E", m.cstr(portal) + struct.pack("!i", rows))


def error(code: str = "22012", text: str = "division by zero") -> bytes:
    return m.error_response(code, text)


def Z(status: bytes = b"I") -> bytes:  # noqa: N802 - the message's letter
    return m.ready_for_query(status)


# -- errors in an extended batch ------------------------------------------------------------


def test_an_error_before_sync_skips_a_simple_query_sent_in_between():
    """Parse/Bind/Execute failing, a Query, then Sync: PostgreSQL never answers the Query.
    The next Query's rows must be masked by *its* plan, not one entry off."""
    mach = machine()
    mach.feed_client(m.parse_message("", "select 1/0") + bind() + execute())
    mach.feed_client(m.query_message("select 2"))
    mach.feed_client(m.SYNC)
    assert kinds(sent(mach)) == "PBDEQS"  # D: the gateway describes the portal it will mask
    mach.feed_server(m.frame(b"1", b"") + m.frame(b"2", b"") + row_description(("?column?", 23)) + error() + Z())
    assert kinds(sent(mach, "out_client")) == "12EZ"
    mach.feed_client(m.query_message("select ssn from customers"))
    sent(mach)
    mach.feed_server(row_description(("ssn", 25)) + m.data_row([SSN]) + complete("SELECT 1") + Z())
    out = sent(mach, "out_client")
    assert kinds(out) == "TDCZ" and SSN not in out[1][1]
    assert mach.idle


def test_after_an_error_the_client_messages_until_sync_are_not_sent():
    mach = machine()
    mach.feed_client(m.parse_message("", "select 1/0") + bind() + execute())
    sent(mach)
    mach.feed_server(m.frame(b"1", b"") + m.frame(b"2", b"") + error())
    # The server now skips to Sync; what the client sends before it is not even forwarded.
    mach.feed_client(m.query_message("select ssn from customers") + m.parse_message("x", "select 1"))
    assert mach.out_upstream == []
    mach.feed_client(m.SYNC)
    assert kinds(sent(mach)) == "S"
    mach.feed_server(Z())
    assert kinds(sent(mach, "out_client")) == "12EZ"
    assert mach.idle


def test_a_failing_function_call_then_query_are_both_answered():
    mach = machine()
    mach.feed_client(m.frame(b"F", struct.pack("!I", 1317) + b"\0\0\0\0\0\0\0\0"))
    mach.lookup_done(("pg_catalog", "upper", 25))
    mach.feed_client(m.query_message("select 'x' as a"))
    assert kinds(sent(mach)) == "FQ"
    mach.feed_server(error("42883") + Z())
    mach.feed_server(row_description(("a", 25)) + m.data_row([b"x"]) + complete("SELECT 1") + Z())
    assert kinds(sent(mach, "out_client")) == "EZTDCZ"
    assert mach.idle


def test_a_call_held_for_its_lookup_is_dropped_when_an_earlier_error_skips_it():
    """Execute fails, a FunctionCall waits for its OID's name meanwhile, then Sync: the server
    would skip the call, so it is not sent, and the Sync's ReadyForQuery is the next answer."""
    mach = machine(masker=False)
    mach.feed_client(m.parse_message("", "select 1/0") + bind() + execute())
    mach.feed_client(m.frame(b"F", struct.pack("!I", 1317) + b"\0\0\0\0\0\0\0\0") + m.SYNC)
    assert kinds(sent(mach)) == "PBE" and mach.waiting is not None
    mach.feed_server(m.frame(b"1", b"") + m.frame(b"2", b"") + error())
    mach.lookup_done(("pg_catalog", "upper", 25))
    assert kinds(sent(mach)) == "S"
    mach.feed_server(Z())
    assert kinds(sent(mach, "out_client")) == "12EZ"
    assert mach.idle


def test_a_parked_statement_skipped_by_an_earlier_error_is_not_run_on_approval():
    mach = machine()
    mach.feed_client(m.parse_message("", "select 1/0") + bind() + execute())
    mach.feed_client(m.query_message("delete from customers") + m.SYNC)
    assert mach.parked is not None
    sent(mach)
    mach.feed_server(m.frame(b"1", b"") + m.frame(b"2", b"") + row_description(("?column?", 23)) + error())
    # False: neither run nor refused, so the session recorder drops the approval id it holds
    # for this text (a later DELETE of the same text must not carry it).
    assert mach.resume(approved=True) is False
    assert kinds(sent(mach)) == "S"  # never the DELETE: the server would have skipped it
    mach.feed_server(Z())
    assert kinds(sent(mach, "out_client")) == "12EZ"


def test_observe_mode_forwards_names_it_cannot_account_for():
    """Shadow mode answers like PostgreSQL: the server says the portal does not exist."""
    mach = SessionMachine(
        classify=allow_all, masker=None, on_statement=lambda e: None, client_user="a", upstream_user="u", shadow=True
    )
    mach.feed_client(execute("nope") + m.SYNC)
    assert kinds(sent(mach)) == "ES"
    mach.feed_server(error("34000", 'portal "nope" does not exist') + Z())
    assert kinds(sent(mach, "out_client")) == "EZ"


# -- surprises end the session ----------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        m.data_row([SSN]),  # rows with no RowDescription: nothing to mask them by
        m.frame(b"2", b""),  # BindComplete for a Query
        complete("SELECT 1") + Z() + Z(),  # one ReadyForQuery too many
    ],
)
def test_an_answer_the_model_does_not_expect_ends_the_session_unrelayed(answer: bytes):
    mach = machine()
    mach.feed_client(m.query_message("select ssn from customers"))
    sent(mach)
    with pytest.raises(SessionDesync) as caught:
        mach.feed_server(answer)
    assert caught.value.sqlstate == "08P01"
    assert SSN not in b"".join(mach.out_client)


def test_a_fatal_error_is_relayed_whatever_is_in_flight():
    mach = machine()
    fatal = m.error_response("57P01", "terminating connection due to administrator command", severity="FATAL")
    mach.feed_server(fatal)
    assert kinds(sent(mach, "out_client")) == "E"


@pytest.mark.parametrize(
    ("name", "value"),
    [("standard_conforming_strings", "off"), ("client_encoding", "LATIN1"), ("client_encoding", "SJIS")],
)
def test_a_lexing_setting_changed_on_the_server_ends_the_session(name: str, value: str):
    mach = machine()
    mach.feed_client(m.query_message("select 1"))
    sent(mach)
    with pytest.raises(SessionDesync):
        mach.feed_server(complete("SELECT 1") + m.parameter_status(name, value) + Z())


def test_a_harmless_parameter_status_passes():
    mach = machine()
    mach.feed_server(m.parameter_status("client_encoding", "UTF8") + m.parameter_status("TimeZone", "UTC"))
    assert kinds(sent(mach, "out_client")) == "SS"


# -- names made by SQL and by protocol messages ----------------------------------------------


def _run(mach: SessionMachine, client: bytes, server: bytes) -> list[tuple[int, bytes]]:
    mach.feed_client(client)
    sent(mach)
    mach.feed_server(server)
    return sent(mach, "out_client")


def test_a_name_prepared_again_through_sql_is_masked_by_its_new_definition():
    mach = machine()
    _run(mach, m.parse_message("s", "select id from customers where id = 1") + m.SYNC, m.frame(b"1", b"") + Z())
    _run(
        mach,
        m.query_message("deallocate s; prepare s as select reverse(api_key) as k from customers"),
        complete("DEALLOCATE") + complete("PREPARE") + Z(),
    )
    mach.feed_client(bind("", "s") + execute() + m.SYNC)
    up = sent(mach)
    assert kinds(up) == "BDES"  # the gateway describes the portal before its rows
    raw_reversed = b"3j2k1_evil_ks"
    mach.feed_server(
        m.frame(b"2", b"") + row_description(("k", 25)) + m.data_row([raw_reversed]) + complete("SELECT 1") + Z()
    )
    out = sent(mach, "out_client")
    assert kinds(out) == "2DCZ"
    assert raw_reversed not in out[1][1]


def test_a_name_the_gateway_saw_dropped_cannot_be_bound():
    mach = machine()
    _run(mach, m.parse_message("s", "select 1") + m.SYNC, m.frame(b"1", b"") + Z())
    _run(mach, m.query_message("deallocate s"), complete("DEALLOCATE") + Z())
    mach.feed_client(bind("", "s") + execute() + m.SYNC)
    assert sent(mach)[0] == (ord("P"), m.cstr(BLOCKED_STMT) + m.cstr(BLOCKED_TEXT) + b"\0\0")


def test_a_failed_named_parse_leaves_the_old_definition():
    """Parse of an existing name fails on the server: the old statement stays, and so does
    its masking (the new text must not be taken for it)."""
    mach = machine()
    derived = "select reverse(api_key) as k from customers"
    _run(mach, m.parse_message("s", derived) + m.SYNC, m.frame(b"1", b"") + Z())
    exists = error("42P05", 'prepared statement "s" already exists')
    _run(mach, m.parse_message("s", "select 'x' as k") + m.SYNC, exists + Z())
    mach.feed_client(bind("", "s") + execute() + m.SYNC)
    sent(mach)
    rows = row_description(("k", 25)) + m.data_row([b"yek_laer"]) + complete("SELECT 1")
    mach.feed_server(m.frame(b"2", b"") + rows + Z())
    out = sent(mach, "out_client")
    assert b"yek_laer" not in b"".join(body for _, body in out)


def test_a_query_failing_part_way_makes_its_names_uncertain():
    mach = machine()
    _run(mach, m.query_message("prepare s as select 1; select 1/0"), complete("PREPARE") + error() + Z())
    mach.feed_client(bind("", "s"))
    assert sent(mach)[0][0] == ord("P")  # refused: which s the server holds is unknown


def test_execute_of_a_portal_nobody_bound_is_refused():
    mach = machine()
    mach.feed_client(execute("c") + m.SYNC)
    assert kinds(sent(mach)) == "PS"  # the refusal's placeholder Parse, then the Sync


def test_execute_of_a_declared_cursor_is_masked_by_what_it_was_declared_for():
    mach = machine()
    _run(mach, m.query_message("begin"), complete("BEGIN") + Z(b"T"))
    _run(
        mach,
        m.query_message("declare c cursor for select reverse(ssn) as x from customers"),
        complete("DECLARE CURSOR") + Z(b"T"),
    )
    mach.feed_client(execute("c", 1) + m.SYNC)
    assert kinds(sent(mach)) == "DES"  # described by the gateway first
    mach.feed_server(row_description(("x", 25)) + m.data_row([b"9876-54-321"]) + m.frame(b"s", b"") + Z(b"T"))
    out = sent(mach, "out_client")
    assert kinds(out) == "DsZ"
    assert b"9876-54-321" not in out[0][1]


def test_protocol_portals_end_with_their_transaction():
    mach = machine()
    parsed_and_bound = m.frame(b"1", b"") + m.frame(b"2", b"") + Z()
    _run(mach, m.parse_message("s", "select 1") + bind("p", "s") + m.SYNC, parsed_and_bound)
    mach.feed_client(execute("p") + m.SYNC)
    assert sent(mach)[0][0] == ord("P")  # refused: p ended with the implicit transaction


# -- COPY FROM STDIN in the extended protocol ---------------------------------------------------


def test_a_sync_sent_before_copy_data_is_eaten_by_the_copy():
    """libpq sends Sync right after Execute; the server, already reading COPY data, ignores
    it. After CopyDone libpq sends another Sync, which is the one answered."""
    mach = SessionMachine(
        classify=allow_all, masker=None, on_statement=lambda e: None, client_user="a", upstream_user="u",
    )
    mach.feed_client(m.parse_message("", "copy t from stdin") + bind() + execute() + m.SYNC)
    sent(mach)
    mach.feed_server(m.frame(b"1", b"") + m.frame(b"2", b"") + m.frame(b"G", b"\0\0\0"))
    mach.feed_client(m.frame(b"d", b"1\n") + m.frame(b"c", b"") + m.SYNC)
    assert kinds(sent(mach)) == "dcS"
    mach.feed_server(complete("COPY 1") + Z())
    assert kinds(sent(mach, "out_client")) == "12GCZ"
    assert mach.idle


def test_other_messages_while_copy_data_is_expected_end_the_session():
    """Pipelined after a COPY FROM STDIN: held until the server says whether it reads COPY
    data; once it does, anything but COPY data is a protocol violation."""
    mach = SessionMachine(
        classify=allow_all, masker=None, on_statement=lambda e: None, client_user="a", upstream_user="u",
    )
    mach.feed_client(m.query_message("copy t from stdin") + m.query_message("select 1"))
    assert kinds(sent(mach)) == "Q"  # the second Query waits
    with pytest.raises(ProtocolViolation):
        mach.feed_server(m.frame(b"G", b"\0\0\0"))


def test_a_query_pipelined_after_a_copy_that_fails_goes_on_when_the_server_says_so():
    mach = SessionMachine(
        classify=allow_all, masker=None, on_statement=lambda e: None, client_user="a", upstream_user="u",
    )
    mach.feed_client(m.query_message("copy nope from stdin") + m.query_message("select 1"))
    assert kinds(sent(mach)) == "Q"
    mach.feed_server(error("42P01", 'relation "nope" does not exist') + Z())
    assert sent(mach) == [(ord("Q"), m.cstr("select 1"))]
    assert mach.held_client


@pytest.mark.parametrize(
    ("between", "answer"),
    [
        ("commit", complete("COMMIT") + Z(b"I")),  # the cursor ended with its transaction
        (
            "select jg_reopen('c')",
            row_description(("jg_reopen", 1790)) + m.data_row([b"c"]) + complete("SELECT 1") + Z(b"T"),
        ),
        ("rollback to savepoint s", complete("ROLLBACK") + Z(b"T")),
    ],
)
def test_a_cursor_the_server_may_have_reopened_is_masked_whole(between: str, answer: bytes):
    """After code the gateway cannot see may have closed cursor c and opened another under
    the same name, FETCH c is masked whole, not by what c was first declared for."""
    mach = machine()
    _run(mach, m.query_message("begin"), complete("BEGIN") + Z(b"T"))
    declare = m.query_message("declare c cursor with hold for select id from customers")
    _run(mach, declare, complete("DECLARE CURSOR") + Z(b"T"))
    _run(mach, m.query_message(between), answer)
    mach.feed_client(m.query_message("fetch 1 from c"))
    sent(mach)
    mach.feed_server(row_description(("id", 25)) + m.data_row([b"yek_laer"]) + complete("FETCH 1") + Z(b"T"))
    out = sent(mach, "out_client")
    assert kinds(out) == "TDCZ" and b"yek_laer" not in out[1][1]
    mach.feed_client(execute("c") + m.SYNC)
    assert sent(mach)[0][0] == ord("P")  # protocol Execute of it: refused


def test_fetch_from_a_cursor_the_gateway_still_trusts_keeps_its_columns():
    mach = machine()
    _run(mach, m.query_message("begin"), complete("BEGIN") + Z(b"T"))
    _run(mach, m.query_message("declare c cursor for select id from customers"), complete("DECLARE CURSOR") + Z(b"T"))
    for _ in range(2):
        out = _run(
            mach, m.query_message("fetch 1 from c"),
            row_description(("id", 25)) + m.data_row([b"42"]) + complete("FETCH 1") + Z(b"T"),
        )
        assert m.parse_data_row(out[1][1]) == [b"42"]


def test_a_fast_path_result_is_masked_like_the_same_call_in_sql():
    mach = machine()
    key = b"sk_live_" + b"4eC39HqLyjWDarjtT1zdp7dc"
    mach.feed_client(m.frame(b"F", struct.pack("!I", 16500) + b"\0\0\0\0\0\0"))
    mach.lookup_done(("public", "jg_secret", 25))
    assert kinds(sent(mach)) == "F"
    mach.feed_server(m.frame(b"V", len(key).to_bytes(4, "big") + key) + Z())
    out = sent(mach, "out_client")
    assert kinds(out) == "VZ" and key not in out[0][1]


def test_a_name_whose_new_definition_failed_ends_the_session_when_bound():
    """Found by the differential test: `prepare q1 as <reverse(api_key)>`, Bind/Execute/Sync,
    then `prepare q1 as <other>` (fails: q1 exists), Bind q1, all in one write. The server
    binds the first definition; the gateway must not mask its rows by the second's."""
    mach = machine()
    first = m.query_message("prepare q1 as select reverse(api_key) as k from customers")
    second = m.query_message("prepare q1 as select id as k from customers")
    mach.feed_client(first + bind("", "q1") + execute() + m.SYNC + second + bind("", "q1") + execute() + m.SYNC)
    sent(mach)
    rows = row_description(("k", 25)) + m.data_row([b"yek_laer"]) + complete("SELECT 1")
    mach.feed_server(complete("PREPARE") + Z() + m.frame(b"2", b"") + rows + Z())
    mach.feed_server(error("42P05", 'prepared statement "q1" already exists') + Z())
    with pytest.raises(SessionDesync):
        mach.feed_server(m.frame(b"2", b"") + rows + Z())
    assert b"yek_laer" not in b"".join(mach.out_client)


def test_a_parsed_execute_is_judged_by_what_the_name_means_when_it_runs():
    mach = machine()
    _run(mach, m.query_message("prepare s as select 'x'::text as a"), complete("PREPARE") + Z())
    _run(mach, m.parse_message("e", "execute s") + m.SYNC, m.frame(b"1", b"") + Z())
    redefine = m.query_message("deallocate s; prepare s as select reverse(ssn)::text as a from customers")
    _run(mach, redefine, complete("DEALLOCATE") + complete("PREPARE") + Z())
    mach.feed_client(bind("", "e") + execute() + m.SYNC)
    assert kinds(sent(mach)) == "BDES"  # described when it runs, not from the Parse's Describe
    mach.feed_server(m.frame(b"2", b"") + row_description(("a", 25)) + m.data_row([b"9876-54-321"]))
    mach.feed_server(complete("SELECT 1") + Z())
    out = sent(mach, "out_client")
    assert kinds(out) == "2DCZ" and b"9876-54-321" not in out[1][1]


def test_a_parsed_execute_of_a_reviewed_statement_waits_for_review_when_it_runs():
    mach = machine()
    _run(mach, m.query_message("prepare s as select 1"), complete("PREPARE") + Z())
    _run(mach, m.parse_message("e", "execute s") + m.SYNC, m.frame(b"1", b"") + Z())
    _run(mach, m.query_message("deallocate s"), complete("DEALLOCATE") + Z())
    mach.feed_client(m.query_message("prepare s as delete from customers"))
    assert mach.parked is not None  # the PREPARE of a mass delete is reviewed...
    mach.resume(approved=True)
    sent(mach)
    mach.feed_server(complete("PREPARE") + Z())
    mach.feed_client(bind("", "e") + execute() + m.SYNC)
    assert mach.parked is not None  # ...and so is running it through the parsed EXECUTE


def test_protocol_names_are_the_same_name_to_the_gateway_when_they_are_to_the_server():
    """The server keys statement names on their first 63 bytes."""
    mach = machine()
    one, two = "a" * 63 + "1", "a" * 63 + "2"
    _run(mach, m.parse_message(one, "select 'x'::text as a") + m.SYNC, m.frame(b"1", b"") + Z())
    _run(mach, m.close_message("S", two) + m.SYNC, m.frame(b"3", b"") + Z())
    mach.feed_client(bind("", one) + execute() + m.SYNC)
    assert sent(mach)[0][0] == ord("P")  # refused: that name was closed


def test_a_copy_is_described_on_the_session_itself_and_masked_by_those_columns():
    """Only the session sees its temporary tables: the gateway describes the COPY's rows on
    the client's connection (its answers never relayed), then runs the COPY."""
    mach = machine()
    copy = m.query_message("copy jg_notes to stdout")
    mach.feed_client(copy + m.query_message("select 1"))
    up = sent(mach)
    assert kinds(up) == "PDCS" and b"jg_notes" in up[0][1]  # the probe; COPY and the rest wait
    mach.feed_server(
        m.frame(b"1", b"") + m.frame(b"t", b"\0\0") + row_description(("id", 23), ("api_key", 25))
        + m.frame(b"3", b"") + Z()
    )
    assert sent(mach, "out_client") == []  # nothing of the probe reaches the client
    assert sent(mach) == [(ord("Q"), copy[5:]), (ord("Q"), m.cstr("select 1"))]
    mach.feed_server(m.frame(b"H", b"\0\0\2\0\0\0\0") + m.frame(b"d", b"1\tsk_live_abcdefghijklmnop\n"))
    out = sent(mach, "out_client")
    assert kinds(out) == "Hd" and b"sk_live_abcdefghijklmnop" not in out[1][1]


def test_a_copy_whose_probe_fails_is_refused():
    mach = machine()
    mach.feed_client(m.query_message("copy nope to stdout"))
    sent(mach)
    mach.feed_server(error("42P01", 'relation "nope" does not exist') + Z())
    assert sent(mach, "out_client") == []
    assert sent(mach) == [(ord("Q"), m.cstr(BLOCKED_TEXT))]
    mach.feed_server(error("42601", "syntax error") + Z())
    err = sent(mach, "out_client")
    assert kinds(err) == "EZ" and m.field(m.parse_fields(err[0][1]), "C") == "42501"
