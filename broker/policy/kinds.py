"""Statement kinds and tags: the vocabulary rules match on.

A *kind* names what one statement does, in the words an operator writes SQL in:
``select``, ``insert``, ``update``, ``delete``, ``merge``, ``truncate``, ``copy_to``,
``copy_from``, ``create_table``, ``alter_table``, ``drop_table``, ``drop_database``,
``grant``, ``revoke``, ``set``, ``reset``, ``show``, ``explain``, ``transaction``, ``do``,
``call``, ``alter_system``, ``create_role``, ... (`KINDS` lists them all: every parse-tree
statement type gets one, ``drop_*`` / ``alter_*`` for every object type).

A *tag* names a family, so that a rule can say ``kinds: [write]``:

=========== ================================================================================
``read``    select, show, explain, cursors, copy_to, listen/notify, prepare/execute/deallocate
``session`` set, reset, discard, transaction control, set_constraints
``write``   everything else: any statement that changes data, schema, roles or the server
            (two-phase commit too: ``prepare_transaction``, ``commit_prepared`` and
            ``rollback_prepared`` outlive the session; they also carry ``two_phase``)
``dml``     insert, update, delete, merge
``ddl``     create_*, alter_*, drop_*, truncate, comment, grant/revoke, security_label
``create``, ``alter``, ``drop``  the kinds with that prefix
=========== ================================================================================

The classifier adds tags that describe one statement rather than its kind (see `facts`):
``server_side`` (COPY to/from a server file or program), ``untrusted_language`` (CREATE
FUNCTION / DO in a language other than sql and plpgsql), ``unsafe_lexer_setting`` (a SET,
set_config or function SET clause giving client_encoding, standard_conforming_strings or
backslash_quote any value but the one the gateway pins), ``dynamic_setting`` (settings
chosen at run time: set_config with a name that is not a literal, an UPDATE of pg_settings,
a view over pg_settings), ``dynamic_sql`` (a function that runs SQL from a string, such as
query_to_xml), ``runtime_sql`` (SQL built at run time: PL/pgSQL ``EXECUTE`` of anything but
one string literal, in a DO block or function body; a string-running function given a query
that is not a literal) and ``unreadable_code`` (a DO block or function body, or a string it
executes, that the gateway cannot parse). The judge adds two that depend on the policy's settings: ``unlisted_channel``
(NOTIFY / pg_notify on a channel not in ``notify_channels``, or one not known statically)
and ``unsafe_timeout`` (a SET of lock_timeout, statement_timeout or
idle_in_transaction_session_timeout above the policy's ceiling, to 0, or not to a literal).
"""

from __future__ import annotations

import re
from typing import Any

from pglast import ast
from pglast.enums import ObjectType

__all__ = ["KINDS", "TAGS", "statement_kind", "tags_for"]


def _object_name(value: str | None) -> str:
    """``OBJECT_MATVIEW`` -> ``materialized_view``."""
    name = (value or "OBJECT_TABLE").removeprefix("OBJECT_").lower()
    return _OBJECT_ALIASES.get(name, name)


_OBJECT_ALIASES = {
    "matview": "materialized_view",
    "fdw": "foreign_data_wrapper",
    "foreign_server": "server",
    "tsconfiguration": "text_search_configuration",
    "tsdictionary": "text_search_dictionary",
    "tsparser": "text_search_parser",
    "tstemplate": "text_search_template",
    "statistic_ext": "statistics",
    "largeobject": "large_object",
}

# Statement node -> kind, where the generic rule (strip "Stmt", snake_case) reads badly.
_FIXED: dict[str, str] = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "TruncateStmt": "truncate",
    "CreateStmt": "create_table",
    "IndexStmt": "create_index",
    "ViewStmt": "create_view",
    "CreateSeqStmt": "create_sequence",
    "CreateSchemaStmt": "create_schema",
    "CreatedbStmt": "create_database",
    "DropdbStmt": "drop_database",
    "CreateRoleStmt": "create_role",
    "AlterRoleStmt": "alter_role",
    "AlterRoleSetStmt": "alter_role",
    "DropRoleStmt": "drop_role",
    "AlterDatabaseStmt": "alter_database",
    "AlterDatabaseSetStmt": "alter_database",
    "AlterDatabaseRefreshCollStmt": "alter_database",
    "CreateExtensionStmt": "create_extension",
    "AlterExtensionStmt": "alter_extension",
    "AlterExtensionContentsStmt": "alter_extension",
    "CreateForeignServerStmt": "create_server",
    "AlterForeignServerStmt": "alter_server",
    "CreateFdwStmt": "create_foreign_data_wrapper",
    "AlterFdwStmt": "alter_foreign_data_wrapper",
    "CreatePLangStmt": "create_language",
    "CreateTableSpaceStmt": "create_tablespace",
    "DropTableSpaceStmt": "drop_tablespace",
    "DropSubscriptionStmt": "drop_subscription",
    "DropUserMappingStmt": "drop_user_mapping",
    "DropOwnedStmt": "drop_owned",
    "CreateTrigStmt": "create_trigger",
    "CreateEventTrigStmt": "create_event_trigger",
    "AlterEventTrigStmt": "alter_event_trigger",
    "RuleStmt": "create_rule",
    "CreateOpClassStmt": "create_operator_class",
    "CreateOpFamilyStmt": "create_operator_family",
    "AlterOpFamilyStmt": "alter_operator_family",
    "CreateAmStmt": "create_access_method",
    "CreateStatsStmt": "create_statistics",
    "AlterStatsStmt": "alter_statistics",
    "AlterTSConfigurationStmt": "alter_text_search_configuration",
    "AlterTSDictionaryStmt": "alter_text_search_dictionary",
    "CompositeTypeStmt": "create_type",
    "CreateEnumStmt": "create_type",
    "CreateRangeStmt": "create_type",
    "AlterEnumStmt": "alter_type",
    "RefreshMatViewStmt": "refresh_materialized_view",
    "VariableSetStmt": "set",
    "VariableShowStmt": "show",
    "TransactionStmt": "transaction",
    "ConstraintsSetStmt": "set_constraints",
    "DeclareCursorStmt": "declare_cursor",
    "ClosePortalStmt": "close",
    "PrepareStmt": "prepare",
    "ExecuteStmt": "execute",
    "DeallocateStmt": "deallocate",
    "DoStmt": "do",
    "CallStmt": "call",
    "LoadStmt": "load",
    "CheckPointStmt": "checkpoint",
    "SecLabelStmt": "security_label",
    "CommentStmt": "comment",
    "ReindexStmt": "reindex",
    "ClusterStmt": "cluster",
    "LockStmt": "lock",
    "ReassignOwnedStmt": "reassign_owned",
    "AlterDefaultPrivilegesStmt": "alter_default_privileges",
    "ImportForeignSchemaStmt": "import_foreign_schema",
}

# Two-phase commit is not session-local: a prepared transaction outlives the session that
# prepared it (holding its locks until someone finishes it), and COMMIT / ROLLBACK PREPARED
# finish any session's prepared transaction by its name.
_TWO_PHASE_KINDS = {
    "TRANS_STMT_PREPARE": "prepare_transaction",
    "TRANS_STMT_COMMIT_PREPARED": "commit_prepared",
    "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
}

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _generic(node_name: str) -> str:
    return _CAMEL.sub("_", node_name.removesuffix("Stmt")).lower()


def statement_kind(node_name: str, fields: dict[str, Any]) -> str:
    """The kind of a statement node (libpg_query JSON: its type name and its fields)."""
    fixed = _FIXED.get(node_name)
    if fixed is not None:
        if fixed == "select" and "intoClause" in fields:
            return "select_into"
        if fixed == "set":
            kind = fields.get("kind", "VAR_SET_VALUE")
            return "reset" if kind in ("VAR_RESET", "VAR_RESET_ALL", "VAR_SET_DEFAULT") else "set"
        if fixed == "transaction":
            return _TWO_PHASE_KINDS.get(fields.get("kind", ""), "transaction")
        return fixed
    if node_name == "DropStmt":
        return "drop_" + _object_name(fields.get("removeType"))
    if node_name == "AlterTableStmt":
        return "alter_" + _object_name(fields.get("objtype"))
    if node_name == "RenameStmt":
        return "alter_" + _object_name(fields.get("renameType"))
    if node_name in ("AlterObjectSchemaStmt", "AlterObjectDependsStmt"):
        return "alter_" + _object_name(fields.get("objectType"))
    if node_name == "AlterOwnerStmt":
        return "alter_" + _object_name(fields.get("objectType"))
    if node_name == "CreateTableAsStmt":
        if fields.get("objtype") == "OBJECT_MATVIEW":
            return "create_materialized_view"
        return "create_table_as"
    if node_name == "DefineStmt":
        return "create_" + _object_name(fields.get("kind"))
    if node_name == "GrantStmt":
        return "grant" if fields.get("is_grant") else "revoke"
    if node_name == "GrantRoleStmt":
        return "grant_role" if fields.get("is_grant") else "revoke_role"
    if node_name == "FetchStmt":
        return "move" if fields.get("ismove") else "fetch"
    if node_name == "VacuumStmt":
        return "vacuum" if fields.get("is_vacuumcmd") else "analyze"
    if node_name == "CreateFunctionStmt":
        return "create_procedure" if fields.get("is_procedure") else "create_function"
    return _generic(node_name)


_READ = frozenset(
    {
        "select", "show", "explain", "declare_cursor", "fetch", "move", "close", "copy_to",
        "prepare", "execute", "deallocate", "listen", "unlisten", "notify",
    }
)  # fmt: skip
_SESSION = frozenset({"set", "reset", "discard", "transaction", "set_constraints"})
_DML = frozenset({"insert", "update", "delete", "merge"})
_DDL_EXTRA = frozenset(
    {
        "truncate", "comment", "security_label", "grant", "revoke", "grant_role",
        "revoke_role", "reassign_owned", "import_foreign_schema", "select_into",
    }
)  # fmt: skip

# Kinds the classifier makes itself, besides statement kinds.
_EXTRA_KINDS = frozenset({"dynamic_sql", "copy_from", "copy_to"})


def _all_kinds() -> frozenset[str]:
    kinds = set(_FIXED.values()) | _EXTRA_KINDS
    kinds |= {"select_into", "reset", "move", "fetch", "grant", "revoke", "grant_role"}
    kinds |= {"revoke_role", "vacuum", "analyze", "create_procedure", "create_function"}
    kinds |= {"create_table_as", "create_materialized_view"}
    kinds |= set(_TWO_PHASE_KINDS.values())
    for member in ObjectType:
        name = _object_name(member.name)
        kinds |= {f"drop_{name}", f"alter_{name}", f"create_{name}"}
    for name in dir(ast):
        if name.endswith("Stmt") and name not in _FIXED:
            kinds.add(_generic(name))
    return frozenset(kinds)


KINDS = _all_kinds()

SEMANTIC_TAGS = frozenset(
    {
        "server_side", "untrusted_language", "unsafe_lexer_setting", "dynamic_setting",
        "unsafe_timeout", "unlisted_channel", "runtime_sql", "unreadable_code",
    }
)  # fmt: skip
TAGS = frozenset({"read", "session", "write", "dml", "ddl", "create", "alter", "drop"}) | (
    SEMANTIC_TAGS | {"dynamic_sql", "two_phase"}
)


def tags_for(kind: str) -> frozenset[str]:
    """The family tags of a kind (see the module docstring)."""
    tags = _TAG_CACHE.get(kind)
    if tags is None:
        tags = _compute_tags(kind)
        _TAG_CACHE[kind] = tags
    return tags


_TAG_CACHE: dict[str, frozenset[str]] = {}


def _compute_tags(kind: str) -> frozenset[str]:
    if kind in _READ:
        return frozenset({"read"})
    if kind in _SESSION:
        return frozenset({"session"})
    tags = {"write"}
    if kind in _DML:
        tags.add("dml")
    for prefix in ("create", "alter", "drop"):
        if kind.startswith(prefix + "_"):
            tags |= {prefix, "ddl"}
    if kind in _DDL_EXTRA:
        tags.add("ddl")
    if kind == "dynamic_sql":
        tags.add("dynamic_sql")
    if kind in _TWO_PHASE_KINDS.values():
        tags.add("two_phase")
    return frozenset(tags)
