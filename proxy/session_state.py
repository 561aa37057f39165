"""What the relay machine knows of one session, shared by its two halves (proxy.requests,
client to server; proxy.answers, server to client): the messages in flight, the names the
server holds, and the few facts of the protocol position that are not an entry's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from broker.policy.model import Lineage, Verdict
from proxy.decide import ANY_SOURCE
from proxy.inflight import SYNC, Entry
from proxy.names import DEAD, PENDING, UNCERTAIN, Names, Portal, Statement, Version
from proxy.records import Stats


class SessionState:
    def __init__(self) -> None:
        self.inflight: deque[Entry] = deque()
        self.statements: Names[Statement] = Names()
        self.portals: Names[Portal] = Names()
        self.open_extended = False  # extended messages sent since the last Sync
        # The server skips every message up to the next Sync (an error in an extended batch,
        # ours or its own): until the client's Sync nothing is forwarded.
        self.skipping = False
        self.copy_from: Entry | None = None  # a COPY FROM STDIN whose data the client has not ended
        self.txn_status = b"I"
        self.stats = Stats()

    # -- names ------------------------------------------------------------------------------

    def statement(self, name: str) -> Statement | None:
        """The prepared statement `name` will be when the server reaches what is sent now."""
        return _sure(self.statements.get(name), Statement)

    def portal(self, name: str) -> Portal | None:
        return _sure(self.portals.get(name), Portal)

    def prepared(self, name: str) -> Verdict | None:
        """proxy.decide.Names: the verdict of what `name` holds, None when uncertain or unknown."""
        statement = self.statement(name)
        return statement.verdict if statement is not None else None

    def cursor_rows(self, name: str) -> Lineage | None:
        """proxy.decide.Names: the lineage of portal `name`'s rows (ANY_SOURCE when unknown)."""
        portal = self.portal(name)
        if portal is None:
            return ANY_SOURCE
        if portal.statement is not None:
            return portal.statement.verdict.lineage if portal.statement.verdict is not None else ANY_SOURCE
        return portal.lineage

    def sql_names(self, sql: str, verdict: Verdict) -> tuple[Version, ...]:
        """The names a statement string makes and drops when it runs (drops first:
        ``DEALLOCATE s; PREPARE s AS ...`` is the common order)."""
        made: list[Version] = []
        for dname in verdict.deallocates:
            made.extend(self.statements.drop_all() if dname is None else [self.statements.drop(dname)])
        for closed in verdict.closes:
            made.extend(self.portals.drop_all() if closed is None else [self.portals.drop(closed)])
        for name, inner in verdict.prepares:
            made.append(self.statements.define(name, Statement(sql=sql, verdict=inner)))
        for declared in verdict.declares:
            made.append(self.portals.define(declared, Portal(lineage=verdict.lineage, cursor=True)))
        return tuple(made)

    def settle(self, made: tuple[Version, ...], state: int) -> None:
        for version in made:
            if version.state == PENDING:
                names: Names[Any] = self.portals if isinstance(version, Portal) else self.statements
                names.settle(version, state)

    # -- the server's skip rule ---------------------------------------------------------------

    def discard_to_sync(self) -> None:
        """After an error in an extended message the server skips every message up to Sync,
        a Query or FunctionCall among them: those get no answer, and make nothing."""
        inflight = self.inflight
        while inflight and inflight[0].kind != SYNC:
            skipped = inflight.popleft()
            self.settle(skipped.made, DEAD)
            if self.copy_from is skipped:
                self.copy_from = None
        if not inflight:
            self.skipping = True  # the client's Sync is still to come


def _sure(version: Version | None, kind: type[Any]) -> Any:
    """`version` when it is a definition of `kind` the gateway is sure of, else None."""
    if version is None or version.state == UNCERTAIN or not isinstance(version, kind):
        return None
    return version
