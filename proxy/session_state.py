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
        # Something ran in the open extended batch (an Execute): a write after it cannot be
        # rehearsed alone (proxy.rehearsal), its transaction already holds other work.
        self.batch_ran = False
        # The write being rehearsed (proxy.rehearsal.Rehearsal): while set, every answer is
        # held for it instead of going to the client.
        self.rehearsal: Any = None
        self.txn_status = b"I"
        self.stats = Stats()
        # The versions the last verdict was composed from (proxy.decide asked `prepared` and
        # `cursor_rows`): the statement runs with those only if they are what the server has.
        self._looked_up: list[Version] = []
        self._cursors = False  # a DECLAREd cursor may be known (see forget_cursors)

    # -- names ------------------------------------------------------------------------------

    def statement(self, name: str) -> Statement | None:
        """The prepared statement `name` will be when the server reaches what is sent now."""
        return _sure(self.statements.get(name), Statement)

    def portal(self, name: str) -> Portal | None:
        return _sure(self.portals.get(name), Portal)

    def prepared(self, name: str) -> Verdict | None:
        """proxy.decide.Names: the verdict of what `name` holds, None when uncertain or unknown."""
        statement = self.statement(name)
        if statement is None:
            return None
        self._looked_up.append(statement)
        return statement.verdict

    def cursor_rows(self, name: str) -> Lineage | None:
        """proxy.decide.Names: the lineage of portal `name`'s rows (ANY_SOURCE when unknown)."""
        portal = self.portal(name)
        if portal is None:
            return ANY_SOURCE
        self._looked_up.append(portal)
        if portal.statement is not None:
            return portal.statement.verdict.lineage if portal.statement.verdict is not None else ANY_SOURCE
        return portal.lineage

    def take_uses(self) -> tuple[Version, ...]:
        """The versions looked up since the last call (see `_looked_up`)."""
        uses = tuple(self._looked_up)
        self._looked_up.clear()
        return uses

    def sql_names(self, sql: str, verdict: Verdict, classified: Verdict | None = None) -> tuple[Version, ...]:
        """The names a statement string makes and drops when it runs (drops first:
        ``DEALLOCATE s; PREPARE s AS ...`` is the common order)."""
        made: list[Version] = []
        for dname in verdict.deallocates:
            made.extend(self.statements.drop_all() if dname is None else [self.statements.drop(dname)])
        for closed in verdict.closes:
            made.extend(self.portals.drop_all() if closed is None else [self.portals.drop(closed)])
        for name, inner in verdict.prepares:
            made.append(
                self.statements.define(name, Statement(sql=sql, verdict=inner, classified=classified, prepared_as=name))
            )
        for declared in verdict.declares:
            made.append(self.portals.define(declared, Portal(lineage=verdict.lineage, cursor=True)))
            self._cursors = True
        return tuple(made)

    @property
    def cursors(self) -> bool:
        """A DECLAREd cursor may be known (what forget_cursors looks through)."""
        return self._cursors

    def forget_cursors(self, keep: tuple[str, ...] = ()) -> None:
        """Cursors opened by SQL may have been closed and reopened under the same name by
        code the gateway does not see (a function, a trigger, the query of a cursor being
        fetched): from now on, what they return is masked whole and protocol Execute of them
        is refused, until they are declared again. Protocol portals are the client's own."""
        if not self._cursors:
            return  # (the common case: no DECLAREd cursor, nothing to look through)
        left = False
        for name in self.portals.names():
            version = self.portals.get(name)
            if isinstance(version, Portal) and version.cursor:
                if name in keep:
                    left = True
                else:
                    self.portals.forget(name)
        self._cursors = left

    def sent(self, sql: str, verdict: Verdict, classified: Verdict | None = None) -> tuple[Version, ...]:
        """A statement string is on its way: the names it makes and drops (`sql_names`), and
        what it may do to cursors. Cursor statements alone (DECLARE, FETCH, CLOSE) keep the
        cursors they name; anything else may run code that reopens any cursor.
        """
        cursor_only = verdict.cursor_only or verdict.statement_count == verdict.transactions
        self.forget_cursors(verdict.fetches if cursor_only else ())
        if verdict.deallocates or verdict.closes or verdict.prepares or verdict.declares:
            made = self.sql_names(sql, verdict, classified)
        else:
            made = ()
        if not cursor_only and verdict.declares and verdict.statement_count > 1:
            self.forget_cursors()  # its other statements may reopen what it declared
        return made

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
