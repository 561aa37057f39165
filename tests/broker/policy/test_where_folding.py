"""Constant folding of WHERE clauses."""

from __future__ import annotations

import json

import pytest
from pglast import parser as pg

from broker.policy.where_folding import is_always_true, parse_bool


def where_of(sql: str) -> dict[str, object]:
    tree = json.loads(pg.parse_sql_json(f"delete from t where {sql}"))
    return tree["stmts"][0]["stmt"]["DeleteStmt"]["whereClause"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "condition",
    [
        "true", "'t'", "'yes'", "'on'", "1 = 1", "'a' = 'a'", "2 > 1", "1 <> 2", "1 != 2",
        "1 >= 1", "not false", "not (1 = 2)", "1 = 1 or id = 5", "id = 5 or 1 = 1",
        "1 = 1 and 2 = 2", "id = id", "t.id >= t.id", "1 in (1, 2)", "1 not in (2, 3)",
        "null is null", "1 is not null", "true is true", "false is not true",
        "1 is distinct from 2", "1 is not distinct from 1", "exists (select 1)",
        "'1'::bool", "1::boolean", "cast('true' as boolean)", "1 = '1'", "'1' = 1",
        "1 + 1 = 2", "2 * 3 = 6", "-1 < 0", "1.5 > 1", "(((1 = 1)))",
    ],
)  # fmt: skip
def test_always_true(condition: str) -> None:
    assert is_always_true(where_of(condition), lambda: None)


@pytest.mark.parametrize(
    "condition",
    [
        "false", "'f'", "1 = 2", "id = 1", "id = 1 and 1 = 1", "id > 0", "null", "1 = null",
        "id is null", "exists (select 1 from u)", "exists (select 1 where false)",
        "1 in (select 1)", "'a' = 'b'", "1 = 'x'", "f()", "id = id2", "'maybe'",
        "1 is distinct from 1", "current_user = current_user",
    ],
)  # fmt: skip
def test_not_always_true(condition: str) -> None:
    assert not is_always_true(where_of(condition), lambda: None)


def test_reads_are_reported_only_when_values_are_looked_at() -> None:
    reads: list[int] = []
    is_always_true(where_of("aid = 48213"), lambda: reads.append(1))
    assert reads == []
    is_always_true(where_of("1 = 1"), lambda: reads.append(1))
    assert reads


@pytest.mark.parametrize(
    ("text", "value"),
    [("t", True), ("TRUE", True), (" yes ", True), ("on", True), ("1", True), ("tr", True),
     ("f", False), ("no", False), ("off", False), ("of", False), ("0", False),
     ("o", None), ("", None), ("maybe", None)],
)  # fmt: skip
def test_parse_bool(text: str, value: bool | None) -> None:
    assert parse_bool(text) is value
