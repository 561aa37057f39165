"""The gateway's own questions to the upstream, on a connection of their own.

Two things the policy and the approvers need are only in the upstream's catalog or planner:
the name behind a fast-path FunctionCall's OID, and the planner's row estimate of a parked
write. They are asked on a second upstream connection, opened on first use with the
session's own credential, never on the client's connection: no message the client pipelines
can be taken as their answer (protocol-notes: "any answer the proxy takes from the upstream
for its own purposes must not be answerable by traffic the client pipelined").

The connection is read-only (``default_transaction_read_only``), has a statement timeout,
and runs each question with the extended protocol, so a question is exactly one statement.
It sees committed state under the role's defaults: an object created in the client's open
transaction is not visible to it, and then the answer is "unknown" (the gateway refuses
what it cannot check).

(The columns of a ``COPY ... TO STDOUT``, which sends no RowDescription, depend on the
session's temporary tables and search_path: those are asked on the client's own connection,
with its input held; see proxy.inflight.Probe.)

`Lookup`s are the machine's side (pure data); `SideChannel` is the I/O.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pglast
import structlog

from proxy.protocol import codes as c
from proxy.protocol import messages as m
from proxy.protocol.frames import split_messages
from proxy.rehearsal import Estimate, EstimateAnswer

log = structlog.get_logger("jitgate.proxy")

#: Statements whose row estimate an approver wants: writes (a leading comment or WITH is fine).
#: Statements that write nothing themselves (a query may call a function that writes: a gap
#: the README names).
_NO_WRITE = re.compile(
    r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:begin|start|commit|end|rollback|abort|savepoint|release|set|reset|show"
    r"|select|values|table)\b",
    re.I | re.S,
)
_DML = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:with\b.*?\b)?(update|delete|insert|merge)\b", re.I | re.S)

TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class FunctionName:
    """Which function has this OID: (schema, name, result type), or None when none does."""

    oid: int


Lookup = FunctionName | Estimate


def copy_columns_query(copy: Any) -> str | None:
    if copy.query:
        return f"SELECT * FROM ({copy.query}) AS q LIMIT 0"
    if copy.relation:
        return f"SELECT * FROM {copy.relation} LIMIT 0"
    return None


def wants_estimate(sql: str, statement_count: int) -> bool:
    return statement_count == 1 and _DML.match(sql) is not None


def plan_rows(plan_json: bytes | None) -> int | None:
    """Rows the plan expects to touch: a ModifyTable's input, else the top node's rows."""
    try:
        plan = json.loads(plan_json or b"")[0]["Plan"]
        if plan.get("Node Type") == "ModifyTable" and plan.get("Plans"):
            return int(sum(child.get("Plan Rows", 0) for child in plan["Plans"]))
        return int(plan["Plan Rows"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


def _quoted(name: str) -> str:
    """A plan's [schema.]relation, quoted for SQL."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _statements(sql: str) -> list[str]:
    """The statements of a string, each on its own (EXPLAIN takes one)."""
    try:
        return list(pglast.split(sql))
    except Exception:  # noqa: BLE001 - pglast raises several kinds; unknown then
        return []


#: An index condition that is one equality with a constant or parameter: ``(id = 4)``.
_ONE_KEY = re.compile(r"\((\w+|\"[^\"]+\") = ('[^']*'(::[\w .\"]+)?|[\w.$]+(::[\w .\"]+)?)\)")

Node = tuple[str, str | None, int, str | None]


def write_nodes(plan_json: bytes | None) -> list[Node] | None:
    """(operation, table, rows planned in, index) of each ModifyTable node of the plan, a
    writable CTE's too: `index` names the index its rows come from when they are found by
    one equality on it (at most one row, if it is a unique index on that column alone);
    None when the plan cannot be read."""
    try:
        root = json.loads(plan_json or b"")[0]["Plan"]
    except (IndexError, KeyError, TypeError, ValueError):
        return None
    nodes: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        children = node.get("Plans") or []
        if node.get("Node Type") == "ModifyTable":
            inputs = [child for child in children if child.get("Parent Relationship") == "Outer"] or children[:1]
            schema, name = node.get("Schema"), node.get("Relation Name")
            table = (f"{schema}.{name}" if schema else str(name)) if name else None
            planned = int(sum(c.get("Plan Rows", 0) for c in inputs))
            index = None
            if len(inputs) == 1 and inputs[0].get("Node Type") in ("Index Scan", "Index Only Scan"):
                if _ONE_KEY.fullmatch(str(inputs[0].get("Index Cond", ""))) and not inputs[0].get("Filter"):
                    index = inputs[0].get("Index Name")
            nodes.append((str(node.get("Operation", "")), table, planned, index))
        stack.extend(children)
    return nodes


def write_rows(plan_json: bytes | None) -> tuple[int, str | None] | None:
    """Rows the plan's ModifyTable nodes take in, and the table when there is one; None
    when the plan writes nothing the planner counts."""
    nodes = write_nodes(plan_json)
    if not nodes:
        return None
    tables = {node[1] for node in nodes}
    return sum(node[2] for node in nodes), next(iter(tables)) if len(tables) == 1 else None


class SideError(Exception):
    """The side connection could not answer (down, timed out, or an error from the server)."""


class SideChannel:
    """One lazily opened side connection per session; questions are serialised on it."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], *, timeout: float = TIMEOUT_SECONDS) -> None:
        self._connect = connect
        self._timeout = timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._buf = bytearray()

    async def answer(self, lookup: Lookup) -> Any:
        """The answer the machine waits for (`SessionMachine.lookup_done`); None: unknown."""
        try:
            if isinstance(lookup, Estimate):
                return await self.estimate_write(lookup.sql)
            return await self.function_name(lookup.oid)
        except SideError as exc:
            log.warning("side_query_failed", kind=type(lookup).__name__, error=str(exc))
            return None

    async def function_name(self, oid: int) -> tuple[str, str, int] | None:
        """(schema, name, result type OID) of the function with this OID."""
        rows, _ = await self._ask(
            "SELECT n.nspname, p.proname, p.prorettype::pg_catalog.int8 FROM pg_catalog.pg_proc p"
            " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1::pg_catalog.oid",
            (str(int(oid)).encode(),),
        )
        if len(rows) != 1 or len(rows[0]) != 3 or None in rows[0]:
            return None
        schema, name, result_type = rows[0]
        assert schema is not None and name is not None and result_type is not None
        return schema.decode(), name.decode(), int(result_type)

    async def estimate(self, sql: str) -> int | None:
        try:
            rows, _ = await self._ask("EXPLAIN (FORMAT JSON) " + sql, ())
        except SideError:
            return None
        return plan_rows(rows[0][0]) if rows and rows[0] else None

    async def estimate_write(self, sql: str) -> EstimateAnswer | None:
        """The planner's count of the rows a write that cannot be rehearsed would change (the
        input of its ModifyTable nodes, CTEs included), ANALYZEd first when a table never
        was and the role may; and a bound the planner cannot be talked below: an UPDATE,
        DELETE or MERGE changes at most its whole table (a WHERE the planner misjudges, such
        as ``lower(s) = lower(s)``, moves the estimate, not the table's size). None: the
        planner cannot tell (parameters, an object only the client's transaction sees)."""
        nodes = await self._write_nodes(sql)
        if not nodes:
            return None
        sizes: dict[str, int | None] = {}
        notes = []
        for name in dict.fromkeys(node[1] for node in nodes if node[1]):
            size, never = await self._table_size(name)
            if never:
                # ANALYZE needs ownership (or MAINTAIN): without it the server warns and skips.
                await self._ask("ANALYZE " + _quoted(name), ())
                size, never = await self._table_size(name)
                never_text = f"{name} was never analysed and this role may not analyse it"
                notes.append(never_text if never else f"{name} analysed first")
                nodes = await self._write_nodes(sql) or nodes
            sizes[name] = size
        rows = sum(node[2] for node in nodes)
        bound: int | None = 0
        for operation, table, planned, index in nodes:
            if bound is None:
                break
            if table is None or await self._unbounded(table):
                bound = None  # triggers, cascades, children: rows beyond the plan's
            elif operation == "Insert":
                bound += planned  # no bound but the planner's
            elif index is not None and await self._unique_key(index):
                bound += 1  # one equality on a unique key: one row at most
            elif table is not None and sizes.get(table) is not None:
                bound += max(sizes[table] or 0, planned)
            else:
                bound = None  # a table of unknown size: no bound
        tables = {node[1] for node in nodes}
        only = next(iter(tables)) if len(tables) == 1 else None
        return EstimateAnswer(rows, only, sizes.get(only) if only else None, "; ".join(notes) or None, bound)

    async def _unique_key(self, index: str) -> bool:
        rows, _ = await self._ask(
            "SELECT i.indisunique AND i.indnkeyatts OPERATOR(pg_catalog.=) 1 AND i.indpred IS NULL"
            " FROM pg_catalog.pg_index i WHERE i.indexrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
            (_quoted(index).encode(),),
        )
        return bool(rows) and rows[0][0] == b"t"

    async def _write_nodes(self, sql: str) -> list[Node] | None:
        """The write nodes of every statement of `sql`; None when one may write and cannot be
        explained here (``EXPLAIN ANALYZE <write>``, ``EXECUTE p``, ``COPY``, ``CALL`` ...:
        anything but a plain write, transaction control, SET or a query), so that a small
        write beside it does not stand for the whole string."""
        nodes: list[Node] = []
        for part in _statements(sql):
            if _DML.match(part):
                rows, _ = await self._ask("EXPLAIN (FORMAT JSON) " + part, ())
                found = write_nodes(rows[0][0] if rows and rows[0] else None)
                if found is None:
                    return None
                nodes.extend(found)
            elif not _NO_WRITE.match(part):
                return None
        return nodes

    async def _unbounded(self, table: str) -> bool:
        """Whether a write to `table` may change rows its plan does not show: a trigger of its
        own, a foreign key that cascades (or sets null or a default) into another table, or
        tables inheriting from it. Then neither the plan nor the table's size bounds it."""
        rows, _ = await self._ask(
            "SELECT c.relhassubclass"
            " OR EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid"
            " AND NOT t.tgisinternal)"
            " OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint f WHERE f.confrelid OPERATOR(pg_catalog.=) c.oid"
            " AND f.contype OPERATOR(pg_catalog.=) 'f'"
            " AND (f.confdeltype OPERATOR(pg_catalog.<>) ALL ('{a,r}')"
            " OR f.confupdtype OPERATOR(pg_catalog.<>) ALL ('{a,r}')))"
            " FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
            (_quoted(table).encode(),),
        )
        return not rows or rows[0][0] != b"f"

    async def _table_size(self, table: str) -> tuple[int | None, bool]:
        rows, _ = await self._ask(
            "SELECT c.reltuples::pg_catalog.int8 FROM pg_catalog.pg_class c"
            " WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
            (_quoted(table).encode(),),
        )
        if not rows or rows[0][0] is None:
            return None, False
        size = int(rows[0][0])
        return (size, False) if size >= 0 else (None, True)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.writer.write(m.TERMINATE)
                conn.writer.close()
            except (OSError, RuntimeError):
                pass

    # -- the wire --------------------------------------------------------------------------

    async def _ask(
        self, sql: str, params: tuple[bytes, ...], *, execute: bool = True
    ) -> tuple[list[list[bytes | None]], bytes | None]:
        async with self._lock:
            try:
                return await asyncio.wait_for(self._exchange(sql, params, execute), self._timeout)
            except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
                await self.close()
                raise SideError(type(exc).__name__) from None

    async def _exchange(
        self, sql: str, params: tuple[bytes, ...], execute: bool
    ) -> tuple[list[list[bytes | None]], bytes | None]:
        if self._conn is None:
            self._conn = await self._connect()
            self._buf.clear()
            # Questions only: nothing the side connection runs may write.
            await self._run_setup()
        conn = self._conn
        out = [m.parse_message("", sql), m.describe_message("S", "")]
        if execute:
            out += [_bind(params), m.frame(b"E", b"\0\0\0\0\0")]
        out.append(m.SYNC)
        conn.writer.write(b"".join(out))
        rows: list[list[bytes | None]] = []
        description: bytes | None = None
        error: str | None = None
        for kind, body in await self._until_ready():
            if kind == c.ROW_DESCRIPTION:
                description = body
            elif kind == c.DATA_ROW:
                rows.append(m.parse_data_row(body))
            elif kind == c.ERROR_RESPONSE:
                error = m.field(m.parse_fields(body), "C")
        if error is not None:
            raise SideError(f"SQLSTATE {error}")
        return rows, description

    async def _run_setup(self) -> None:
        self._conn.writer.write(
            m.query_message("SET default_transaction_read_only = on; SET statement_timeout = '4s'")
        )
        for kind, _body in await self._until_ready():
            if kind == c.ERROR_RESPONSE:
                raise SideError("could not set up the side connection")

    async def _until_ready(self) -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []
        while True:
            messages, used = split_messages(self._buf)
            del self._buf[:used]
            got.extend(messages)
            if any(kind == c.READY_FOR_QUERY for kind, _ in messages):
                return got
            data = await self._conn.reader.read(65536)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            self._buf += data


def _bind(params: tuple[bytes, ...]) -> bytes:
    body = b"\0\0" + b"\0\0" + len(params).to_bytes(2, "big")
    for value in params:
        body += len(value).to_bytes(4, "big") + value
    body += b"\0\0"  # all results in text
    return m.frame(b"B", body)
