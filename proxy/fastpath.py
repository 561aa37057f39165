"""The steady-state fast path: a batch the session has run before, run again.

Drivers repeat themselves. libpq's PQexecPrepared sends Bind, Describe portal, Execute, Sync
for every execution of a prepared statement; PQexecParams sends the same after a Parse of the
unnamed statement; asyncpg sends Bind, Execute, Sync (it described the statement when it
prepared it); ORMs and pgbench send little else. The first time, the full machine
(proxy.requests, proxy.answers) judges such a batch. When it forwarded the batch as sent, ran
one allowed statement whose rows need no masking, and the transaction ended where it began
(idle, nothing in flight), the batch's *shape* is kept as a `Template`: its bytes but the
Bind's parameter values (and the Bind's length, which they change).

The next batch of that shape, arriving in one read when the session is quiet (`quiet` in
proxy.machine), is forwarded at once, provided what the verdict depends on is what it was:
the prepared statement the Bind names is the same version (nothing redefined, closed or
failed it), its verdict is the same object, the policy returns the very verdict it returned
for the text of a Parse (a reload gives new ones), and the recorder is healthy. Parameter
values never change a verdict: the full machine skips them too. The answer is relayed as it
is when it is exactly the expected one, in one read: ParseComplete for a Parse, BindComplete,
the same RowDescription when the client asked for one (the rows' masking plan comes from it,
or from the statement's description, which must be the same object: so the plan is the same,
none), DataRows, one CommandComplete and ReadyForQuery idle. The statement is then recorded
as the full machine records it.

A simple Query of one statement takes the same way when the policy returns, for its text,
the very verdict object it returned for an earlier Query the full machine learned from: the
policy's cache shares one verdict among texts that differ only in literal values it never
read (broker.policy.engine, `normalize.shape`), so ``... WHERE aid = 48213`` repeats the
``... WHERE aid = 17`` it learned; the answer must then be exactly that Query's
RowDescription, DataRows, CommandComplete and ReadyForQuery idle.

Anything else falls back before a byte of the answer is relayed (`SessionMachine.materialize`):
the batch is fed to the full machine as if it had just arrived, with the time and the verdict
it was forwarded under, and what the machine would send upstream is dropped (it was sent;
from the same state the machine sends the same bytes, and if it would not, the session ends:
SessionDesync). Then the answer goes through the full machine. Client input arriving while a
fast batch is unanswered materializes it first. So the model is never skipped when anything
unusual happens; in the common case nothing of it changes: the batch's unnamed portal is gone
again at the idle ReadyForQuery, the prepared statement is the one it was, and a Parse of the
unnamed statement redefines it as what it already is.

Pure and sans-IO, like the machine. Kept small and flat on purpose: it is the code every
repeated statement runs, and what it touches per batch (a dictionary lookup, a few slices)
stays in the CPU's caches between the other processes' turns, where the full machine's
hundred calls did not (see bench/README.md, "Where the time goes").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.policy.model import Verdict
from proxy.names import Statement

_PARSE_COMPLETE = b"1\x00\x00\x00\x04"
_BIND_COMPLETE = b"2\x00\x00\x00\x04"
_READY_IDLE = b"Z\x00\x00\x00\x05I"
_NO_DATA = b"n\x00\x00\x00\x04"
#: Templates kept per session (a driver has a handful of statements in its loop; an agent
#: issuing ever new ones gains nothing here and the map is simply rebuilt).
MAX_TEMPLATES = 64


@dataclass(slots=True, eq=False)
class Template:
    statement: Statement | None  # the version the Bind binds (for a Parse: the unnamed one it remakes)
    verdict: Verdict  # statement.verdict when learned (a Query's: what decide made of `classified`)
    classified: Verdict | None  # for a Parse or a Query: what the policy returned for its text
    description: bytes | None  # the statement's own (Describe statement), which plans rows too
    sql: str
    statement_name: str
    portal_name: str
    answer_prefix: bytes  # [ParseComplete] BindComplete RowDescription, as the server sent them
    # The rows' masking plan (content detection, masked columns) the full machine made for
    # this description, formats and lineage; None: rows are relayed as they are.
    plan: Any
    # The statement returns rows (it was described with columns): a DataRow for one that
    # returns none is the full machine's to refuse (08P01), never relayed.
    rows: bool = True
    # The policy (SessionMachine's `policy_epoch`) under which `classified` was last asked
    # for and returned again; None: not yet.
    confirmed: Any = None


# Shape and Pending are made for every statement on the fast path: plain classes, because
# compiled (mypyc) a dataclass keeps its generated `__init__` interpreted.


class Shape:
    """A client read that is one [Parse ''] Bind [Describe portal] Execute Sync batch."""

    key: bytes
    statement_name: str
    portal_name: str
    parse: bool
    described: bool  # the client asks for the rows' description (libpq); else it has it (asyncpg)

    def __init__(self, key: bytes, statement_name: str, portal_name: str, parse: bool, described: bool) -> None:
        self.key = key
        self.statement_name = statement_name
        self.portal_name = portal_name
        self.parse = parse
        self.described = described


class Pending:
    """A batch forwarded by the fast path, its answer not seen yet."""

    data: bytes
    template: Template
    started: float
    sql: str  # what is recorded: the statement's text, or the Query's own

    def __init__(self, data: bytes, template: Template, started: float, sql: str) -> None:
        self.data = data
        self.template = template
        self.started = started
        self.sql = sql


def query_text(data: bytes) -> str | None:
    """The text of `data` when it is exactly one simple Query message, well formed."""
    n = len(data)
    if n < 6 or data[0] != 0x51 or int.from_bytes(data[1:5], "big") != n - 1 or data.find(b"\x00", 5) != n - 1:
        return None
    try:
        return data[5 : n - 1].decode("utf-8")
    except UnicodeDecodeError:
        return None


def shape(data: bytes) -> Shape | None:
    """The batch's shape, or None when `data` is not exactly [Parse of ''] Bind, [Describe of
    its portal,] Execute, Sync, each well formed (anything unusual goes the full way)."""
    n = len(data)
    pos = 0
    parse = False
    if n < 5:
        return None
    if data[0] == 0x50:  # Parse: of the unnamed statement only
        end = 1 + int.from_bytes(data[1:5], "big")
        if end > n or end < 8 or data[5] != 0:
            return None
        parse = True
        pos = end
    if n - pos < 5 or data[pos] != 0x42:  # Bind
        return None
    bind_end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    if bind_end > n:
        return None
    body = pos + 5
    cut = data.find(b"\x00", body, bind_end)
    if cut < 0:
        return None
    stop = data.find(b"\x00", cut + 1, bind_end)
    if stop < 0:
        return None
    portal = data[body:cut]
    statement = data[cut + 1 : stop]
    if parse and statement:
        return None  # a Parse of '' then a Bind of another statement: '' changes unseen
    p = stop + 1
    if p + 2 > bind_end:
        return None
    formats = int.from_bytes(data[p : p + 2], "big", signed=True)
    if formats < 0:
        return None
    p += 2 + 2 * formats
    if p + 2 > bind_end:
        return None
    params = int.from_bytes(data[p : p + 2], "big", signed=True)
    if params < 0:
        return None
    p += 2
    values = p
    for _ in range(params):
        if p + 4 > bind_end:
            return None
        size = int.from_bytes(data[p : p + 4], "big", signed=True)
        if size < -1:
            return None
        p += 4 + (size if size > 0 else 0)
    if p + 2 > bind_end:
        return None
    results = int.from_bytes(data[p : p + 2], "big", signed=True)
    if results < 0 or p + 2 + 2 * results != bind_end:
        return None
    # [Describe the same portal,] Execute it, Sync (the row limit and the rest: in the key).
    rest = data[bind_end:]
    describe = b"D" + (len(portal) + 6).to_bytes(4, "big") + b"P" + portal + b"\x00"
    described = rest.startswith(describe)
    after = len(describe) if described else 0
    execute = b"E" + (len(portal) + 9).to_bytes(4, "big") + portal + b"\x00"
    if rest[after : after + len(execute)] != execute:
        return None
    after += len(execute) + 4  # (the row limit: in the key)
    if rest[after:] != b"S\x00\x00\x00\x04":
        return None
    try:
        portal_name = portal.decode("utf-8")
        statement_name = statement.decode("utf-8")
    except UnicodeDecodeError:
        return None
    key = data[: pos + 1] + data[body:values] + data[p:]
    return Shape(key, statement_name, portal_name, parse, described)


def answer_rows(data: bytes, prefix: bytes) -> tuple[list[int], int, bytes] | None:
    """(where each DataRow starts, where they end, the CommandComplete tag) when `data` is
    exactly `prefix`, DataRows, one CommandComplete and ReadyForQuery idle; None otherwise
    (the full machine takes it)."""
    if not data.startswith(prefix):
        return None
    n = len(data)
    pos = len(prefix)
    rows: list[int] = []
    while pos < n and data[pos] == 0x44:  # DataRow
        if n - pos < 5:
            return None
        size = int.from_bytes(data[pos + 1 : pos + 5], "big")
        if size < 6:  # a DataRow has at least its column count
            return None
        rows.append(pos)
        pos += 1 + size
    if n - pos < 5 or data[pos] != 0x43:  # CommandComplete
        return None
    end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    if end + 6 != n or data[end - 1] != 0 or data[end:] != _READY_IDLE:
        return None
    return rows, pos, data[pos + 5 : end - 1]


def answer_prefix(parse: bool, description: bytes | None, *, query: bool = False) -> bytes:
    """What the server answers first to a batch of this shape: [ParseComplete,]
    BindComplete[, the RowDescription the client asked for]; to a Query, its RowDescription."""
    head = b"" if query else (_PARSE_COMPLETE if parse else b"") + _BIND_COMPLETE
    if description is None:
        return head
    if not description:
        return head + _NO_DATA  # described as returning no rows
    return head + b"T" + (len(description) + 4).to_bytes(4, "big") + description
