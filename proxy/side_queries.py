"""The queries the gateway sends the upstream on its own, for the relay machine.

Two things the policy and the masker need are only in the upstream's catalog: the name behind
a fast-path FunctionCall's OID, and the columns of a ``COPY ... TO STDOUT`` (which, unlike a
query, sends no RowDescription). The machine asks, marks the in-flight entries of its own
messages ``swallow`` so their answers are not relayed, and holds the client's message until
the answer is in. Mixed into ``SessionMachine``; the attributes below are the machine's.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from typing import Any

from broker.masking import MaskingError
from broker.policy.model import Decision, Verdict
from proxy.exceptions import ResultRefused
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation
from proxy.records import (
    CLOSE,
    DESCRIBE_S,
    FUNCTION,
    PARSE,
    PROBE_STMT,
    QUERY,
    SYNC,
    Entry,
    MaskerLike,
    Parked,
    column_info,
)

# Statements whose row estimate an approver wants: writes (a leading comment or WITH is fine).
_DML = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:with\b.*?\b)?(update|delete|insert|merge)\b", re.I | re.S)


def _plan_rows(rows: list[bytes]) -> int | None:
    """Rows the plan expects to touch: a ModifyTable's input, else the top node's rows."""
    try:
        data = m.parse_data_row(rows[0])
        plan = json.loads(data[0] or b"")[0]["Plan"]
        if plan.get("Node Type") == "ModifyTable" and plan.get("Plans"):
            return int(sum(child.get("Plan Rows", 0) for child in plan["Plans"]))
        return int(plan["Plan Rows"])
    except (IndexError, KeyError, TypeError, ValueError):
        return None


class SideQueries:
    _inflight: deque[Entry]
    _open_extended: bool
    _held_call: bytes | None
    _explaining: Parked | None
    parked: Parked | None
    txn_status: bytes
    _function_names: dict[int, tuple[str, str]]
    _masker: MaskerLike | None
    _clock: Callable[[], float]
    out_upstream: list[bytes]

    # Provided by SessionMachine.
    def _decide(self, sql: str) -> Verdict:
        raise NotImplementedError

    def _refuse(self, kind: int, sql: str, verdict: Verdict, reason: str | None = None) -> list[bytes]:
        raise NotImplementedError

    def _process_client(self) -> None:
        raise NotImplementedError

    # -- fast-path function calls ------------------------------------------------------------

    def _on_function_call(self, oid: int, raw: bytes) -> list[bytes] | None:
        """A FunctionCall names its function by OID: resolve the name, then apply policy.

        The name comes from the upstream's catalog with a lookup the gateway sends itself,
        before the call, so the policy judges ``SELECT schema.function()`` as it would SQL.
        """
        self._open_extended = False
        known = self._function_names.get(oid)
        if known is not None:
            return self._decide_function_call(known, raw)
        if self._inflight:
            verdict = Verdict(Decision.BLOCK, "gateway/function-call", "a fast-path call must not be pipelined")
            return self._refuse(QUERY, "<FunctionCall>", verdict)
        self._held_call = raw
        self._inflight.append(Entry(QUERY, swallow=True, function_oid=oid))
        return [
            m.query_message(
                "SELECT n.nspname, p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n"
                f" ON n.oid = p.pronamespace WHERE p.oid = {int(oid)}"
            )
        ]

    def _function_row(self, entry: Entry, values: list[bytes | None]) -> None:
        if len(values) == 2 and values[0] is not None and values[1] is not None:
            self._function_names[entry.function_oid or 0] = (values[0].decode(), values[1].decode())

    def _release_function_call(self, oid: int) -> None:
        raw, self._held_call = self._held_call, None
        if raw is None:
            return
        known = self._function_names.get(oid)
        if known is None:
            verdict = Verdict(Decision.BLOCK, "gateway/function-call", f"no function has OID {oid}")
            self.out_upstream.extend(self._refuse(QUERY, "<FunctionCall>", verdict))
        else:
            instead = self._decide_function_call(known, raw)
            self.out_upstream.extend(instead if instead is not None else [raw])
        self._process_client()

    def _decide_function_call(self, name: tuple[str, str], raw: bytes) -> list[bytes] | None:
        schema, function = (part.replace('"', '""') for part in name)
        sql = f'SELECT "{schema}"."{function}"()'
        verdict = self._decide(sql)
        if verdict.decision is not Decision.ALLOW:
            # Review of a fast-path call is refused too: there is no statement to re-run.
            return self._refuse(QUERY, sql, verdict)
        self._inflight.append(Entry(FUNCTION, sql=sql, verdict=verdict, started=self._clock()))
        return None

    # -- blast radius of a parked statement ---------------------------------------------------

    def _explain(self, parked: Parked) -> list[bytes] | None:
        """`EXPLAIN (FORMAT JSON)` a parked UPDATE/DELETE/INSERT/MERGE, for the approvers.

        Only when it cannot disturb the client: a simple Query, the upstream idle and outside
        a transaction block (so the EXPLAIN is its own implicit transaction, and an error in
        it, or its locks, outlive nothing of the client's). EXPLAIN without ANALYZE plans the
        statement and does not run it.
        """
        if (
            parked.kind != QUERY
            or self._inflight
            or self._open_extended
            or self.txn_status != b"I"
            or parked.verdict.statement_count != 1
            or not _DML.match(parked.sql)
        ):
            return None
        self._inflight.append(Entry(QUERY, swallow=True, explain=[]))
        return [m.query_message("EXPLAIN (FORMAT JSON) " + parked.sql)]

    def _explained(self, rows: list[bytes]) -> None:
        parked, self._explaining = self._explaining, None
        self._held_call = None
        if parked is None:
            return
        parked.estimate = _plan_rows(rows)
        self.parked = parked

    # -- COPY TO STDOUT column probe ---------------------------------------------------------

    def _probe(self, copy: Any) -> list[bytes] | None:
        """Describe the COPY's rows without running it, to learn column names and types."""
        if self._inflight or self._open_extended:
            return None  # only safe when the upstream has nothing of the client's pending
        if copy.query:
            text = f"SELECT * FROM ({copy.query}) AS q LIMIT 0"
        elif copy.relation:
            text = f"SELECT * FROM {copy.relation} LIMIT 0"
        else:
            return None
        # Errors of the probe are dropped: the COPY itself fails the same way right after.
        self._inflight.extend(Entry(kind, swallow=True, probe=True) for kind in (PARSE, DESCRIBE_S, CLOSE, SYNC))
        return [
            m.parse_message(PROBE_STMT, text),
            m.describe_message("S", PROBE_STMT),
            m.close_message("S", PROBE_STMT),
            m.SYNC,
        ]

    def _on_copy_out(self, body: bytes, head: Entry) -> bytes | None:
        if self._masker is None:
            return None
        overall, formats = m.parse_copy_response(body)
        info = head.copy_info
        if info is None:
            raise ProtocolViolation("COPY TO STDOUT without a classified COPY statement")
        columns: list[Any]
        if info.columns:
            from broker.masking import ColumnInfo

            # Without a probe the types are unknown (OID 0): the masker treats them as opaque,
            # text shapes in text COPY and NULL in binary COPY, never text bytes in an int8.
            columns = [ColumnInfo(name, 0, overall) for name in info.columns]
        elif head.probe_columns is None:
            raise ProtocolViolation(
                "COPY TO STDOUT must be sent as its own statement when masking is on",
                sqlstate="0A000",
            )
        else:
            columns = column_info(head.probe_columns, (overall,))
        try:
            lineage = head.verdict.lineage if head.verdict is not None else None
            head.copy_plan = self._masker.plan_copy(columns, info, lineage)
        except MaskingError as exc:
            raise ResultRefused(f"COPY output cannot be masked safely: {exc}") from None
        return None

    def _resolve_probe(self, fields: list[m.FieldDescription]) -> None:
        for entry in self._inflight:
            if entry.awaiting_probe:
                entry.probe_columns = fields
                entry.awaiting_probe = False
                return
