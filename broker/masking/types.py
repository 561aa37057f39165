"""Column descriptions and the PostgreSQL type families the masker cares about.

The masker never decodes a value by its type: it only needs to know whether a value *can*
carry free text (and so must be scanned), how to write a masked value that the client's
driver still decodes, and which types are safe to leave alone on the hot path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

TEXT_FORMAT = 0
BINARY_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """One result column as the proxy learned it from a RowDescription (or a Describe)."""

    name: str
    type_oid: int
    format: int = TEXT_FORMAT  # 0 text, 1 binary


class CopyInfoLike(Protocol):
    """What the masker reads of `broker.policy.CopyInfo` (structural, to avoid a dependency).

    The fields are the *effective* options: PostgreSQL's defaults filled in by the policy
    layer (text: tab and ``\\N``; csv: comma, empty null, double quote, escape = quote).
    """

    @property
    def direction(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def delimiter(self) -> str: ...
    @property
    def null(self) -> str: ...
    @property
    def quote(self) -> str: ...
    @property
    def escape(self) -> str: ...
    @property
    def header(self) -> bool: ...
    @property
    def columns(self) -> tuple[str, ...]: ...
    @property
    def encoding(self) -> str | None: ...


class Family(enum.Enum):
    """How a column's values are treated."""

    NO_CONTENT = "no_content"  # numbers, dates, uuids, ...: cannot carry text; never scanned
    TEXT = "text"  # text, varchar, ...: the value (either format) is the text itself
    JSON = "json"  # json: text; jsonb: text, or version byte + text in binary
    BYTEA = "bytea"  # raw bytes; text format is hex (or escape) encoded
    TEXT_ARRAY = "text_array"  # arrays of text-like types
    OPAQUE = "opaque"  # anything else (records, enums, domains, extensions like citext)


JSON_OID = 114
JSONB_OID = 3802
BYTEA_OID = 17

# Scalar types whose values cannot hold free text, and arrays of them. A card number stored
# in a bigint column is still caught by the column-name rules, not by content.
_NO_CONTENT_SCALARS = frozenset(
    {
        16,  # bool
        18,  # "char": one byte
        20, 21, 23, 26, 22, 30,  # int8 int2 int4 oid int2vector oidvector
        24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191,  # reg* types
        27, 28, 29, 5069,  # tid xid cid xid8
        600, 601, 602, 603, 604, 628, 718,  # geometric
        650, 869, 774, 829,  # cidr inet macaddr8 macaddr
        700, 701, 790, 1700,  # float4 float8 money numeric
        1082, 1083, 1114, 1184, 1186, 1266,  # date time timestamp timestamptz interval timetz
        1560, 1562,  # bit varbit
        2950, 3220,  # uuid pg_lsn
        3904, 3906, 3908, 3910, 3912, 3926,  # range types
        4451, 4532, 4533, 4534, 4535, 4536,  # multiranges
    }
)  # fmt: skip
_NO_CONTENT_ARRAYS = frozenset(
    {
        1000, 1002, 1005, 1007, 1016, 1028, 1010, 1011, 1012, 1013,
        1017, 1018, 1019, 1020, 1027, 629, 651, 1040, 1041, 775,
        1021, 1022, 791, 1231, 1182, 1183, 1115, 1185, 1187, 1270,
        1561, 1563, 2951, 3221, 3905, 3907, 3909, 3911, 3913, 3927,
    }
)  # fmt: skip
NO_CONTENT_OIDS = _NO_CONTENT_SCALARS | _NO_CONTENT_ARRAYS

# text, varchar, bpchar, name, unknown, xml. json/jsonb have their own family.
TEXT_OIDS = frozenset({25, 1043, 1042, 19, 705, 142})
# text[], varchar[], bpchar[], name[], xml[], json[], jsonb[]
TEXT_ARRAY_OIDS = frozenset({1009, 1015, 1014, 1003, 143, 199, 3807})


def family_of(type_oid: int) -> Family:
    if type_oid in TEXT_OIDS:
        return Family.TEXT
    if type_oid in NO_CONTENT_OIDS:
        return Family.NO_CONTENT
    if type_oid in (JSON_OID, JSONB_OID):
        return Family.JSON
    if type_oid == BYTEA_OID:
        return Family.BYTEA
    if type_oid in TEXT_ARRAY_OIDS:
        return Family.TEXT_ARRAY
    return Family.OPAQUE
