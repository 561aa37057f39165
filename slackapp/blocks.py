"""Block Kit for approvals: pure functions from an `Approval` to Slack JSON, no I/O.

A prompt has two faces. Pending: what is asked, by whom, on what, the rule and risk that fired,
the blast radius, expiry and quorum progress, then the buttons. Decided: the same facts with
the outcome (who, when, why) in place of the buttons, so `chat.update` turns one into the other
in place.

Everything that came from a requester (SQL, reasons, names) is escaped for mrkdwn (`&`, `<`,
`>`), so an agent cannot inject a mention, a link or a `<!channel>` into an approver's screen;
triple backticks inside SQL are broken up so the text cannot close its code block and pose as
the prompt's own formatting. Slack's limits are applied here, not left to Slack's
`invalid_blocks`: 3,000 characters per section text, 2,000 per field, 150 per header, 50
blocks per message, 100 per view.

Buttons carry the approval id as their value; action ids are the `ACTION_*` constants below,
which `slackapp.app` registers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from broker.approvals.model import Approval, Scope, Status

ACTION_APPROVE = "jitgate_approve"
ACTION_APPROVE_SESSION = "jitgate_approve_session"
ACTION_DENY = "jitgate_deny"
DENY_MODAL = "jitgate_deny_modal"
DENY_REASON_BLOCK = "reason"
DENY_REASON_ACTION = "reason_input"

SECTION_TEXT_MAX = 3000
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
BUTTON_TEXT_MAX = 75
MESSAGE_BLOCKS_MAX = 50
VIEW_BLOCKS_MAX = 100
FALLBACK_TEXT_MAX = 3000  # Slack truncates longer notification text; keep it short anyway
SQL_SHOWN_MAX = 2500

Block = dict[str, Any]


# -- text helpers -------------------------------------------------------------------------

def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_truncated(text: str, limit: int) -> tuple[str, bool]:
    """Escape `text`, cutting it so the *escaped* result fits in `limit` characters."""
    out: list[str] = []
    size = 0
    for ch in text:
        piece = escape(ch)
        if size + len(piece) > limit:
            return "".join(out), True
        out.append(piece)
        size += len(piece)
    return "".join(out), False


def _clip(text: str, limit: int) -> str:
    """Cut already-formatted text to `limit`, marking the cut; never splits an entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _code(text: str, limit: int) -> tuple[str, bool]:
    """A ``` block with `text` inside; backtick runs broken so the block cannot be closed early."""
    body, truncated = _escape_truncated(text.replace("```", "`\u200b`\u200b`"), limit)
    return f"```{body}```", truncated


def who(principal: str) -> str:
    """A principal as people read it: `person:a@b.c` → `a@b.c`, `agent:ci` → `agent ci`."""
    kind, sep, name = principal.partition(":")
    if not sep:
        return principal
    return name if kind == "person" else f"{kind} {name}"


def requester_text(approval: Approval) -> str:
    if approval.owner and approval.owner != approval.requester:
        return f"{who(approval.requester)} acting for {who(approval.owner)}"
    return who(approval.requester)


def slack_date(moment: datetime) -> str:
    """Slack date formatting: the reader's time zone, with a UTC fallback for old clients."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    fallback = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _duration(seconds: Any) -> str | None:
    try:
        total = int(seconds)
    except (TypeError, ValueError):
        return None
    if total <= 0:
        return None
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else "", f"{secs} s" if secs else ""]
    return " ".join(p for p in parts if p)


def _plain(text: str, limit: int) -> Block:
    return {"type": "plain_text", "text": text if len(text) <= limit else text[: limit - 1] + "…", "emoji": True}


def _mrkdwn(text: str, limit: int = SECTION_TEXT_MAX) -> Block:
    return {"type": "mrkdwn", "text": _clip(text, limit)}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text)}


def _context(*texts: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(t) for t in texts if t][:10]}


# -- the prompt ---------------------------------------------------------------------------

def title(approval: Approval) -> str:
    if approval.kind == "access":
        return f"Access request: {approval.role or 'a role'} on {approval.resource}"
    # The leading keyword, when the text starts with one; a leading comment is the agent's words, not a verb.
    match = re.match(r"\s*([A-Za-z]+)\b", approval.sql or "")
    verb = match.group(1).upper()[:20] if match else "statement"
    return f"Review: {verb} on {approval.resource}"


def fallback_text(approval: Approval) -> str:
    """The notification text (push, screen readers, clients without Block Kit): plain facts."""
    state = "" if approval.status is Status.PENDING else f" [{approval.status.value}]"
    text = f"{title(approval)} by {requester_text(approval)}{state}"
    if approval.kind == "statement" and approval.risk:
        text += f": {approval.risk[:200]}"
    return _clip(escape(text), FALLBACK_TEXT_MAX)


def quorum_text(approval: Approval) -> str:
    names = ", ".join(escape(who(v.voter)) for v in approval.approvals)
    progress = f"{len(approval.approvals)} of {approval.quorum} approvals"
    return f"{progress} ({names})" if names else progress


def _facts(approval: Approval) -> list[Block]:
    fields = [
        _mrkdwn(f"*Requester*\n{escape(requester_text(approval))}", FIELD_TEXT_MAX),
        _mrkdwn(f"*Resource*\n{escape(approval.resource)}", FIELD_TEXT_MAX),
    ]
    if approval.kind == "access":
        fields.append(_mrkdwn(f"*Role*\n{escape(approval.role or '-')}", FIELD_TEXT_MAX))
        ttl = _duration(approval.details.get("ttl_seconds"))
        if ttl:
            fields.append(_mrkdwn(f"*Duration*\n{ttl}", FIELD_TEXT_MAX))
    return [{"type": "section", "fields": fields}]


def _statement(approval: Approval, console_url: str | None) -> list[Block]:
    blocks: list[Block] = []
    code, truncated = _code(approval.sql or "", SQL_SHOWN_MAX)
    if truncated:
        note = f"\n_Statement truncated ({len(approval.sql or ''):,} characters)"
        note += f": <{console_url}/approvals/{quote(approval.id, safe='')}|full statement>_" if console_url else "._"
        code += note
    blocks.append(_section(code))
    risk: list[str] = []
    # Each part is clipped on its own so a long risk text cannot push the blast radius out.
    if approval.rule:
        risk.append(f"*Rule* `{_clip(escape(approval.rule).replace('`', ''), 200)}`")
    if approval.risk:
        risk.append(f"*Risk* {_clip(escape(approval.risk), 1500)}")
    radius = _blast_radius(approval.details)
    if radius:
        risk.append(f"*Blast radius* {radius}")
    if risk:
        blocks.append(_section("\n".join(risk)))
    return blocks


def _blast_radius(details: dict[str, Any]) -> str | None:
    parts: list[str] = []
    tables = details.get("tables")
    if isinstance(tables, list | tuple) and tables:
        shown = ", ".join(escape(str(t)) for t in tables[:20])
        more = f" and {len(tables) - 20} more" if len(tables) > 20 else ""
        parts.append(f"tables {shown}{more}")
    measured = details.get("blast_radius")
    estimate = details.get("row_estimate")
    if isinstance(measured, str) and measured:
        # The gateway's count from the write's rehearsal ("would change 406 of 406 rows of
        # orders"), or the planner's estimate marked as such when it could not rehearse.
        parts.append(_clip(escape(measured), 500))
    elif isinstance(estimate, int | float) and not isinstance(estimate, bool):
        parts.append(f"~{int(estimate):,} rows (planner estimate)")
    return " · ".join(parts) or None


def _reason(approval: Approval) -> list[Block]:
    """The requester's stated reason (access) or intent (statement). A statement's client
    program (`application_name`) is shown labelled as what it is, never as the intent."""
    if approval.kind == "access":
        return [_section(f"*Reason*\n{escape(approval.reason)}")] if approval.reason else []
    text = f"*Intent*\n{escape(approval.reason)}" if approval.reason else "*Intent*\n_no reason given_"
    app = approval.details.get("application_name")
    if isinstance(app, str) and app:
        text += f"\n*application_name* (the client program): {_clip(escape(app), 200)}"
    return [_section(text)]


def action_buttons(approval: Approval, *, block_id: str = "jitgate_actions") -> Block:
    buttons: list[Block] = [
        {
            "type": "button", "action_id": ACTION_APPROVE, "style": "primary", "value": approval.id,
            "text": _plain("Approve", BUTTON_TEXT_MAX),
        },
    ]
    if approval.kind == "statement" and Scope.SESSION in approval.scopes:
        buttons.append({
            "type": "button", "action_id": ACTION_APPROVE_SESSION, "value": approval.id,
            "text": _plain("Approve for this session", BUTTON_TEXT_MAX),
        })
    buttons.append({
        "type": "button", "action_id": ACTION_DENY, "style": "danger", "value": approval.id,
        "text": _plain("Deny", BUTTON_TEXT_MAX),
    })
    return {"type": "actions", "block_id": block_id, "elements": buttons}


def outcome_text(approval: Approval) -> str:
    """One mrkdwn line saying how a decided request ended (or its quorum progress)."""
    when = slack_date(approval.decided_at) if approval.decided_at else None
    at = f" at {when}" if when else ""
    if approval.status is Status.APPROVED:
        names = ", ".join(escape(who(p)) for p in approval.decided_by)
        scope = " for this session" if approval.scope is Scope.SESSION else ""
        if approval.scope is Scope.FINGERPRINT:
            scope = " for statements of this shape"
        glass = " (break-glass)" if any(v.break_glass for v in approval.approvals) else ""
        text = f":white_check_mark: *Approved{scope}* by {names}{at}{glass}"
        if approval.decision_reason:
            text += f": {escape(approval.decision_reason)}"
        return text
    if approval.status is Status.DENIED:
        names = ", ".join(escape(who(p)) for p in approval.decided_by) or "an approver"
        reason = f": {escape(approval.decision_reason)}" if approval.decision_reason else ""
        return f":no_entry: *Denied* by {names}{at}{reason}"
    if approval.status is Status.EXPIRED:
        reason = f" ({escape(approval.decision_reason)})" if approval.decision_reason else ""
        return f":hourglass: *Expired*{at}{reason}"
    if approval.status is Status.CANCELLED:
        reason = f": {escape(approval.decision_reason)}" if approval.decision_reason else ""
        return f":heavy_multiplication_x: *Cancelled*{at}{reason}"
    return f"Pending · {quorum_text(approval)}"


def prompt_blocks(approval: Approval, *, console_url: str | None = None) -> list[Block]:
    """The message for `approval`: with buttons while pending, with the outcome once decided."""
    blocks: list[Block] = [{"type": "header", "text": _plain(title(approval), HEADER_TEXT_MAX)}]
    blocks += _facts(approval)
    if approval.kind == "statement":
        blocks += _statement(approval, console_url)
    blocks += _reason(approval)
    if approval.status is Status.PENDING:
        blocks.append(_context(
            f"Expires {slack_date(approval.expires_at)}",
            quorum_text(approval),
            f"id `{escape(approval.id)}`",
        ))
        blocks.append(action_buttons(approval))
    else:
        blocks.append(_section(outcome_text(approval)))
        blocks.append(_context(f"id `{escape(approval.id)}`"))
    return blocks[:MESSAGE_BLOCKS_MAX]


def reminder_text(approval: Approval) -> str:
    """A nudge in the prompt's thread: who is still expected, and until when."""
    groups = ", ".join(escape(g) for g in approval.approver_groups) or "an approver"
    return (
        f":bell: Still waiting for {groups}: {quorum_text(approval)}; "
        f"expires {slack_date(approval.expires_at)}. Request `{escape(approval.id)}`."
    )


def break_glass_text(approval: Approval) -> str:
    """The page to the approvers' channel when a requester approved their own request."""
    glass = next((v for v in approval.votes if v.break_glass), None)
    voter = escape(glass.voter) if glass else "the requester"
    reason = escape(glass.reason or "") if glass else ""
    return (
        f"<!channel> Break-glass: {voter} approved their own request {escape(approval.id)} "
        f"on {escape(approval.resource)}. Reason: {reason}"
    )


# -- lists: App Home, /jit list -----------------------------------------------------------

def summary_text(approval: Approval) -> str:
    """One compact mrkdwn paragraph for lists."""
    lines = [f"*{escape(title(approval))}*", f"by {escape(requester_text(approval))}"]
    if approval.kind == "statement" and approval.sql:
        sql, cut = _escape_truncated(" ".join(approval.sql.split()), 300)
        lines.append(f"`{sql.replace('`', chr(0x2035))}{'…' if cut else ''}`")
    # Clipped here, so the section's own limit never cuts through the date token below.
    if approval.risk:
        lines.append(f"Risk: {_clip(escape(approval.risk), 300)}")
    if approval.reason:
        lines.append(f"Reason: {_clip(escape(approval.reason), 500)}")
    lines.append(f"Expires {slack_date(approval.expires_at)} · {quorum_text(approval)} · id `{escape(approval.id)}`")
    return "\n".join(lines)


def approval_list_blocks(
    waiting_for_me: Sequence[Approval], my_requests: Sequence[Approval], *, max_blocks: int,
    console_url: str | None = None,
) -> list[Block]:
    """Two sections: requests the viewer can vote on (with buttons) and the viewer's own."""
    blocks: list[Block] = [{"type": "header", "text": _plain("Waiting for your approval", HEADER_TEXT_MAX)}]
    if not waiting_for_me:
        blocks.append(_section("_Nothing is waiting for you._"))
    mine_room = 3 + min(len(my_requests), 10)
    for index, approval in enumerate(waiting_for_me):
        if len(blocks) + 3 + mine_room > max_blocks:
            rest = len(waiting_for_me) - index
            more = f"_…and {rest} more" + (f" in the <{console_url}/approvals|console>_" if console_url else "_")
            blocks.append(_section(more))
            break
        blocks.append(_section(summary_text(approval)))
        blocks.append(action_buttons(approval, block_id=f"jitgate_actions:{approval.id}"[:255]))
        blocks.append({"type": "divider"})
    blocks.append({"type": "header", "text": _plain("Your pending requests", HEADER_TEXT_MAX)})
    if not my_requests:
        blocks.append(_section("_You have no pending requests._"))
    room = max_blocks - len(blocks)
    shown = my_requests if len(my_requests) <= room else my_requests[: max(0, room - 1)]
    blocks += [_section(summary_text(approval)) for approval in shown]
    if len(shown) < len(my_requests):
        blocks.append(_section(f"_…and {len(my_requests) - len(shown)} more_"))
    return blocks[:max_blocks]


def home_view(
    waiting_for_me: Sequence[Approval], my_requests: Sequence[Approval], *, console_url: str | None = None,
) -> Block:
    blocks = approval_list_blocks(waiting_for_me, my_requests, max_blocks=VIEW_BLOCKS_MAX, console_url=console_url)
    return {"type": "home", "callback_id": "jitgate_home", "blocks": blocks}


def message_view_blocks(text: str) -> list[Block]:
    return [_section(text)]


# -- the deny modal ------------------------------------------------------------------------

def deny_modal(approval_id: str, *, surface: str, channel: str | None, ts: str | None) -> Block:
    """The modal a Deny click opens; `private_metadata` carries what the submission needs."""
    metadata = json.dumps({"approval_id": approval_id, "surface": surface, "channel": channel, "ts": ts})
    blocks: list[Block] = [_section(f"Deny request `{escape(approval_id)}`?")]
    blocks.append({
        "type": "input",
        "block_id": DENY_REASON_BLOCK,
        "label": _plain("Reason (the requester sees it)", 2000),
        "element": {
            "type": "plain_text_input", "action_id": DENY_REASON_ACTION, "multiline": True,
            "min_length": 1, "max_length": 1000,
        },
    })
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "private_metadata": metadata,
        "title": _plain("Deny request", 24),
        "submit": _plain("Deny", 24),
        "close": _plain("Cancel", 24),
        "blocks": blocks,
    }
