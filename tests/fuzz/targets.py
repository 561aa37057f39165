"""Fuzz targets: bytes in, and nothing but the documented refusals may come out.

Shared by the hypothesis tests (`tests/fuzz/test_fuzz.py`, a short run in `make test`, a long
one in `make fuzz`) and the coverage-guided atheris driver (`tests/fuzz/atheris_main.py`).

- `codec(data)`: the frame splitter and every message parser. Allowed: ProtocolViolation.
- `session(data)`: a whole `SessionMachine` fed by an adversarial client and upstream, with
  the real agent-safe policy. Allowed: ProtocolViolation and the proxy's own ProxyError
  refusals. Memory: the machine never buffers more than one maximal message plus a header.
- `policy(data)`: classification of arbitrary text never raises and always decides.
"""

from __future__ import annotations

from broker.policy import Decision, PolicyEngine
from proxy.exceptions import ProxyError
from proxy.machine import SessionMachine
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation, split_messages

MAX_MESSAGE = 64 * 1024
_ENGINE = PolicyEngine.preset()
_CLASSIFY = _ENGINE.bind("fuzz")

PARSERS = {
    ord("P"): m.parse_parse,
    ord("B"): m.parse_bind,
    ord("E"): m.parse_execute,
    ord("D"): m.parse_data_row,
}


def codec(data: bytes) -> None:
    try:
        messages, used = split_messages(data, MAX_MESSAGE)
    except ProtocolViolation:
        return
    assert 0 <= used <= len(data)
    for kind, body in messages:
        parse = PARSERS.get(kind)
        if parse is None:
            continue
        try:
            parse(body)
        except ProtocolViolation:
            pass
    try:
        m.parse_fields(data)
    except (ProtocolViolation, ValueError, UnicodeDecodeError, IndexError):
        pass


def session(data: bytes) -> None:
    machine = SessionMachine(
        classify=lambda sql: _CLASSIFY(sql, ("ai-agents",)),
        masker=None,
        on_statement=lambda event: None,
        client_user="agent",
        upstream_user="v-upstream-login",
        max_message_bytes=MAX_MESSAGE,
    )
    split = data[0] if data else 0
    chunks = (data[1 : 1 + split], data[1 + split :])
    for side, chunk in enumerate(chunks):
        try:
            if side == 0:
                machine.feed_client(chunk)
            else:
                machine.feed_server(chunk)
        except (ProtocolViolation, ProxyError):
            return
        assert machine.buffered_client <= MAX_MESSAGE + 5
        if machine.parked is not None:
            try:  # releasing processes what arrived meanwhile, which may be malformed too
                machine.resume(approved=False, reason="fuzz")
            except (ProtocolViolation, ProxyError):
                return
        if machine.waiting is not None:
            try:  # a fast-path call held for its name: the side channel could not tell
                machine.lookup_done(None)
            except (ProtocolViolation, ProxyError):
                return
    # Whatever the client sent, the upstream login never reaches it.
    assert b"v-upstream-login" not in b"".join(machine.out_client)


def policy(data: bytes) -> None:
    sql = data.decode("utf-8", "replace")
    verdict = _CLASSIFY(sql, ("ai-agents",))
    assert verdict.decision in (Decision.ALLOW, Decision.BLOCK, Decision.REVIEW)
