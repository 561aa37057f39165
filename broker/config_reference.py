"""The configuration reference, generated from the pydantic models (`jitgate config reference`).

docs/CONFIG.md is this module's output; a test fails when the models and the file disagree,
so the reference cannot drift from the code. Each row is a key path (`resources.<name>.policy`,
`approvals.rules[].quorum`), its type, its default and the field's description.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from enum import Enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from broker.config import Settings

HEADER = """# Configuration reference

Generated from the pydantic models by `jitgate config reference`; do not edit by hand
(`tests/broker/test_config_reference.py` checks it is current). One YAML file
(`--config` or `$JITGATE_CONFIG`) plus environment overrides: `JITGATE_` + the key path in
capitals with `__` between levels, e.g. `JITGATE_PROXY__LISTEN_PORT=6432`,
`JITGATE_SLACK__BOT_TOKEN=xoxb-...`. `jitgate config check` validates a file.

| key | type | default | description |
|---|---|---|---|
"""


def _models(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """Nested models in an annotation, with the path suffix they live under."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation
    elif origin in (list, tuple, set, frozenset) and args:
        for suffix, model in _models(args[0]):
            yield "[]" + suffix, model
    elif origin is dict and len(args) == 2:
        for suffix, model in _models(args[1]):
            yield ".<name>" + suffix, model
    elif origin in (typing.Union, types.UnionType, typing.Annotated):
        for arg in args if origin is not typing.Annotated else args[:1]:
            yield from _models(arg)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list[{_type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"map[{_type_name(args[0])}, {_type_name(args[1])}]" if args else "map"
    if isinstance(annotation, type):
        if issubclass(annotation, SecretStr):
            return "secret"
        if issubclass(annotation, Enum):
            return " \\| ".join(repr(m.value) for m in annotation)
        if issubclass(annotation, BaseModel):
            return "section"
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, SecretStr):
        return '""' if not value.get_secret_value() else "(set)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, list):
        value = [v.value if isinstance(v, Enum) else v for v in value]
    text = repr(value) if not isinstance(value, str) else (f'"{value}"' if value else '""')
    return f"`{text}`".replace("|", "\\|")


def rows(model: type[BaseModel], prefix: str = "", seen: tuple[type, ...] = ()) -> Iterator[str]:
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        description = " ".join((field.description or "").split()).replace("|", "\\|")
        yield f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | {description} |"
        for suffix, nested in _models(field.annotation):
            if nested in seen:
                continue
            yield from rows(nested, f"{path}{suffix}.", (*seen, nested))


def render() -> str:
    return HEADER + "\n".join(rows(Settings)) + "\n"
