"""A local Slack Web API double: a real HTTP server that checks requests the way Slack does.

    with SlackDouble(users={"U1": "alice@example.com"}) as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.base_url)
        ...
        assert slack.count("chat.postMessage") == 1

It runs `http.server` in a thread on 127.0.0.1:<free port>, so sync and async tests share it
(async tests wait with `await slack.wait_for_async(...)`, never with the blocking `wait_for`).
Base URL: `http://127.0.0.1:PORT/api/`; slash-command and interaction response_urls go to
`slack.response_url()` and are recorded as method `response_url`.

What it checks, as Slack does: `Authorization: Bearer` equal to its bot token (its app token
for `apps.connections.open`), else `invalid_auth`; the OAuth scope Slack documents for each
method (`METHOD_SCOPES`) among the token's scopes, else `missing_scope` with `needed` and
`provided` (the bot token's scopes are the manifest's, `infra/slack/manifest.yaml`, unless a
test passes `scopes=`; `users.info` leaves out the email without `users:read.email`, as
Slack does); a form or JSON body (GET query strings
too); the required arguments of each method it knows; Block Kit structure (known block
types, text objects, length limits, at most 50 blocks in a message and 100 in a view, unique
block ids, unique action ids within a block, buttons with text and action_id). It answers
with realistic payloads (ts values, message objects, metadata when `include_all_metadata`),
keeps channel histories so `chat.update` and `conversations.history` see earlier posts, and
records every call (`calls`, `calls_to`, `count`).

Failure injection: `fail_next(method, status=429, retry_after=1, times=k)` (or status 500);
`drop_next(method)` processes the call, then closes the connection without an answer, the
way a response lost on the wire looks to a client; `delay_next(method, seconds=s)` processes
it after `s` seconds (past a client's timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

BOT_TOKEN = "xoxb-1111-2222-double"
APP_TOKEN = "xapp-1-A111-double"
BOT_USER_ID = "UBOTJITGATE"
TEAM_ID = "T0JITGATE"

BLOCK_TYPES = {"section", "header", "context", "actions", "divider", "input", "image", "rich_text", "video", "file"}
TEXT_TYPES = {"plain_text", "mrkdwn"}
ELEMENT_TYPES = {
    "button", "static_select", "external_select", "users_select", "conversations_select", "channels_select",
    "overflow", "datepicker", "timepicker", "checkboxes", "radio_buttons", "plain_text_input", "image",
    "multi_static_select", "multi_users_select", "email_text_input", "number_input", "url_text_input",
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "chat.postMessage": ("channel",),
    "chat.update": ("channel", "ts"),
    "chat.postEphemeral": ("channel", "user"),
    "views.open": ("trigger_id", "view"),
    "views.publish": ("user_id", "view"),
    "users.info": ("user",),
    "conversations.history": ("channel",),
}
JSON_ARGS = ("blocks", "attachments", "metadata", "view")

# The scope each Web API method requires of a bot token (None: any token of the app), from
# Slack's reference (docs.slack.dev/reference/methods/<method>, "Required scopes").
# conversations.history takes the scope of the conversation's type; the double's channels
# are public channels (a private one would need groups:history, a DM im:history).
METHOD_SCOPES: dict[str, str | None] = {
    "auth.test": None,
    "apps.connections.open": "connections:write",  # app-level token (xapp-)
    "chat.postMessage": "chat:write",
    "chat.update": "chat:write",
    "chat.postEphemeral": "chat:write",
    "conversations.history": "channels:history",
    "users.info": "users:read",
    "views.open": None,
    "views.publish": None,
}
# Fields Slack only returns with an extra scope: users.info's profile.email.
FIELD_SCOPES: dict[tuple[str, str], str] = {("users.info", "email"): "users:read.email"}
APP_TOKEN_SCOPES = ("connections:write",)
MANIFEST = Path(__file__).resolve().parent.parent / "infra" / "slack" / "manifest.yaml"


def manifest_bot_scopes(path: Path = MANIFEST) -> tuple[str, ...]:
    """The bot scopes `infra/slack/manifest.yaml` asks for: what an installed app's token holds."""
    manifest = yaml.safe_load(path.read_text())
    return tuple(manifest["oauth_config"]["scopes"]["bot"])


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        # A client that went away (a killed worker, a timed-out retry) is not a server error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@dataclass(frozen=True)
class Call:
    method: str
    args: dict[str, Any]
    headers: dict[str, str]


@dataclass
class _Failure:
    status: int
    times: int
    retry_after: int | None = None
    drop: bool = False
    delay: float = 0.0


@dataclass
class _State:
    calls: list[Call] = field(default_factory=list)
    channels: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # oldest first
    failures: dict[str, list[_Failure]] = field(default_factory=dict)
    views: dict[str, dict[str, Any]] = field(default_factory=dict)


class BlockError(ValueError):
    pass


# -- Block Kit validation -----------------------------------------------------------------

def _text(obj: Any, where: str, *, limit: int, plain_only: bool = False) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in TEXT_TYPES:
        raise BlockError(f"{where}: must be a text object")
    if plain_only and obj["type"] != "plain_text":
        raise BlockError(f"{where}: must be plain_text")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise BlockError(f"{where}: text must be a non-empty string")
    if len(text) > limit:
        raise BlockError(f"{where}: must be less than {limit + 1} characters")


def _element(element: Any, where: str) -> None:
    if not isinstance(element, dict) or element.get("type") not in ELEMENT_TYPES:
        raise BlockError(f"{where}: unknown element type {element.get('type') if isinstance(element, dict) else None}")
    if element["type"] == "image":
        return
    action_id = element.get("action_id")
    if element["type"] == "button":
        _text(element.get("text"), f"{where}.text", limit=75, plain_only=True)
        if not action_id:
            raise BlockError(f"{where}: a button needs an action_id")
        if element.get("style") not in (None, "primary", "danger"):
            raise BlockError(f"{where}.style: must be primary or danger")
        if len(str(element.get("value", ""))) > 2000:
            raise BlockError(f"{where}.value: must be less than 2001 characters")
    if action_id is not None and (not isinstance(action_id, str) or len(action_id) > 255):
        raise BlockError(f"{where}.action_id: must be a string of at most 255 characters")


def validate_blocks(blocks: Any, *, max_blocks: int = 50) -> None:
    if not isinstance(blocks, list):
        raise BlockError("blocks: must be an array")
    if len(blocks) > max_blocks:
        raise BlockError(f"blocks: must have at most {max_blocks} items")
    block_ids: set[str] = set()
    for i, block in enumerate(blocks):
        where = f"blocks[{i}]"
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            raise BlockError(f"{where}: unknown block type")
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or len(block_id) > 255:
                raise BlockError(f"{where}.block_id: must be a string of at most 255 characters")
            if block_id in block_ids:
                raise BlockError(f"{where}.block_id: duplicate block_id {block_id}")
            block_ids.add(block_id)
        kind = block["type"]
        if kind == "section":
            if "text" not in block and "fields" not in block:
                raise BlockError(f"{where}: a section needs text or fields")
            if "text" in block:
                _text(block["text"], f"{where}.text", limit=3000)
            fields = block.get("fields", [])
            if len(fields) > 10:
                raise BlockError(f"{where}.fields: at most 10 items")
            for j, f in enumerate(fields):
                _text(f, f"{where}.fields[{j}]", limit=2000)
            if "accessory" in block:
                _element(block["accessory"], f"{where}.accessory")
        elif kind == "header":
            _text(block.get("text"), f"{where}.text", limit=150, plain_only=True)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
                raise BlockError(f"{where}.elements: 1 to 10 items")
            for j, e in enumerate(elements):
                if e.get("type") != "image":
                    _text(e, f"{where}.elements[{j}]", limit=3000)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                raise BlockError(f"{where}.elements: 1 to 25 items")
            action_ids: set[str] = set()
            for j, e in enumerate(elements):
                _element(e, f"{where}.elements[{j}]")
                if e.get("action_id") in action_ids:
                    raise BlockError(f"{where}.elements[{j}].action_id: duplicate action_id {e['action_id']}")
                if e.get("action_id"):
                    action_ids.add(e["action_id"])
        elif kind == "input":
            _text(block.get("label"), f"{where}.label", limit=2000, plain_only=True)
            _element(block.get("element"), f"{where}.element")


def validate_view(view: Any) -> None:
    if not isinstance(view, dict) or view.get("type") not in ("modal", "home"):
        raise BlockError("view.type: must be modal or home")
    validate_blocks(view.get("blocks"), max_blocks=100)
    if view["type"] == "modal":
        _text(view.get("title"), "view.title", limit=24, plain_only=True)
        for key in ("submit", "close"):
            if key in view:
                _text(view[key], f"view.{key}", limit=24, plain_only=True)
        if any(b.get("type") == "input" for b in view["blocks"]) and "submit" not in view:
            raise BlockError("view.submit: required when the view has input blocks")
    if len(str(view.get("private_metadata", ""))) > 3000:
        raise BlockError("view.private_metadata: must be less than 3001 characters")


# -- the server ---------------------------------------------------------------------------

class SlackDouble:
    def __init__(
        self, *, bot_token: str = BOT_TOKEN, app_token: str = APP_TOKEN,
        users: dict[str, str | None] | None = None, channels: tuple[str, ...] = ("C_APPROVALS", "C_ESCALATE"),
        scopes: Iterable[str] | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.scopes = frozenset(manifest_bot_scopes() if scopes is None else scopes)  # the bot token's
        self.users = dict(users or {})  # Slack user id -> email (None: a profile without one)
        self._lock = threading.Lock()
        self._state = _State(channels={c: [] for c in channels})
        self._ts = itertools.count(1)
        self.socket_url: str | None = None  # what apps.connections.open answers; default: a dead end
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def __enter__(self) -> SlackDouble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        double = self

        class Handler(_Handler):
            pass

        Handler.double = double
        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="slack-double", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the double is not started"
        return int(self._server.server_address[1])

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/api/"

    def response_url(self, key: str = "cmd") -> str:
        return f"{self.root}/respond/{key}"

    # assertions
    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._state.calls)

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def count(self, method: str) -> int:
        return len(self.calls_to(method))

    def last(self, method: str) -> Call:
        calls = self.calls_to(method)
        assert calls, f"no call to {method}; calls: {[c.method for c in self.calls]}"
        return calls[-1]

    def add_message(self, channel: str, text: str, *, metadata: dict[str, Any] | None = None) -> str:
        """Seed the channel with a message (someone else's, or an earlier post); returns its ts."""
        with self._lock:
            message: dict[str, Any] = {"type": "message", "ts": self._next_ts(), "user": "U_SOMEONE", "text": text}
            if metadata is not None:
                message["metadata"] = metadata
            self._state.channels.setdefault(channel, []).append(message)
            return str(message["ts"])

    def messages(self, channel: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._state.channels.get(channel, [])]

    def prompts_for(self, approval_id: str, channel: str = "C_APPROVALS") -> list[dict[str, Any]]:
        """The messages in `channel` whose metadata names `approval_id` (jitgate's prompts)."""
        return [
            m for m in self.messages(channel)
            if ((m.get("metadata") or {}).get("event_payload") or {}).get("approval_id") == approval_id
        ]

    def wait_for(self, method: str, count: int = 1, timeout: float = 5.0) -> list[Call]:
        """Block until `method` was called `count` times (sync tests only)."""
        deadline = time.monotonic() + timeout
        while self.count(method) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} called {self.count(method)} times, expected {count}")
            time.sleep(0.01)
        return self.calls_to(method)

    async def wait_for_async(self, method: str, count: int = 1, within: float = 5.0) -> list[Call]:
        deadline = time.monotonic() + within
        while self.count(method) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{method} called {self.count(method)} times, expected {count}; "
                    f"calls: {[c.method for c in self.calls]}"
                )
            await asyncio.sleep(0.01)
        return self.calls_to(method)

    # failure injection
    def fail_next(self, method: str, *, status: int = 429, retry_after: int | None = 1, times: int = 1) -> None:
        with self._lock:
            self._state.failures.setdefault(method, []).append(
                _Failure(status, times, retry_after if status == 429 else None)
            )

    def drop_next(self, method: str, *, times: int = 1) -> None:
        with self._lock:
            self._state.failures.setdefault(method, []).append(_Failure(0, times, drop=True))

    def delay_next(self, method: str, *, seconds: float, times: int = 1) -> None:
        """Process the call after `seconds` (a slow Slack: the client may time out first)."""
        with self._lock:
            self._state.failures.setdefault(method, []).append(_Failure(0, times, delay=seconds))

    def _take_failure(self, method: str) -> _Failure | None:
        with self._lock:
            queue = self._state.failures.get(method) or []
            if not queue:
                return None
            failure = queue[0]
            failure.times -= 1
            if failure.times <= 0:
                queue.pop(0)
            return failure

    # the API
    def _next_ts(self) -> str:
        return f"{time.time():.0f}.{next(self._ts):06d}"

    def handle(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self._state.calls.append(Call(method, args, headers))
        auth = headers.get("authorization", "")
        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if auth != f"Bearer {expected}":
            return 200, {"ok": False, "error": "not_authed" if not auth else "invalid_auth"}
        if method not in METHOD_SCOPES:
            return 404, {"ok": False, "error": "unknown_method"}
        granted = APP_TOKEN_SCOPES if method == "apps.connections.open" else sorted(self.scopes)
        needed = METHOD_SCOPES[method]
        if needed is not None and needed not in granted:
            return 200, {"ok": False, "error": "missing_scope", "needed": needed, "provided": ",".join(granted)}
        missing = [name for name in REQUIRED.get(method, ()) if args.get(name) in (None, "")]
        if missing:
            return 200, {"ok": False, "error": f"missing_argument:{missing[0]}" if method != "chat.postMessage"
                         else "channel_not_found"}
        try:
            for key in JSON_ARGS:
                if isinstance(args.get(key), str):
                    args[key] = json.loads(args[key])
            if "blocks" in args:
                validate_blocks(args["blocks"])
            if "view" in args:
                validate_view(args["view"])
        except (BlockError, ValueError) as exc:
            return 200, {"ok": False, "error": "invalid_blocks" if "view" not in args else "invalid_arguments",
                         "errors": [str(exc)]}
        answer = getattr(self, "_api_" + method.replace(".", "_"), None)
        if answer is None:
            return 404, {"ok": False, "error": "unknown_method"}
        with self._lock:
            return 200, answer(args)

    def handle_response_url(self, key: str, body: dict[str, Any], headers: dict[str, str]) -> str | None:
        """A POST to a response_url: recorded as method `response_url`; an error string if refused."""
        with self._lock:
            self._state.calls.append(Call("response_url", {"key": key, **body}, headers))
        try:
            if "blocks" in body:
                validate_blocks(body["blocks"])
        except BlockError as exc:
            return f"invalid_blocks: {exc}"
        if not body.get("text") and not body.get("blocks"):
            return "no_text"
        return None

    def _known_channel(self, channel: str) -> bool:
        return channel in self._state.channels or channel in self.users

    def _api_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://jitgate-test.slack.com/", "team": "jitgate test", "user": "jitgate",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": "BJITGATE", "is_enterprise_install": False}

    def _api_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.socket_url or f"ws://127.0.0.1:{self.port}/link/?ticket=double"}

    def _api_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args["channel"])
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if not self._known_channel(channel):
            return {"ok": False, "error": "channel_not_found"}
        metadata = args.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or "event_type" not in metadata
                                     or not isinstance(metadata.get("event_payload"), dict)):
            return {"ok": False, "error": "invalid_metadata_format"}
        message: dict[str, Any] = {
            "type": "message", "ts": self._next_ts(), "user": BOT_USER_ID, "bot_id": "BJITGATE",
            "text": args.get("text", ""), "blocks": args.get("blocks", []), "team": TEAM_ID,
        }
        if metadata is not None:
            message["metadata"] = metadata
        if args.get("thread_ts"):
            message["thread_ts"] = str(args["thread_ts"])
        self._state.channels.setdefault(channel, []).append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": _public(message, True)}

    def _api_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(args["channel"]), str(args["ts"])
        for message in self._state.channels.get(channel, []):
            if message["ts"] == ts:
                if "text" in args:
                    message["text"] = args["text"]
                if "blocks" in args:
                    message["blocks"] = args["blocks"]
                message["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
                return {"ok": True, "channel": channel, "ts": ts, "text": message["text"],
                        "message": _public(message, True)}
        return {"ok": False, "error": "message_not_found" if self._known_channel(channel) else "channel_not_found"}

    def _api_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        if str(args["user"]) not in self.users:
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _api_conversations_history(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = str(args["channel"])
        if channel not in self._state.channels:
            return {"ok": False, "error": "channel_not_found"}
        oldest = float(args.get("oldest") or 0)
        latest = float(args.get("latest") or time.time() + 3600)
        limit = min(int(args.get("limit") or 100), 999)
        offset = int(args.get("cursor") or 0)
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        newest_first = [
            m for m in reversed(self._state.channels[channel])
            if oldest < float(m["ts"]) <= latest and "thread_ts" not in m
        ]
        page = newest_first[offset: offset + limit]
        more = offset + limit < len(newest_first)
        return {"ok": True, "messages": [_public(m, with_metadata) for m in page], "has_more": more,
                "pin_count": 0, "response_metadata": {"next_cursor": str(offset + limit) if more else ""}}

    def _api_users_info(self, args: dict[str, Any]) -> dict[str, Any]:
        user_id = str(args["user"])
        if user_id not in self.users:
            return {"ok": False, "error": "user_not_found"}
        profile: dict[str, Any] = {"real_name": user_id.lower(), "display_name": user_id.lower()}
        if self.users[user_id] and FIELD_SCOPES[("users.info", "email")] in self.scopes:
            profile["email"] = self.users[user_id]
        return {"ok": True, "user": {"id": user_id, "team_id": TEAM_ID, "name": user_id.lower(), "deleted": False,
                                     "is_bot": False, "profile": profile}}

    def _api_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        view = dict(args["view"])
        if view.get("type") != "modal":
            return {"ok": False, "error": "invalid_arguments"}
        view_id = f"V{next(self._ts):08d}"
        view.update(id=view_id, team_id=TEAM_ID, state={"values": {}}, hash=f"{time.time():.0f}.x")
        self._state.views[view_id] = view
        return {"ok": True, "view": view}

    def _api_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = dict(args["view"])
        if view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if str(args["user_id"]) not in self.users:
            return {"ok": False, "error": "user_not_found"}
        view.update(id=f"VH{args['user_id']}", team_id=TEAM_ID)
        self._state.views[view["id"]] = view
        return {"ok": True, "view": view}


def _public(message: dict[str, Any], with_metadata: bool) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if k != "metadata"}
    if with_metadata and "metadata" in message:
        out["metadata"] = message["metadata"]
    return out


class _Handler(BaseHTTPRequestHandler):
    double: SlackDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        if url.path.startswith("/respond/"):
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                self._answer(400, {"ok": False, "error": "invalid_json"})
                return
            error = self.double.handle_response_url(url.path.rsplit("/", 1)[-1], body, headers)
            self._answer(400 if error else 200, {"ok": False, "error": error} if error else {"ok": True})
            return
        if not url.path.startswith("/api/"):
            self._answer(404, {"ok": False, "error": "unknown_method"})
            return
        method = url.path[len("/api/"):]
        args: dict[str, Any] = {k: v[-1] for k, v in parse_qs(url.query).items()}
        ctype = headers.get("content-type", "").split(";")[0].strip()
        if raw:
            if ctype == "application/json":
                try:
                    args.update(json.loads(raw))
                except ValueError:
                    self._answer(200, {"ok": False, "error": "invalid_json"})
                    return
            elif ctype == "application/x-www-form-urlencoded":
                args.update({k: v[-1] for k, v in parse_qs(raw.decode()).items()})
            else:
                self._answer(200, {"ok": False, "error": "invalid_form_data"})
                return
        failure = self.double._take_failure(method)
        if failure is not None and failure.delay:
            time.sleep(failure.delay)
            failure = None
        if failure is not None and not failure.drop:
            with self.double._lock:
                self.double._state.calls.append(Call(method, args, headers))
            if failure.status == 429:
                self._answer(429, {"ok": False, "error": "ratelimited"},
                             extra={"Retry-After": str(1 if failure.retry_after is None else failure.retry_after)})
            else:
                self._answer(failure.status, {"ok": False, "error": "fatal_error"})
            return
        status, body = self.double.handle(method, args, headers)
        if failure is not None and failure.drop:
            # Processed, but the answer is lost: the client sees the connection close.
            self.close_connection = True
            return
        self._answer(status, body)

    def _answer(self, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

