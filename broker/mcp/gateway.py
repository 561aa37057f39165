"""The MCP server's side of the wire: sessions through the jitgate proxy, per resource.

Every statement an agent runs through MCP is a statement on a gateway session opened with
the agent's own gateway token, so the proxy's policy, masking, parking, recording and
dynamic credentials apply unchanged. Sessions are pooled per (resource, intent): the intent
is a start-up parameter (`options=-c jitgate.intent=...`), recorded on the session and with
every statement it runs.

Parking: the proxy announces a parked statement with a NoticeResponse `jitgate: awaiting
approval <id> ...` and keeps the session waiting. `query` returns as soon as that notice
arrives (`status: awaiting_approval` with the id); the statement keeps waiting on its
session in the background, and `approval_status(id)` returns its result once it finished
(approved and run, or refused with the reviewer's reason).

Secrets: gateway tokens and the API bearer are held in memory only; they are never logged
and never part of a tool's output.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pglast
import structlog
from prometheus_client import Counter

from broker.mcp.results import error_result, shape_rows
from broker.mcp.settings import McpSettings

log = structlog.get_logger("jitgate.mcp")

_AWAITING = re.compile(r"awaiting approval (\S+)")
_MAX_INTENT = 500
_names = itertools.count(1)
#: What the proxy's refusal says when it stopped waiting for a decision (proxy/approvals.py).
_STILL_PENDING = "is still pending after"
_MAX_PARKED = 200  # finished parked statements kept for approval_status, oldest dropped first
_METADATA_LIMITS = {"max_rows": 20_000, "max_bytes": 4 * 1024 * 1024}  # describe_schema's own caps

SCHEMA_SQL = (
    "select c.table_schema, c.table_name, c.column_name, c.data_type, c.is_nullable "
    "from information_schema.columns c "
    "where c.table_schema not in ('pg_catalog', 'information_schema') "
    "order by c.table_schema, c.table_name, c.ordinal_position"
)


# Served at /metrics by `jitgate mcp --http` (the MCP server's own process).
QUERIES = Counter("jitgate_mcp_queries_total", "MCP query tool calls by outcome", ["resource", "status"])
EGRESS_ROWS = Counter("jitgate_mcp_rows_returned_total", "Rows returned to agents by the MCP server", ["resource"])
EGRESS_BYTES = Counter(
    "jitgate_mcp_bytes_returned_total", "JSON bytes of rows returned to agents by the MCP server", ["resource"]
)
EGRESS_LIMITS = Counter("jitgate_mcp_egress_limit_total", "Statements cut or refused by an egress limit", ["limit"])


class ToolRefused(Exception):
    """A tool call that cannot be served as asked; the message says what to do instead."""


def intent_option(intent: str) -> str:
    """`-c jitgate.intent=...` with the value escaped for the proxy's options parser."""
    text = " ".join(intent.split())[:_MAX_INTENT]
    escaped = "".join(ch if ch.isalnum() else "\\" + ch for ch in text)
    return f"-c jitgate.intent={escaped}"


@dataclass
class Parked:
    approval_id: str
    resource: str
    sql: str
    intent: str | None
    notice: str
    task: asyncio.Task[dict[str, Any]]
    parked_at: float = field(default_factory=time.time)
    # The session it parked on, kept while the gateway stopped waiting but the approval is
    # still open: a re-run on the same session after the approval runs it (once).
    conn: asyncpg.Connection | None = None


@dataclass
class _Pool:
    idle: dict[str | None, list[asyncpg.Connection]] = field(default_factory=dict)
    open: int = 0


class GatewayClient:
    def __init__(
        self,
        settings: McpSettings,
        *,
        host: str,
        port: int,
        resources: dict[str, str],
        tokens: dict[str, str],
        default_token: str | None = None,
        api_bearer: str | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.resources = resources  # name -> description
        self._tokens = dict(tokens)
        self._default_token = default_token
        self._api_bearer = api_bearer
        self._pools: dict[str, _Pool] = {}
        self._parked: OrderedDict[str, Parked] = OrderedDict()
        self._waiters: dict[int, asyncio.Future[tuple[str, str]]] = {}
        self._lock = asyncio.Lock()
        self._conns: set[asyncpg.Connection] = set()
        self._access_requests: dict[str, str] = {}  # pending access request id -> resource
        self.egress_rows = 0  # rows and JSON bytes returned so far (the session egress limits)
        self.egress_bytes = 0

    # -- tools ---------------------------------------------------------------------------------

    def list_resources(self) -> dict[str, Any]:
        return {
            "resources": [
                {"name": name, "description": desc, "has_token": self._token(name) is not None}
                for name, desc in sorted(self.resources.items())
            ],
            "limits": {"max_rows": self.settings.max_rows, "max_bytes": self.settings.max_bytes},
        }

    async def query(
        self, resource: str, sql: str, intent: str | None = None, *, metadata: bool = False
    ) -> dict[str, Any]:
        """`metadata`: the server's own catalog read (describe_schema): its own, larger caps,
        not counted against the session's egress limits."""
        out = await self._query(resource, sql, intent, metadata=metadata)
        if not metadata:
            QUERIES.labels(resource if resource in self.resources else "<unknown>", str(out.get("status"))).inc()
        return out

    async def _query(self, resource: str, sql: str, intent: str | None, *, metadata: bool) -> dict[str, Any]:
        if not sql.strip():
            return {"status": "error", "message": "empty statement"}
        exhausted = None if metadata else self._egress_exhausted()
        if exhausted is not None:
            EGRESS_LIMITS.labels("session").inc()
            return exhausted
        intent = (intent or self.settings.intent or "").strip() or None
        try:
            conn = await self._acquire(resource, intent)
        except ToolRefused as exc:
            return {"status": "error", "message": str(exc)}
        except asyncpg.PostgresError as exc:
            return _connect_error(resource, exc)
        except (TimeoutError, OSError) as exc:
            return {
                "status": "error",
                "message": f"cannot reach the jitgate gateway at {self.host}:{self.port}: {type(exc).__name__}",
            }
        parked: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._waiters[id(conn)] = parked
        task = asyncio.create_task(self._run(conn, sql, resource, metadata=metadata))
        task.add_done_callback(lambda t: self._finished(t, resource, intent, conn))
        waiting: set[asyncio.Future[Any]] = {task, parked}
        done, _ = await asyncio.wait(waiting, timeout=self.settings.query_timeout_seconds,
                                     return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            if not parked.done():
                parked.cancel()
            return task.result()
        if parked in done:
            approval_id, notice = parked.result()
            self._remember(Parked(approval_id, resource, sql, intent, notice, task))
            return {
                "status": "awaiting_approval",
                "approval_id": approval_id,
                "message": notice,
                "next": f"call approval_status with approval_id {approval_id!r} to get the result once decided",
            }
        parked.cancel()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return {
            "status": "error",
            "message": f"the statement did not finish within {self.settings.query_timeout_seconds:g} s and was "
            "cancelled",
        }

    async def approval_status(self, approval_id: str) -> dict[str, Any]:
        parked = self._parked.get(approval_id)
        approval = await self._api_approval(approval_id)
        if approval_id in self._access_requests:
            return await self._access_status(approval_id, self._access_requests[approval_id], approval)
        if parked is not None and parked.conn is not None:
            late = await self._late(parked, approval)
            if late is not None:
                late["approval_id"] = approval_id
                late.update(resource=parked.resource, sql=parked.sql)
                if approval is not None:
                    late["approval"] = await self._api_approval(approval_id) or approval
                return late
        if parked is None and approval is None:
            return {
                "status": "unknown",
                "approval_id": approval_id,
                "message": "no statement of this MCP server is parked under that id"
                + ("" if self._api_bearer and self.settings.api_url else " (no broker API configured to ask)"),
            }
        out: dict[str, Any]
        if parked is None:
            out = {"status": (approval or {}).get("status", "unknown")}
        elif parked.task.done():
            out = _outcome(parked.task)
        else:
            out = {"status": "awaiting_approval", "message": parked.notice}
        out["approval_id"] = approval_id
        if parked is not None:
            out["resource"] = parked.resource
            out["sql"] = parked.sql
        if approval is not None:
            out["approval"] = approval
        return out

    async def describe_schema(self, resource: str) -> dict[str, Any]:
        result = await self.query(resource, SCHEMA_SQL, metadata=True)
        if result.get("status") != "ok":
            return result
        tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for schema, table, column, data_type, nullable in result["rows"]:
            tables.setdefault((schema, table), []).append(
                {"name": column, "type": data_type, "nullable": nullable == "YES"}
            )
        return {
            "status": "ok",
            "resource": resource,
            "tables": [{"schema": s, "table": t, "columns": cols} for (s, t), cols in tables.items()],
            "truncated": result["truncated"],
        }

    async def request_access(self, resource: str, role: str, reason: str, ttl: str | None) -> dict[str, Any]:
        if not self.settings.api_url or not self._api_bearer:
            return {
                "status": "error",
                "message": "request_access needs the broker API: set mcp.api_url and JITGATE_TOKEN (an OIDC or "
                f"workload token); or ask a person to run `jitgate connect {resource} --role {role} --reason ...`",
            }
        body: dict[str, Any] = {"resource": resource, "role": role, "reason": reason}
        if ttl:
            body["ttl"] = ttl
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                response = await client.post(
                    f"{self.settings.api_url.rstrip('/')}/v1/access-requests",
                    json=body,
                    headers={"Authorization": f"Bearer {self._api_bearer}"},
                )
        except httpx.HTTPError as exc:
            return {"status": "error", "message": f"broker API unreachable: {type(exc).__name__}"}
        data = _json(response)
        if response.status_code >= 400:
            return {"status": "error", "http_status": response.status_code, "message": _detail(data, response)}
        token = data.pop("token", None)
        data.pop("dsn", None)
        if token:
            # Granted: later queries on this resource use it; the agent never sees it.
            self._tokens[resource] = token
            await self._drop_pool(resource)
            data["message"] = f"granted: queries on {resource!r} now run with this grant"
        elif data.get("status") == "pending" and data.get("id"):
            self._access_requests[str(data["id"])] = resource
            data["message"] = (
                "waiting for approval by " + ", ".join(data.get("approvers") or ["an approver"])
                + f"; call approval_status with approval_id {data['id']!r}: once approved, the grant is collected "
                "and used by later queries"
            )
        return data

    async def _access_status(self, request_id: str, resource: str, approval: dict[str, Any] | None) -> dict[str, Any]:
        """An access request this server made: once approved, collect its token (once)."""
        state = (approval or {}).get("status")
        out: dict[str, Any] = {"approval_id": request_id, "kind": "access", "resource": resource}
        if approval is not None:
            out["approval"] = approval
        if state != "approved":
            out["status"] = "awaiting_approval" if state in (None, "pending") else state
            if state not in (None, "pending"):
                self._access_requests.pop(request_id, None)
            return out
        assert self.settings.api_url and self._api_bearer
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                response = await client.post(
                    f"{self.settings.api_url.rstrip('/')}/v1/access-requests/{request_id}/token",
                    headers={"Authorization": f"Bearer {self._api_bearer}"},
                )
        except httpx.HTTPError as exc:
            return {**out, "status": "error", "message": f"broker API unreachable: {type(exc).__name__}"}
        data = _json(response)
        token = data.pop("token", None)
        if response.status_code >= 400 or not token:
            return {**out, "status": "error", "message": _detail(data, response)}
        self._access_requests.pop(request_id, None)
        self._tokens[resource] = token
        await self._drop_pool(resource)
        return {**out, "status": "granted", "expires_at": data.get("expires_at"),
                "message": f"granted: queries on {resource!r} now run with this grant"}

    # -- sessions ------------------------------------------------------------------------------

    def _token(self, resource: str) -> str | None:
        return self._tokens.get(resource) or self._default_token

    async def _acquire(self, resource: str, intent: str | None) -> asyncpg.Connection:
        if resource not in self.resources:
            known = ", ".join(self.resources)
            raise ToolRefused(f"unknown resource {resource!r}; call list_resources (known: {known})")
        token = self._token(resource)
        if token is None:
            raise ToolRefused(
                f"no gateway token for {resource!r}: call request_access(resource={resource!r}, role=..., "
                "reason=...) or start the server with JITGATE_GATEWAY_TOKEN"
            )
        async with self._lock:
            pool = self._pools.setdefault(resource, _Pool())
            idle = pool.idle.get(intent) or []
            while idle:
                conn = idle.pop()
                if not conn.is_closed():
                    return conn
                self._conns.discard(conn)
                pool.open -= 1
            if pool.open >= self.settings.connections_per_resource:
                # An idle session with another intent makes room (its intent is not this one's).
                victim = next((c for conns in pool.idle.values() for c in conns), None)
                if victim is not None:
                    for conns in pool.idle.values():
                        if victim in conns:
                            conns.remove(victim)
                    self._conns.discard(victim)
                    pool.open -= 1
                    victim.terminate()
            if pool.open >= self.settings.connections_per_resource:
                raise ToolRefused(
                    f"all {pool.open} gateway sessions for {resource!r} are busy (statements awaiting approval?); "
                    "check approval_status or retry later"
                )
            pool.open += 1
        try:
            settings = {"application_name": "jitgate-mcp"}
            if intent:
                settings["options"] = intent_option(intent)
            conn = await asyncpg.connect(
                host=self.host,
                port=self.port,
                user=self.settings.user,
                password=token,
                database=resource,
                ssl=self.settings.sslmode,
                server_settings=settings,
                statement_cache_size=0,
                timeout=15,
            )
        except BaseException:
            pool.open -= 1
            raise
        conn.add_log_listener(self._on_notice)
        self._conns.add(conn)
        return conn

    def _release(self, resource: str, intent: str | None, conn: asyncpg.Connection) -> None:
        self._waiters.pop(id(conn), None)
        pool = self._pools.get(resource)
        if pool is None or conn.is_closed() or conn.is_in_transaction():
            # A session left inside a transaction is not handed to the next call: close it.
            if not conn.is_closed():
                conn.terminate()
            self._conns.discard(conn)
            if pool is not None:
                pool.open -= 1
            return
        pool.idle.setdefault(intent, []).append(conn)

    async def _drop_pool(self, resource: str) -> None:
        pool = self._pools.pop(resource, None)
        if pool is not None:
            for conns in pool.idle.values():
                for conn in conns:
                    self._conns.discard(conn)
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=5)

    def _on_notice(self, conn: Any, message: Any) -> None:
        text = getattr(message, "message", "") or ""
        match = _AWAITING.search(text)
        waiter = self._waiters.get(id(conn))
        if match and waiter is not None and not waiter.done():
            waiter.set_result((match.group(1), text))

    async def _run(
        self, conn: asyncpg.Connection, sql: str, resource: str, *, metadata: bool = False
    ) -> dict[str, Any]:
        limits = _METADATA_LIMITS if metadata else self._limits()
        try:
            if _statement_count(sql) > 1:
                # Several statements in one string: the simple protocol runs them (status only);
                # the extended protocol would refuse them only after the gateway judged them.
                status = await conn.execute(sql)
                return {"status": "ok", "command": status, "columns": [], "rows": [], "row_count": 0,
                        "truncated": False}
            # Named: an unnamed statement is parsed again when executed, and a parked
            # statement would then park a second time after its approval.
            stmt = await conn.prepare(sql, name=f"jitgate_mcp_{next(_names)}")
            records = await stmt.fetch()
            columns = [a.name for a in stmt.get_attributes()]
            out = shape_rows(columns, records, command=stmt.get_statusmsg(), **limits)
            return out if metadata else self._count_egress(out, limits, resource)
        except asyncpg.PostgresError as exc:
            return error_result(exc)
        except (asyncpg.InterfaceError, OSError) as exc:
            return {"status": "error", "message": f"gateway session failed: {type(exc).__name__}: {exc}"}

    def _limits(self) -> dict[str, int]:
        """This statement's row and byte caps: the per-query ones, lowered to what is left of
        the session's egress allowance."""
        rows, size = self.settings.max_rows, self.settings.max_bytes
        if self.settings.max_session_rows is not None:
            rows = max(0, min(rows, self.settings.max_session_rows - self.egress_rows))
        if self.settings.max_session_bytes is not None:
            size = max(0, min(size, self.settings.max_session_bytes - self.egress_bytes))
        return {"max_rows": rows, "max_bytes": size}

    def _count_egress(self, out: dict[str, Any], limits: dict[str, int], resource: str) -> dict[str, Any]:
        rows = out["rows"]
        size = sum(len(json.dumps(r, ensure_ascii=False, separators=(",", ":"))) for r in rows)
        self.egress_rows += len(rows)
        self.egress_bytes += size
        EGRESS_ROWS.labels(resource).inc(len(rows))
        EGRESS_BYTES.labels(resource).inc(size)
        per_query = (limits["max_rows"], limits["max_bytes"]) == (self.settings.max_rows, self.settings.max_bytes)
        if out["truncated"] and not per_query:
            out["egress_limit"] = True
            out["message"] = (
                f"egress limit of this MCP session reached: returned {len(rows)} of {out['row_count']} rows; "
                f"{self.egress_rows} rows / {self.egress_bytes} bytes returned in total"
            )
            log.warning("mcp_egress_limit", rows=self.egress_rows, bytes=self.egress_bytes)
            EGRESS_LIMITS.labels("session").inc()
        return out

    def _egress_exhausted(self) -> dict[str, Any] | None:
        rows_left, bytes_left = self._limits().values()
        if rows_left > 0 and bytes_left > 0:
            return None
        return {
            "status": "error",
            "egress_limit": True,
            "message": (
                f"egress limit of this MCP session reached ({self.egress_rows} rows, {self.egress_bytes} bytes "
                "returned; limits mcp.max_session_rows / mcp.max_session_bytes): no further statements run through "
                "this MCP server"
            ),
        }

    def _finished(self, task: asyncio.Task[dict[str, Any]], resource: str, intent: str | None,
                  conn: asyncpg.Connection) -> None:
        parked = next((p for p in reversed(self._parked.values()) if p.task is task), None)
        result = None if task.cancelled() or task.exception() is not None else task.result()
        if (
            parked is not None
            and result is not None
            and result.get("sqlstate") == "42501"
            and _STILL_PENDING in str(result.get("message", ""))
            and not conn.is_closed()
        ):
            self._waiters.pop(id(conn), None)
            parked.conn = conn  # pinned until the approval is decided (see approval_status)
            return
        if result is None and not conn.is_closed():
            conn.terminate()  # cancelled (timeout) or failed mid-protocol: not reusable
        self._release(resource, intent, conn)

    async def _late(self, parked: Parked, approval: dict[str, Any] | None) -> dict[str, Any] | None:
        """A parked statement the gateway stopped waiting for. Approved since (per the API):
        re-run it on its session, where the approval covers it. Decided otherwise: release the
        session and report. Unknown (no API) or still pending: still awaiting approval."""
        conn = parked.conn
        assert conn is not None
        state = (approval or {}).get("status")
        if state in (None, "pending"):
            note = "" if approval is not None else (
                " (the gateway stopped holding it; configure mcp.api_url and JITGATE_TOKEN so that approval_status "
                "can run it once approved)"
            )
            return {"status": "awaiting_approval", "message": f"approval still pending{note}"}
        parked.conn = None
        if state != "approved":
            self._release(parked.resource, parked.intent, conn)
            return None  # the stored refusal stands; the API's state says why
        rerun: asyncio.Task[dict[str, Any]] = asyncio.create_task(self._run(conn, parked.sql, parked.resource))
        try:
            result = await asyncio.wait_for(asyncio.shield(rerun), self.settings.query_timeout_seconds)
        except TimeoutError:
            rerun.cancel()
            result = {"status": "error", "message": "the approved statement did not finish in time"}
        finally:
            rerun.add_done_callback(lambda _t: self._release(parked.resource, parked.intent, conn))
        parked.task = rerun
        return dict(result)

    def _remember(self, parked: Parked) -> None:
        self._parked[parked.approval_id] = parked
        while len(self._parked) > _MAX_PARKED:
            oldest = next(iter(self._parked.values()))
            if not oldest.task.done():
                break
            self._parked.popitem(last=False)

    async def _api_approval(self, approval_id: str) -> dict[str, Any] | None:
        if not self.settings.api_url or not self._api_bearer:
            return None
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(
                    f"{self.settings.api_url.rstrip('/')}/v1/approvals/{approval_id}",
                    headers={"Authorization": f"Bearer {self._api_bearer}"},
                )
        except httpx.HTTPError as exc:
            log.warning("mcp_api_unreachable", error=type(exc).__name__)
            return None
        if response.status_code != 200:
            return None
        data = _json(response)
        keep = ("status", "kind", "resource", "rule", "reason", "decided_by", "decision_reason", "expires_at",
                "approver_groups", "scope")
        return {k: data[k] for k in keep if k in data}

    async def aclose(self) -> None:
        for parked in self._parked.values():
            if not parked.task.done():
                parked.task.cancel()
        for resource in list(self._pools):
            await self._drop_pool(resource)
        for conn in list(self._conns):  # busy or pinned sessions: their parked requests are withdrawn
            if not conn.is_closed():
                conn.terminate()
        self._conns.clear()


def _statement_count(sql: str) -> int:
    """How many statements `sql` holds; unparseable text counts as one (the gateway refuses it)."""
    try:
        return len(pglast.split(sql, with_parser=False))
    except Exception:
        return 1


def _outcome(task: asyncio.Task[dict[str, Any]]) -> dict[str, Any]:
    if task.cancelled():
        return {"status": "error", "message": "the statement was cancelled"}
    exc = task.exception()
    if exc is not None:
        return {"status": "error", "message": f"the statement failed in the MCP server: {type(exc).__name__}"}
    return dict(task.result())


def _connect_error(resource: str, exc: asyncpg.PostgresError) -> dict[str, Any]:
    out = error_result(exc)
    if out.get("sqlstate") == "28P01":
        out["hint"] = (
            f"the gateway token for {resource!r} was refused (expired or revoked): call request_access("
            f"resource={resource!r}, role=..., reason=...) for a new grant"
        )
    return out


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _detail(data: dict[str, Any], response: httpx.Response) -> str:
    detail = data.get("detail")
    if isinstance(detail, dict):
        return f"{detail.get('message')} ({detail.get('code')})"
    return str(detail or f"HTTP {response.status_code}")
