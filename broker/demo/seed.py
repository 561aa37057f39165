"""Seed the demo upstream: database `demo`, tables `customers` and `orders`, roles
`demo_rw` and `demo_ro`.

Idempotent: a database that carries the seed marker (a comment written in the same
transaction as the data) is left alone, so re-running `jitgate demo` keeps what the last
session changed; a half-seeded one is dropped and rebuilt.

The groups' login depends on who connects as them. `jitgate demo` seeds with
`group_logins=False`: its sessions log in as per-session roles (OpenBao's, or the local
issuer's) that are members of a group and run as it, so `current_user` is the group, and a
role may change its own password. A group that could log in would give any session that ran
`ALTER ROLE demo_rw PASSWORD ...` a standing upstream login; so there the groups are `NOLOGIN
PASSWORD NULL`, re-applied on every start (which also locks a cluster an older demo left with
login groups), and a non-superuser cannot give itself LOGIN back. The test suite's shared
upstream keeps the default, login groups whose passwords live in the upstream's state file and
are re-applied on every call, because many tests connect as demo_rw directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from broker.demo.pii import generate_customers, generate_orders
from broker.demo.upstream import MD5_USER, TRUST_USER, Upstream

DEMO_DB = "demo"
RW_ROLE = "demo_rw"
RO_ROLE = "demo_ro"
SEED_MARK = "jitgate demo seed v1"

_SCHEMA = """
CREATE TABLE customers (
    id            serial PRIMARY KEY,
    full_name     text NOT NULL,
    email         text NOT NULL UNIQUE,
    phone         text,
    ssn           text,
    card_number   text,
    api_key       text,
    password_hash text,
    notes         text
);
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    -- CASCADE so that an approved `DELETE FROM customers` really runs in the demo instead of
    -- failing on the foreign key.
    customer_id integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    status      text NOT NULL,
    amount      numeric(10, 2) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);
"""

_GRANTS = f"""
GRANT USAGE ON SCHEMA public TO {RW_ROLE}, {RO_ROLE};
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, orders TO {RW_ROLE};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {RW_ROLE};
GRANT SELECT ON customers, orders TO {RO_ROLE};
"""


@dataclass(frozen=True)
class DemoRoles:
    """Group roles of the demo database; passwords are empty when the groups cannot log in."""

    rw_user: str = RW_ROLE
    rw_password: str = field(default="", repr=False)
    ro_user: str = RO_ROLE
    ro_password: str = field(default="", repr=False)
    dbname: str = DEMO_DB


async def seed_demo(upstream: Upstream, *, group_logins: bool = True) -> DemoRoles:
    """Create (or adopt) the seeded `demo` database and its roles; returns their passwords
    (none without `group_logins`: see the module docstring)."""
    roles = (DemoRoles(rw_password=upstream.password_for(RW_ROLE),
                       ro_password=upstream.password_for(RO_ROLE))
             if group_logins else DemoRoles())
    admin = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        await _ensure_roles(admin, roles, auth_test_roles=upstream.auth_test_roles, logins=group_logins)
        marker = await admin.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            DEMO_DB)
        if marker == SEED_MARK:
            return roles
        # No marker: absent, or an earlier seed died half way. Rebuild from scratch.
        await admin.execute(f"DROP DATABASE IF EXISTS {DEMO_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DEMO_DB}")
    finally:
        await admin.close()

    conn = await asyncpg.connect(upstream.dsn(DEMO_DB))
    try:
        async with conn.transaction():
            await conn.execute(_SCHEMA)
            await _insert_rows(conn)
            await conn.execute(_GRANTS)
            # Statistics from the start: a never-analysed table makes the planner guess from its
            # page count (thousands of rows for a handful), and approval cards show that guess.
            await conn.execute("ANALYZE customers, orders")
            await conn.execute(f"COMMENT ON DATABASE {DEMO_DB} IS '{SEED_MARK}'")
    finally:
        await conn.close()
    return roles


async def _ensure_roles(admin: asyncpg.Connection, roles: DemoRoles, *, auth_test_roles: bool,
                        logins: bool) -> None:
    for name, password in ((roles.rw_user, roles.rw_password),
                           (roles.ro_user, roles.ro_password)):
        await admin.execute(
            f"DO $$ BEGIN CREATE ROLE {name} {'LOGIN' if logins else 'NOLOGIN'}; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        if not logins:
            # Every start, not only the first: it also clears a password a session set since.
            await admin.execute(f"ALTER ROLE {name} NOLOGIN PASSWORD NULL")
            continue
        # Utility statements take no bind parameters; format() quotes the literal server-side.
        stmt = await admin.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, "
                                    "$2::text)", name, password)
        await admin.execute(stmt)
    # The auth-method roles (tests only, see broker/demo/upstream.py) get the read-write
    # privileges too, so a proxy test can exercise any upstream auth method on the same tables.
    if auth_test_roles:
        await admin.execute(f"GRANT {RW_ROLE} TO {MD5_USER}, {TRUST_USER}")


async def _insert_rows(conn: asyncpg.Connection) -> None:
    customers = generate_customers()
    await conn.executemany(
        "INSERT INTO customers (full_name, email, phone, ssn, card_number, api_key,"
        " password_hash, notes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(c.full_name, c.email, c.phone, c.ssn, c.card_number, c.api_key, c.password_hash,
          c.notes) for c in customers])
    await conn.executemany(
        "INSERT INTO orders (customer_id, status, amount, created_at) VALUES ($1, $2, $3, $4)",
        [(o.customer_id, o.status, o.amount, o.created_at)
         for o in generate_orders(len(customers))])
