"""The built-in policies: ``agent-safe`` (the default), ``observe`` and ``read-only``.

``agent-safe`` lets an agent read, write rows it names with a WHERE clause, and create
tables, indexes and views; it sends a human anything that changes many rows or the schema
(UPDATE/DELETE without a real WHERE, TRUNCATE, DROP, ALTER, GRANT, DO, CALL, MERGE, COPY FROM
STDIN, and any statement kind not listed); and it blocks what escapes the database's
sandbox: ALTER SYSTEM, role changes, SET ROLE / SESSION AUTHORIZATION and
``set_config('role', ...)``, COPY to or from a server file or program, file / process /
network functions anywhere in a statement, CREATE EXTENSION, LOAD, code in untrusted
languages, SQL built at run time (PL/pgSQL ``EXECUTE`` of an expression in a DO block or
function body, a query given to ``query_to_xml`` and the like that is not a literal) and code
the gateway cannot parse, DROP DATABASE, foreign servers and user mappings, tablespaces, settings changed
through names chosen at run time (``set_config(expr, ...)``, UPDATE of ``pg_settings``), and
settings that would make the server read quotes or bytes differently from the gateway
(client_encoding, standard_conforming_strings and backslash_quote are pinned), NOTIFY or
pg_notify on a channel the policy does not list (``notify_channels``), and raising or
disabling the gateway's session timeouts (``timeouts``). Two-phase commit (PREPARE
TRANSACTION, COMMIT / ROLLBACK PREPARED) is reviewed: a prepared transaction outlives the
session and holds its locks until someone, perhaps another session, finishes it.

Every ``block`` rule of a preset is a *guard*: an operator's rule only replaces it when it
says ``override: true``. Everything else can be tightened or loosened by operator rules,
which are checked before the preset's ordinary rules.

``read-only`` is ``agent-safe`` plus one rule in front of the ordinary ones: every write or
DDL is reviewed. ``observe`` is ``agent-safe`` in shadow mode: the effective decision is
always ``allow`` (rule ``observe/shadow``) and `Verdict.shadow_decision` carries what
``agent-safe`` would have done.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import Decision
from .rules import Match, NamePattern, Rule

__all__ = ["BLOCKED_FUNCTIONS", "PRESETS", "Preset", "get_preset"]

ALLOW, REVIEW, BLOCK = Decision.ALLOW, Decision.REVIEW, Decision.BLOCK

# Functions that read or write server files, run or signal server processes, reach other
# servers, or administer replication and backups. Matched by name in any schema.
BLOCKED_FUNCTIONS = (
    # files
    "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_ls_dir", "pg_ls_logdir",
    "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir",
    "pg_ls_logicalmapdir", "pg_ls_replslotdir", "pg_ls_summariesdir", "lo_import", "lo_export",
    # adminpack
    "pg_file_write", "pg_file_read", "pg_file_rename", "pg_file_unlink", "pg_file_sync",
    "pg_file_length", "pg_logdir_ls",
    # processes and server state
    "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_rotate_logfile_old", "pg_promote", "pg_log_backend_memory_contexts",
    "pg_create_restore_point", "pg_switch_wal", "pg_backup_start", "pg_backup_stop",
    "pg_start_backup", "pg_stop_backup", "pg_wal_replay_pause", "pg_wal_replay_resume",
    # replication: slots stream every change of every table
    "pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
    "pg_drop_replication_slot", "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot", "pg_replication_slot_advance", "pg_logical_slot_*",
    "pg_replication_origin_*", "pg_logical_emit_message",
    # other servers
    "dblink*",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Preset:
    """A named base policy: guards first, then ordinary rules, then the fallback."""

    name: str
    guards: tuple[Rule, ...]
    rules: tuple[Rule, ...]
    fallback: Rule
    shadow: bool = False


def _rule(
    prefix: str,
    name: str,
    decision: Decision,
    reason: str,
    *,
    kinds: tuple[str, ...] | None = None,
    functions: tuple[str, ...] | None = None,
    settings: tuple[str, ...] | None = None,
    where: str | None = None,
) -> Rule:
    match = Match(
        kinds=frozenset(kinds) if kinds is not None else None,
        functions=tuple(NamePattern(f) for f in functions) if functions is not None else None,
        settings=frozenset(settings) if settings is not None else None,
        where="missing" if where == "missing" else None,
    )
    return Rule(f"{prefix}/{name}", match, decision, reason, guard=decision is BLOCK)


def _guards(p: str) -> tuple[Rule, ...]:
    return (
        _rule(p, "alter-system", BLOCK, "ALTER SYSTEM rewrites the server's configuration",
              kinds=("alter_system",)),
        _rule(p, "roles", BLOCK, "creating, changing or dropping roles is for administrators",
              kinds=("create_role", "alter_role", "drop_role")),
        _rule(p, "set-role", BLOCK,
              "changing {setting} would act as another role than the one granted",
              kinds=("set",), settings=("role", "session_authorization")),
        _rule(p, "dynamic-setting", BLOCK,
              "a setting chosen at run time (set_config with a name that is not a literal, "
              "an UPDATE of pg_settings or a view over it) cannot be checked",
              kinds=("dynamic_setting",)),
        _rule(p, "lexer-setting", BLOCK,
              "{setting} is pinned by the gateway (client_encoding UTF8, "
              "standard_conforming_strings on, backslash_quote safe_encoding): its parser and "
              "result masker read SQL as UTF-8 with standard strings, and any other value "
              "would let the server read quotes or bytes differently",
              kinds=("unsafe_lexer_setting",)),
        _rule(p, "server-copy", BLOCK,
              "COPY to or from a server file or program runs on the database host",
              kinds=("server_side",)),
        _rule(p, "server-functions", BLOCK,
              "calling {functions} reaches the host's files and processes, or other servers",
              functions=BLOCKED_FUNCTIONS),
        _rule(p, "extensions", BLOCK, "installing extensions or languages is for administrators",
              kinds=("create_extension", "alter_extension", "create_language")),
        _rule(p, "load", BLOCK, "LOAD puts a shared library into the server", kinds=("load",)),
        _rule(p, "untrusted-language", BLOCK,
              "code in language {language} runs outside the database's sandbox",
              kinds=("untrusted_language",)),
        _rule(p, "runtime-sql", BLOCK,
              "this statement runs SQL built at run time, which the gateway cannot check "
              "(PL/pgSQL EXECUTE of an expression, or a query given to a function as one); "
              "write the statement itself, or EXECUTE a string literal",
              kinds=("runtime_sql",)),
        _rule(p, "unreadable-code", BLOCK,
              "the gateway cannot parse the code of this {kind} (its body, or a string it "
              "executes), so what it runs cannot be checked",
              kinds=("unreadable_code",)),
        _rule(p, "drop-database", BLOCK, "DROP DATABASE destroys a whole database",
              kinds=("drop_database",)),
        _rule(p, "foreign-servers", BLOCK,
              "foreign servers, user mappings and subscriptions connect to other servers",
              kinds=("create_server", "alter_server", "create_user_mapping",
                     "alter_user_mapping", "create_foreign_data_wrapper",
                     "alter_foreign_data_wrapper", "create_subscription",
                     "alter_subscription")),
        _rule(p, "tablespace", BLOCK, "a tablespace is a directory on the database host",
              kinds=("create_tablespace",)),
        _rule(p, "notify-channel", BLOCK,
              "{kind} may only use the channels the policy lists (notify_channels); this "
              "channel is not listed, or is not known before the statement runs",
              kinds=("unlisted_channel",)),
        _rule(p, "session-timeouts", BLOCK,
              "{setting} may be lowered, not raised above the gateway's ceiling (policy key "
              "timeouts) nor disabled with 0, and its value must be a literal",
              kinds=("unsafe_timeout",)),
    )  # fmt: skip


def _ordinary(p: str) -> tuple[Rule, ...]:
    return (
        _rule(p, "dynamic-sql", REVIEW, "{functions} runs SQL or reads relations given as a string",
              kinds=("dynamic_sql",)),
        _rule(p, "write-without-where", REVIEW,
              "{kind} {where} changes every row of {tables}",
              kinds=("update", "delete"), where="missing"),
        _rule(p, "write", ALLOW, "{kind} of named rows", kinds=("insert", "update", "delete")),
        _rule(p, "merge", REVIEW, "MERGE can change many rows of {tables}", kinds=("merge",)),
        _rule(p, "truncate", REVIEW, "TRUNCATE empties {tables}", kinds=("truncate",)),
        _rule(p, "drop", REVIEW, "{kind} destroys a database object", kinds=("drop",)),
        _rule(p, "grant", REVIEW, "{kind} changes who may do what",
              kinds=("grant", "revoke", "grant_role", "revoke_role",
                     "alter_default_privileges")),
        _rule(p, "alter", REVIEW, "{kind} changes the schema", kinds=("alter",)),
        _rule(p, "do", REVIEW, "a DO block runs procedural code: {body}", kinds=("do",)),
        _rule(p, "call", REVIEW, "CALL runs a procedure", kinds=("call",)),
        _rule(p, "copy-from", REVIEW, "COPY FROM STDIN loads rows into {tables}",
              kinds=("copy_from",)),
        _rule(p, "copy-to", ALLOW, "COPY TO STDOUT reads rows", kinds=("copy_to",)),
        _rule(p, "read", ALLOW, "{kind} reads data",
              kinds=("select", "show", "declare_cursor", "fetch", "move", "close")),
        _rule(p, "explain", ALLOW, "EXPLAIN shows a plan", kinds=("explain",)),
        _rule(p, "create-table-as", ALLOW, "{kind} stores a query's rows in a new table",
              kinds=("select_into", "create_table_as", "create_materialized_view")),
        _rule(p, "create", ALLOW, "{kind} adds a table, index or view",
              kinds=("create_table", "create_index", "create_view")),
        _rule(p, "prepare-transaction", REVIEW,
              "PREPARE TRANSACTION keeps the transaction, its locks and its changes after the "
              "session ends, until someone commits or rolls it back",
              kinds=("prepare_transaction",)),
        _rule(p, "finish-prepared", REVIEW,
              "{kind} finishes a prepared transaction, which may be another session's",
              kinds=("commit_prepared", "rollback_prepared")),
        _rule(p, "session", ALLOW, "{kind} only affects this session",
              kinds=("session",)),
        _rule(p, "notify", ALLOW, "{kind} uses a notification channel",
              kinds=("listen", "unlisten", "notify")),
        _rule(p, "prepare", ALLOW, "PREPARE of an allowed statement", kinds=("prepare",)),
        _rule(p, "execute", ALLOW, "EXECUTE is judged by the statement it runs",
              kinds=("execute",)),
        _rule(p, "deallocate", ALLOW, "DEALLOCATE forgets a prepared statement",
              kinds=("deallocate",)),
    )  # fmt: skip


def _fallback(p: str) -> Rule:
    return Rule(f"{p}/other", Match(), REVIEW, "{kind} is not on the list of safe statements")


def _agent_safe(name: str = "agent-safe", *, shadow: bool = False) -> Preset:
    return Preset(name, _guards(name), _ordinary(name), _fallback(name), shadow=shadow)


def _read_only() -> Preset:
    p = "read-only"
    write = _rule(p, "write", REVIEW, "read-only policy: {kind} changes data or schema",
                  kinds=("write",))  # fmt: skip
    return Preset(p, _guards(p), (write, *_ordinary(p)), _fallback(p))


PRESETS: dict[str, Preset] = {
    "agent-safe": _agent_safe(),
    # Shadow mode judges exactly as agent-safe does; the engine reports, never enforces.
    "observe": _agent_safe("agent-safe", shadow=True),
    "read-only": _read_only(),
}


def get_preset(name: str) -> Preset | None:
    return PRESETS.get(name)
