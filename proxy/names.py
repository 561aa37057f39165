"""Prepared statements and portals by name, as the server will hold them.

PostgreSQL has one namespace of prepared statements (protocol Parse and SQL ``PREPARE``
both fill it; Bind and SQL ``EXECUTE`` both read it) and one of portals (protocol Bind and
SQL ``DECLARE`` fill it; Execute and SQL ``FETCH`` read it). The gateway must know, for
every Bind, Execute, EXECUTE and FETCH, which definition the *server* will use at that point,
because the verdict and the masking of the rows come from that definition.

The relay forwards pipelined messages before the server has answered the earlier ones, so
each name holds a chain of versions: the newest one sent, linked to the one it replaced.
Each version is settled by the server's answer to the message (or statement) that made it:

    PENDING   sent; the server has not answered yet
    LIVE      the server confirmed it (ParseComplete, BindComplete, the Query completed)
    DEAD      the server did not apply it (its message failed, or was skipped after an
              error): the name means what the previous version says
    UNCERTAIN the statement that made it failed part-way (``PREPARE s ...; <error>``):
              the gateway cannot tell which version the server holds, so the name is
              refused until it is defined again

A dropped name (Close, ``DEALLOCATE``, ``CLOSE``, ``DISCARD ALL``) is a version too (a
tombstone), settled the same way. Pure data, no I/O: the machine settles versions as the
server's answers arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from broker.policy.model import Lineage, Verdict

PENDING, LIVE, DEAD, UNCERTAIN = range(4)


@dataclass(slots=True, eq=False)
class Version:
    state: int = field(default=PENDING, kw_only=True)
    previous: Version | None = field(default=None, kw_only=True, repr=False)
    tombstone: bool = field(default=False, kw_only=True)
    name: str = field(default="\0", kw_only=True)  # set for protocol Parse and Bind ("" unnamed)

    def settle(self, state: int) -> None:
        self.state = state
        if state != DEAD:
            # Nothing resolves past a version that is not dead: let the chain go.
            self.previous = None


@dataclass(slots=True, eq=False)
class Statement(Version):
    """A prepared statement: protocol Parse or SQL PREPARE."""

    sql: str = ""
    verdict: Verdict | None = None
    # What the policy returned for `sql` when it was parsed (protocol Parse): asked again at
    # each Bind and Execute, a different answer (a reload, the recorder down) judges it again.
    classified: Verdict | None = None
    # Made by SQL `PREPARE <prepared_as> AS ...` (then `sql` is that whole text, `verdict` its
    # inner statement's); None for a protocol Parse.
    prepared_as: str | None = None
    description: bytes | None = None  # RowDescription body, once the upstream described it
    # For a statement under review: executions already approved and not yet used. An
    # approval covers one execution, not every later Bind/Execute of the statement.
    approved_runs: int = 0


@dataclass(slots=True, eq=False)
class Portal(Version):
    """A portal: protocol Bind of a statement, or a cursor opened by SQL DECLARE."""

    statement: Statement | None = None  # None for a DECLAREd cursor
    lineage: Lineage | None = None  # a cursor's rows' lineage
    formats: tuple[int, ...] | None = None  # Bind's result formats; None: from its RowDescription
    description: bytes | None = None
    cursor: bool = False
    # For a statement running SQL EXECUTE/FETCH: the verdict of its first Execute. The server
    # runs such a portal once and keeps its rows, so later Executes return those rows whatever
    # the name means by then.
    ran: Verdict | None = None
    # Its Execute needs no rehearsal of its own: bound inside a rehearsed unit, approved, or
    # within the planner's estimate (proxy.rehearsal).
    covered: bool = False
    # The approval it was covered by (an approved unit), for the record of its Execute.
    approval: str | None = None


V = TypeVar("V", bound=Version)

#: The server keys prepared statements and portals on the first NAMEDATALEN - 1 bytes of
#: their name (a plain byte cut, hash_search on a NAMEDATALEN key): longer protocol names
#: that share those bytes are one name to it, and must be to the gateway.
_NAME_BYTES = 63


def key(name: str) -> str:
    if len(name) < 16:  # at most 4 bytes a character: short names need no cut
        return name
    raw = name.encode("utf-8", "surrogateescape")
    return name if len(raw) <= _NAME_BYTES else raw[:_NAME_BYTES].decode("utf-8", "surrogateescape")


class Names(Generic[V]):  # V: the kind of definition it holds (Statement or Portal)
    """One namespace (statements or portals): name -> newest version sent."""

    def __init__(self) -> None:
        self._newest: dict[str, Version] = {}

    def define(self, name: str, version: V) -> V:
        self._put(name, version)
        return version

    def drop(self, name: str) -> Version:
        return self._put(name, Version(tombstone=True))

    def _put(self, name: str, version: Version) -> Version:
        name = key(name)
        version.previous = self._newest.get(name)
        self._newest[name] = version
        return version

    def drop_all(self) -> list[Version]:
        return [self.drop(name) for name in list(self._newest)]

    def get(self, name: str) -> V | Version | None:
        """What the server will use for `name` after everything sent so far: a definition,
        an UNCERTAIN version (refuse it), or None (no such name)."""
        version = self._newest.get(key(name))
        while version is not None and version.state == DEAD:
            version = version.previous
        if version is None or (version.tombstone and version.state != UNCERTAIN):
            return None
        return version

    def forget(self, name: str) -> None:
        """The server may have changed what `name` is without the gateway seeing it."""
        tombstone = Version(tombstone=True)
        tombstone.settle(UNCERTAIN)
        self._put(name, tombstone)

    def has(self, name: str) -> bool:
        """Anything (a definition, a tombstone) is kept under `name`."""
        return key(name) in self._newest

    def names(self) -> list[str]:
        return list(self._newest)

    def settle(self, version: Version, state: int) -> None:
        version.settle(state)
        if version.tombstone and state == LIVE:
            self._forget_tombstones()

    def _forget_tombstones(self) -> None:
        for name, version in list(self._newest.items()):
            if version.tombstone and version.state == LIVE:
                del self._newest[name]

    def end_transaction(self) -> None:
        """The transaction ended (ReadyForQuery 'I'): protocol portals are gone, and so are
        cursors, but for WITH HOLD ones: which the gateway does not tell, so they are forgotten
        (what a later FETCH returns is masked whole)."""
        for name, version in list(self._newest.items()):
            if version.state == LIVE and isinstance(version, Portal):
                if version.cursor:
                    self.forget(name)
                else:
                    del self._newest[name]
                continue
            # A newer version still in flight: what it would fall back to is gone too.
            while version.previous is not None and version.state == PENDING:
                prev = version.previous
                if prev.state == LIVE and isinstance(prev, Portal) and not prev.cursor:
                    version.previous = None
                    break
                version = prev
