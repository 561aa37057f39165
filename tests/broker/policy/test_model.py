"""Decision ordering and verdict views."""

from __future__ import annotations

from broker.policy import CopyInfo, Decision, Verdict


def test_decisions_are_ordered_by_strictness() -> None:
    assert Decision.ALLOW < Decision.REVIEW < Decision.BLOCK
    assert Decision.BLOCK > Decision.ALLOW
    assert max(Decision.REVIEW, Decision.BLOCK, Decision.ALLOW) is Decision.BLOCK
    assert Decision.strictest(Decision.ALLOW, Decision.REVIEW) is Decision.REVIEW
    assert Decision.strictest() is Decision.ALLOW
    assert Decision("block") is Decision.BLOCK
    assert Decision.BLOCK == "block" and str(Decision.BLOCK) == "block"
    assert [d.rank for d in Decision] == [0, 1, 2]


def test_verdict_as_dict() -> None:
    copy = CopyInfo("to_stdout", "csv", ",", "", '"', '"', True, "t", ("a",), None)
    inner = Verdict(Decision.REVIEW, "r", "why")
    verdict = Verdict(
        Decision.ALLOW, "x", "y", shadow_decision=Decision.BLOCK, prepares=(("p", inner),),
        executes=("e",), deallocates=(None,), copy=copy, statement_count=2, tables=("t",),
    )  # fmt: skip
    assert verdict.as_dict() == {
        "decision": "allow",
        "rule": "x",
        "reason": "y",
        "shadow_decision": "block",
        "statement_count": 2,
        "tables": ["t"],
        "prepares": {"p": {"decision": "review", "rule": "r", "reason": "why"}},
        "executes": ["e"],
        "deallocates": [None],
        "copy": {
            "direction": "to_stdout",
            "format": "csv",
            "delimiter": ",",
            "null": "",
            "quote": '"',
            "escape": '"',
            "header": True,
            "relation": "t",
            "columns": ["a"],
            "query": None,
        },
    }
