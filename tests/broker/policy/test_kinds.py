"""The statement-kind vocabulary."""

from __future__ import annotations

from broker.policy.kinds import KINDS, TAGS, statement_kind, tags_for


def test_kinds_read_like_sql() -> None:
    assert statement_kind("DropStmt", {"removeType": "OBJECT_MATVIEW"}) == (
        "drop_materialized_view"
    )
    assert statement_kind("AlterTableStmt", {"objtype": "OBJECT_TABLE"}) == "alter_table"
    assert statement_kind("CreatedbStmt", {}) == "create_database"
    assert statement_kind("VariableSetStmt", {"kind": "VAR_RESET_ALL"}) == "reset"
    assert statement_kind("GrantStmt", {"is_grant": True}) == "grant"
    assert statement_kind("GrantStmt", {}) == "revoke"
    assert statement_kind("CreateTableSpaceStmt", {}) == "create_tablespace"
    assert statement_kind("AlterCollationStmt", {}) == "alter_collation"  # generic naming


def test_every_kind_is_known_and_tagged() -> None:
    for kind in ("select", "drop_table", "alter_system", "copy_to", "create_foreign_table",
                 "dynamic_sql", "refresh_materialized_view", "import_foreign_schema"):  # fmt: skip
        assert kind in KINDS
    assert {"read", "write", "ddl", "dml", "session"} <= TAGS


def test_tags() -> None:
    assert tags_for("select") == {"read"}
    assert tags_for("set") == {"session"}
    assert tags_for("delete") == {"write", "dml"}
    assert tags_for("drop_table") == {"write", "ddl", "drop"}
    assert tags_for("truncate") == {"write", "ddl"}
    assert tags_for("do") == {"write"}
