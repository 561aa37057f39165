from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from broker.approvals.model import Scope, Status, Voter, cast_vote
from slackapp import blocks
from tests.slack_double import validate_blocks, validate_view
from tests.slackapp.fakes import make_approval

APPROVER = Voter("person:alice@example.com", ("dba",))


def _text(payload: list[dict]) -> str:
    return json.dumps(payload)


def _buttons(payload: list[dict]) -> list[str]:
    return [e["action_id"] for b in payload if b["type"] == "actions" for e in b["elements"]]


def test_statement_prompt_shows_what_an_approver_needs() -> None:
    approval = make_approval(quorum=2)
    payload = blocks.prompt_blocks(approval)
    validate_blocks(payload)
    text = _text(payload)
    assert payload[0]["type"] == "header" and "DELETE on demo" in payload[0]["text"]["text"]
    assert "agent claude-code acting for dave@example.com" in text
    assert "```DELETE FROM customers```" in text
    assert "write-without-where" in text and "DELETE without a WHERE clause" in text
    assert "public.customers" in text and "~1,200 rows" in text
    assert "clean up test rows" in text
    assert "0 of 2 approvals" in text
    assert f"<!date^{int(approval.expires_at.timestamp())}^{{date_short_pretty}} {{time}}|" in text
    actions = [b for b in payload if b["type"] == "actions"][0]
    approve, session, deny = actions["elements"]
    assert approve == {**approve, "action_id": "jitgate_approve", "style": "primary", "value": approval.id}
    assert session["action_id"] == "jitgate_approve_session" and session["value"] == approval.id
    assert deny["action_id"] == "jitgate_deny" and deny["style"] == "danger"


def test_title_takes_the_keyword_not_a_comment() -> None:
    assert blocks.title(make_approval(sql="/* APPROVED by dba */ DROP TABLE t")) == "Review: statement on demo"
    assert blocks.title(make_approval(sql="  truncate orders")) == "Review: TRUNCATE on demo"


def test_session_button_only_when_the_policy_allows_that_scope() -> None:
    assert "jitgate_approve_session" not in _buttons(blocks.prompt_blocks(make_approval(scopes=(Scope.ONCE,))))
    assert _buttons(blocks.prompt_blocks(make_approval("access"))) == ["jitgate_approve", "jitgate_deny"]


def test_access_prompt_shows_role_and_duration() -> None:
    payload = blocks.prompt_blocks(make_approval("access", details={"ttl_seconds": 5400}))
    validate_blocks(payload)
    text = _text(payload)
    assert "Access request: readwrite on demo" in text
    assert "*Role*\\nreadwrite" in text and "1 h 30 min" in text
    assert "dave@example.com" in text and "fix ticket 42" in text


def test_user_text_is_escaped_so_it_cannot_mention_or_link() -> None:
    approval = make_approval(
        sql="DELETE FROM t WHERE note = '<!channel> <https://evil.example|click> & ```*bold*```'",
        reason="<@U_ALICE> please", risk="a < b",
    )
    text = _text(blocks.prompt_blocks(approval)) + blocks.fallback_text(approval)
    assert "<!channel>" not in text and "<https://evil" not in text and "<@U_ALICE>" not in text
    assert "&lt;!channel&gt;" in text and "&amp;" in text and "a &lt; b" in text
    code = [b["text"]["text"] for b in blocks.prompt_blocks(approval) if "```" in b.get("text", {}).get("text", "")]
    assert code[0].count("```") == 2  # the SQL cannot close its own code block


def test_long_sql_is_truncated_with_a_link_to_the_console() -> None:
    approval = make_approval(sql="UPDATE t SET v = '" + "<&>" * 4000 + "'")
    payload = blocks.prompt_blocks(approval, console_url="https://jitgate.example.com")
    validate_blocks(payload)
    sql_block = next(b for b in payload if b.get("text", {}).get("text", "").startswith("```"))
    assert len(sql_block["text"]["text"]) <= blocks.SECTION_TEXT_MAX
    assert f"<https://jitgate.example.com/approvals/{approval.id}|full statement>" in sql_block["text"]["text"]
    body = sql_block["text"]["text"].split("```")[1]
    assert len(body) <= blocks.SQL_SHOWN_MAX and not body.endswith("&")  # no entity cut in half
    without_console = blocks.prompt_blocks(approval)
    assert "full statement" not in _text(without_console) and "truncated" in _text(without_console)


def test_limits_hold_for_oversized_fields() -> None:
    approval = make_approval(
        resource="r" * 500, reason="x" * 10_000, risk="y" * 5000, rule="z" * 300,
        details={"tables": [f"t{i}" for i in range(500)], "row_estimate": 10**12},
    )
    payload = blocks.prompt_blocks(approval)
    validate_blocks(payload)
    assert len(payload[0]["text"]["text"]) <= blocks.HEADER_TEXT_MAX
    assert "and 480 more" in _text(payload)


def test_approved_prompt_has_no_buttons_and_says_who() -> None:
    approval = make_approval(quorum=2)
    half = cast_vote(approval, APPROVER, "approve", now=datetime.now(UTC)).approval
    assert "1 of 2 approvals (alice@example.com)" in _text(blocks.prompt_blocks(half))
    assert _buttons(blocks.prompt_blocks(half))
    bob = Voter("person:bob@example.com", ("dba",))
    done = cast_vote(half, bob, "approve", now=datetime.now(UTC), scope="session").approval
    payload = blocks.prompt_blocks(done)
    validate_blocks(payload)
    assert not _buttons(payload)
    text = _text(payload)
    assert "Approved* by alice@example.com, bob@example.com at <!date^" in text
    assert "[approved]" in blocks.fallback_text(done)


def test_denied_expired_cancelled() -> None:
    approval = make_approval()
    denied = cast_vote(approval, APPROVER, "deny", now=datetime.now(UTC), reason="not <today>").approval
    assert "*Denied* by alice@example.com at <!date^" in _text(blocks.prompt_blocks(denied))
    assert ": not &lt;today&gt;" in _text(blocks.prompt_blocks(denied))
    expired = replace(approval, status=Status.EXPIRED, decided_at=approval.expires_at, decision_reason="no decision")
    cancelled = replace(approval, status=Status.CANCELLED, decided_at=datetime.now(UTC), decision_reason="client left")
    assert "*Expired*" in _text(blocks.prompt_blocks(expired))
    assert "*Cancelled*" in _text(blocks.prompt_blocks(cancelled)) and "client left" in _text(
        blocks.prompt_blocks(cancelled))
    for payload in (blocks.prompt_blocks(expired), blocks.prompt_blocks(cancelled)):
        assert not _buttons(payload)


def test_slack_date_has_a_utc_fallback() -> None:
    moment = datetime(2026, 11, 25, 17, 30, tzinfo=UTC)
    assert blocks.slack_date(moment) == (
        f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} {{time}}|2026-11-25 17:30 UTC>"
    )


def test_home_view_lists_pending_with_buttons_and_stays_under_100_blocks() -> None:
    waiting = [make_approval() for _ in range(60)]
    mine = [make_approval("access") for _ in range(3)]
    view = blocks.home_view(waiting, mine, console_url="https://jitgate.example.com")
    validate_view(view)
    assert view["type"] == "home" and len(view["blocks"]) <= blocks.VIEW_BLOCKS_MAX
    text = _text(view["blocks"])
    assert "more in the <https://jitgate.example.com/approvals|console>" in text
    assert "Your pending requests" in text and mine[2].id in text
    empty = blocks.home_view([], [])
    validate_view(empty)
    assert "Nothing is waiting for you" in _text(empty["blocks"])


def test_deny_modal_carries_where_the_click_came_from() -> None:
    view = blocks.deny_modal("apr_1", surface="message", channel="C1", ts="1.2")
    validate_view(view)
    assert json.loads(view["private_metadata"]) == {
        "approval_id": "apr_1", "surface": "message", "channel": "C1", "ts": "1.2",
    }
    assert view["blocks"][-1]["type"] == "input"


def test_fallback_text_is_short_and_plain() -> None:
    approval = make_approval(risk="r" * 10_000, expires_at=datetime.now(UTC) + timedelta(minutes=5))
    assert len(blocks.fallback_text(approval)) <= blocks.FALLBACK_TEXT_MAX


def test_prompt_shows_the_rehearsed_count() -> None:
    """A write parked for its size carries the rehearsal's exact count per table."""
    details = {
        "tables": ["orders"], "blast_radius": "would change 406 of 406 rows of orders",
        "row_count": "rehearsed", "rows_changed": [{"table": "public.orders", "rows": 406, "of": 406, "limit": 100}],
    }
    payload = blocks.prompt_blocks(make_approval(details=details))
    validate_blocks(payload)
    text = _text(payload)
    assert "would change 406 of 406 rows of orders" in text and "planner estimate" not in text
