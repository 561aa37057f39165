"""COPY's data layout (`model.CopyInfo`), from a CopyStmt's fields and options.

The masker parses the rows of ``COPY ... TO STDOUT`` itself, so it needs the format and its
options with PostgreSQL's defaults filled in, the relation (quoted, to be pasted into a probe
query) and the column list, or the inner query of ``COPY (query) TO``.
"""

from __future__ import annotations

from typing import Any, Literal

from pglast import parse_sql
from pglast.ast import CopyStmt
from pglast.stream import RawStream, maybe_double_quote_name

from .model import CopyInfo
from .where_folding import parse_bool

__all__ = ["copy_info", "deparse_copy_query"]

Direction = Literal["to_stdout", "from_stdin", "file", "program"]
Format = Literal["text", "csv", "binary"]


def copy_info(fields: dict[str, Any], options: dict[str, object], query: str | None) -> CopyInfo:
    """`fields`: the CopyStmt (libpg_query JSON); `options`: option name -> literal value
    (True for a bare option such as HEADER); `query`: the deparsed inner query, if any."""
    fmt: Format = "text"
    named = str(options.get("format", "text")).lower()
    if named == "csv":
        fmt = "csv"
    elif named == "binary":
        fmt = "binary"
    csv = fmt == "csv"
    quote = _text(options, "quote", '"')
    header = options.get("header", False)
    if isinstance(header, str):  # on/off/true/false/match
        header = header.lower() == "match" or bool(parse_bool(header))
    direction: Direction
    if fields.get("is_program"):
        direction = "program"
    elif fields.get("filename") is not None:
        direction = "file"
    else:
        direction = "from_stdin" if fields.get("is_from") else "to_stdout"
    relation = fields.get("relation")
    return CopyInfo(
        direction=direction,
        format=fmt,
        delimiter=_text(options, "delimiter", "," if csv else "\t"),
        null=_text(options, "null", "" if csv else "\\N"),
        quote=quote,
        escape=_text(options, "escape", quote if csv else "\\"),
        header=bool(header),
        relation=_quoted_relation(relation) if isinstance(relation, dict) else None,
        columns=tuple(
            str(c["String"].get("sval", "")) for c in fields.get("attlist", []) if "String" in c
        ),
        query=query,
        encoding=_text(options, "encoding", "") or None,
    )


def deparse_copy_query(statement: str) -> str | None:
    """The inner query of ``COPY (query) TO ...`` as SQL text, or None."""
    try:
        (raw,) = parse_sql(statement)
    except Exception:  # the caller parsed it already; losing the query only loses the probe
        return None
    copy = raw.stmt
    if not isinstance(copy, CopyStmt) or copy.query is None:
        return None
    return str(RawStream()(copy.query))


def _text(options: dict[str, object], name: str, default: str) -> str:
    value = options.get(name)
    return value if isinstance(value, str) else default


def _quoted_relation(relation: dict[str, Any]) -> str:
    parts = [relation.get("catalogname"), relation.get("schemaname"), relation.get("relname")]
    return ".".join(maybe_double_quote_name(str(p)) for p in parts if p)
