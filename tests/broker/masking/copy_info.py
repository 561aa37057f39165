"""The COPY options a masking test hands to `Masker.plan_copy` (what the proxy parses from a
COPY statement: broker.policy.copyinfo)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CopyOptions:
    format: str = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header: bool = False
    columns: tuple[str, ...] = ()
    direction: str = "to_stdout"
    encoding: str | None = None
