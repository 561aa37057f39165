"""A statement's outputs as the masker takes them (`model.Lineage`), and several statements'
lineages as one."""

from __future__ import annotations

from ..model import Lineage
from .scopes import Out, expand_outs, is_derived, loose_entries

__all__ = ["merge", "to_lineage"]


def to_lineage(outs: list[Out]) -> Lineage | None:
    expanded = expand_outs(outs)
    if expanded is not None:
        outs = expanded
    named = tuple(loose_entries(outs))
    stars = [i for i, out in enumerate(outs) if out.star]
    if not stars:
        if not named:
            return None
        head = tuple(o.col.sources if is_derived(o) and o.col else None for o in outs)
        return Lineage(head=head, named=named)
    first, last = stars[0], stars[-1]
    head = tuple(o.col.sources if is_derived(o) and o.col else None for o in outs[:first])
    tail = tuple(o.col.sources if is_derived(o) and o.col else None for o in outs[last + 1 :])
    loose = tuple(loose_entries(outs[first : last + 1]))
    if not loose and all(e is None for e in head + tail):
        return None
    return Lineage(head=head, tail=tail, starred=True, loose=loose, named=named)


def merge(lineages: list[Lineage | None]) -> Lineage | None:
    """One lineage for a string of several statements: positions unknown, names only."""
    named = tuple(entry for item in lineages if item is not None for entry in item.named)
    if not named:
        return None
    return Lineage(head=(), starred=True, loose=named, named=named)
