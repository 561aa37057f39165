"""What the client must not learn from the server's own words, and the settings it must not
change: ParameterStatus, ErrorResponse/NoticeResponse text, notification payloads, and the
masking plan of COPY TO output. Used by proxy.machine; pure.
"""

from __future__ import annotations

from typing import Any

from broker.masking import MaskingError
from broker.metrics import DESYNCS
from broker.policy.facts import PINNED_LEXER_VALUES
from proxy.exceptions import ResultRefused, SessionDesync
from proxy.inflight import Entry
from proxy.protocol import codes as c
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation
from proxy.records import MaskerLike, column_info

#: Settings that change where a string literal ends or how bytes are decoded, and the only
#: value the gateway's lexer and masker work with (broker.policy.facts pins them). These two
#: are GUC_REPORT settings, so the server announces any change: a change means the policy was
#: bypassed somewhere, and the session ends. (backslash_quote is not reported; the start-up
#: packet and the policy are all that hold it.) The report comes at ReadyForQuery, after the
#: statement: this is defence in depth, not the gate.
PINNED = {name: PINNED_LEXER_VALUES[name] for name in ("standard_conforming_strings", "client_encoding")}


def encoding_name(value: str) -> str:
    """`utf-8`, `Utf8`, `UTF_8` -> `UTF8` (PostgreSQL accepts all of them)."""
    return value.upper().replace("-", "").replace("_", "")


def pinned_violation(name: str, value: str) -> str | None:
    """Why `name` = `value` is not allowed on a session through the gateway, or None."""
    want = PINNED.get(name)
    if want is None:
        return None
    ok = encoding_name(value) == want if name == "client_encoding" else value.lower() == want
    if ok:
        return None
    return f"the server reported {name} = {value}; the gateway works only with {name} = {want}"


class ServerMessages:
    def __init__(self, *, masker: MaskerLike | None, client_user: str, upstream_user: str) -> None:
        self._masker = masker
        self._client_user = client_user
        self._upstream_user = upstream_user

    def use_masker(self, masker: MaskerLike | None) -> None:
        """Mask with `masker` from now on (a reload changed the resource's masking)."""
        self._masker = masker

    def asynchronous(self, kind: int, body: bytes, head: Entry | None) -> bytes | None:
        """A NoticeResponse, NotificationResponse or ParameterStatus, whatever it arrives with."""
        if kind == c.PARAMETER_STATUS:
            return self.parameter_status(body)
        if kind == c.NOTICE_RESPONSE:
            return self.scrub(kind, body, head.sql if head is not None else "")
        if self._masker is not None:  # NotificationResponse
            return self.notification(body)
        return None

    def parameter_status(self, body: bytes) -> bytes | None:
        name, value = m.parse_parameter_status(body)
        violation = pinned_violation(name, value)
        if violation is not None:
            DESYNCS.inc()
            raise SessionDesync(violation)
        if name == "session_authorization":
            return m.parameter_status(name, self._client_user)
        return None

    def scrub(self, kind: int, body: bytes, statement: str = "") -> bytes | None:
        """Errors and notices must not name the upstream role the gateway logged in as, nor
        show the data they quote (``invalid input syntax for type integer: "<an SSN>"``,
        ``Failing row contains (...)``) when the resource masks results."""
        user = self._upstream_user.encode()
        named = bool(user) and user in body
        if not named and self._masker is None:
            return None
        fields = m.parse_fields(body)
        if named:
            fields = [(code, v.replace(self._upstream_user, self._client_user)) for code, v in fields]
        if self._masker is not None:
            masked = self._masker.mask_message(fields, statement)
            if masked is None and not named:
                return None
            fields = masked if masked is not None else fields
        return m.build_fields(bytes([kind]), fields)

    def notification(self, body: bytes) -> bytes | None:
        """A NotificationResponse's payload, through the content detectors."""
        assert self._masker is not None
        pid = body[:4]
        channel_end = body.index(b"\0", 4)
        payload = body[channel_end + 1 : -1].decode("utf-8", "surrogateescape")
        masked = self._masker.mask_payload(payload)
        if masked == payload:
            return None
        return m.frame(b"A", pid + body[4 : channel_end + 1] + masked.encode("utf-8", "surrogateescape") + b"\0")

    def copy_plan(self, body: bytes, head: Entry) -> Any:
        """The masking plan of a COPY TO's CopyData, from its CopyOutResponse."""
        if self._masker is None:
            return None
        overall, _formats = m.parse_copy_response(body)
        verdict = head.verdict
        info = verdict.copy if verdict is not None else None
        if info is None:
            raise ProtocolViolation("COPY TO STDOUT without a classified COPY statement")
        columns: list[Any]
        if info.columns:
            from broker.masking import ColumnInfo

            # Without a lookup the types are unknown (OID 0): the masker treats them as
            # opaque, text shapes in text COPY and NULL in binary COPY.
            columns = [ColumnInfo(name, 0, overall) for name in info.columns]
        elif head.copy_columns is None:
            raise ProtocolViolation(
                "COPY TO STDOUT must be sent as its own statement when masking is on",
                sqlstate="0A000",
            )
        else:
            columns = column_info(head.copy_columns, (overall,))
        try:
            return self._masker.plan_copy(columns, info, verdict.lineage if verdict is not None else None)
        except MaskingError as exc:
            raise ResultRefused(f"COPY output cannot be masked safely: {exc}") from None
