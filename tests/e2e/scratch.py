"""What the attack and rehearsal modules share: a test reviewer, and a scratch database with a
login role of its own for a module's private gateway.

    reviewer = TestReviewer()
    with scratch_database(upstream, demo_roles, "jg_rh", grants=[...]) as scratch:
        ...  # scratch.login / scratch.password / scratch.db, dropped afterwards
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from broker.demo.seed import DemoRoles
from broker.demo.upstream import Upstream
from proxy.hooks import ReviewOutcome

PRISTINE_DB = "demo_pristine"  # tests/conftest.py: the seeded demo, cloned per database


@dataclass
class Seen:
    sql: str
    rule: str
    blast: Any


class TestReviewer:
    """Records what each review showed; approves a statement text it was told to, once;
    denies the rest (a second review of the same text too: an approval covers one execution).
    With `hold` set it waits that long first, to look at the server meanwhile."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.approve: list[str] = []
        self.hold = 0.0

    async def review(
        self, *, session: Any, sql: str, verdict: Any, notify: Any, estimate: Any = None, blast_radius: Any = None
    ) -> ReviewOutcome:
        self.seen.append(Seen(sql, verdict.rule, blast_radius))
        if self.hold:
            await asyncio.sleep(self.hold)
        approval_id = f"test-approval-{len(self.seen)}"  # what the record of its run carries
        if sql in self.approve:
            self.approve.remove(sql)
            return ReviewOutcome(approved=True, approval_id=approval_id)
        return ReviewOutcome(approved=False, reason="denied by the test reviewer", approval_id=approval_id)

    async def session_ended(self, session_id: str) -> None:
        return None

    def reset(self) -> None:
        self.seen.clear()
        self.approve.clear()
        self.hold = 0.0


@dataclass(frozen=True)
class Scratch:
    login: str  # the upstream role the module's gateway logs in as
    password: str
    db: str  # a copy of the seeded demo database
    extra_roles: tuple[str, ...]


@contextmanager
def scratch_database(
    upstream: Upstream, demo_roles: DemoRoles, prefix: str, *, extra_roles: int = 0
) -> Iterator[Scratch]:
    """A fresh copy of the demo database and a login role (a member of demo_rw, and of
    `extra_roles` new NOLOGIN roles), all dropped on exit."""
    suffix = secrets.token_hex(3)
    login, db = f"{prefix}_{suffix}", f"{prefix}_{suffix}"
    roles = tuple(f"{prefix}_r{i}_{suffix}" for i in range(extra_roles))
    password = secrets.token_urlsafe(18)
    with psycopg.connect(upstream.dsn("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(login), sql.Literal(password)))
        for role in roles:
            admin.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))
        admin.execute(sql.SQL("grant {} to {}").format(
            sql.SQL(", ").join(sql.Identifier(r) for r in (*roles, demo_roles.rw_user)), sql.Identifier(login)
        ))
        admin.execute(sql.SQL("create database {} template {}").format(sql.Identifier(db), sql.Identifier(PRISTINE_DB)))
    try:
        yield Scratch(login, password, db, roles)
    finally:
        with psycopg.connect(upstream.dsn("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(db)))
            for role in (login, *roles):
                admin.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role)))
