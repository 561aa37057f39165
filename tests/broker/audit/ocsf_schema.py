"""A JSON-schema subset of OCSF 1.3 for the three classes jitgate emits.

No PyPI package ships the OCSF schema as data (`ocsf-lib` compiles it from the schema
repository, `ocsf-emitter` carries class and activity ids only), so this is written from
the OCSF 1.x class pages: the base event's required attributes, each class's required
attributes, the class/category pairs and activity ids, and the objects' shapes as far as
we fill them. Unknown attributes stay allowed, as OCSF allows them.
"""

from __future__ import annotations

from typing import Any

_int = {"type": "integer"}
_str = {"type": "string"}

_user = {
    "type": "object",
    "properties": {
        "name": _str,
        "uid": _str,
        "groups": {"type": "array", "items": {"type": "object", "properties": {"name": _str}}},
    },
    "anyOf": [{"required": ["name"]}, {"required": ["uid"]}],
}
_actor = {
    "type": "object",
    "properties": {"user": _user, "session": {"type": "object", "properties": {"uid": _str}}},
    "minProperties": 1,
}
_endpoint = {
    "type": "object",
    "properties": {
        "ip": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "hostname": _str,
        "name": _str,
    },
    "minProperties": 1,
}
_metadata = {
    "type": "object",
    "required": ["version", "product"],
    "properties": {
        "version": {"type": "string", "pattern": r"^1\.\d+\.\d+"},
        "product": {"type": "object", "required": ["vendor_name"], "properties": {"name": _str, "vendor_name": _str}},
        "uid": _str,
        "sequence": _int,
    },
}


def _class(class_uid: int, category_uid: int, activity_ids: list[int], required: list[str],
            extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [
            "activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid", *required,
        ],
        "properties": {
            "class_uid": {"const": class_uid},
            "category_uid": {"const": category_uid},
            "activity_id": {"enum": activity_ids},
            "type_uid": {"type": "integer", "minimum": class_uid * 100, "maximum": class_uid * 100 + 99},
            "time": {"type": "integer", "minimum": 0},
            "severity_id": {"enum": [0, 1, 2, 3, 4, 5, 6, 99]},
            "status_id": {"enum": [0, 1, 2, 99]},
            "status_detail": _str,
            "metadata": _metadata,
            "actor": _actor,
            "src_endpoint": _endpoint,
            **extra,
        },
    }


AUTHENTICATION = _class(3002, 3, [0, 1, 2, 3, 4, 5, 6, 99], ["user"], {"user": _user, "auth_protocol": _str})
API_ACTIVITY = _class(
    6003, 6, [0, 1, 2, 3, 4, 99], ["actor", "api", "src_endpoint"],
    {"api": {"type": "object", "required": ["operation"], "properties": {"operation": _str}}},
)
DATASTORE_ACTIVITY = _class(
    6005, 6, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99], ["actor", "src_endpoint"],
    {
        "database": {"type": "object", "properties": {"name": _str, "type": _str, "type_id": _int}},
        "query_info": {"type": "object", "properties": {"query_string": _str}},
        "duration": _int,
    },
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "oneOf": [AUTHENTICATION, API_ACTIVITY, DATASTORE_ACTIVITY],
}
