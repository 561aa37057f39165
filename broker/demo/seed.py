"""Seed the demo upstream: database `demo`, tables `customers` and `orders`, roles
`demo_rw` and `demo_ro`.

Idempotent: a database that carries the seed marker (a comment written in the same
transaction as the data) is left alone, so re-running `jitgate demo` keeps what the last
session changed; a half-seeded one is dropped and rebuilt. Role passwords are persisted
in the upstream's state file and re-applied on every call.
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
    """Login roles of the demo database (scram-sha-256 over TCP)."""

    rw_user: str = RW_ROLE
    rw_password: str = field(default="", repr=False)
    ro_user: str = RO_ROLE
    ro_password: str = field(default="", repr=False)
    dbname: str = DEMO_DB


async def seed_demo(upstream: Upstream) -> DemoRoles:
    """Create (or adopt) the seeded `demo` database and its roles; returns their passwords."""
    roles = DemoRoles(rw_password=upstream.password_for(RW_ROLE),
                      ro_password=upstream.password_for(RO_ROLE))
    admin = await asyncpg.connect(upstream.dsn("postgres"))
    try:
        await _ensure_roles(admin, roles)
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
            await conn.execute(f"COMMENT ON DATABASE {DEMO_DB} IS '{SEED_MARK}'")
    finally:
        await conn.close()
    return roles


async def _ensure_roles(admin: asyncpg.Connection, roles: DemoRoles) -> None:
    for name, password in ((roles.rw_user, roles.rw_password),
                           (roles.ro_user, roles.ro_password)):
        await admin.execute(
            f"DO $$ BEGIN CREATE ROLE {name} LOGIN; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        # Utility statements take no bind parameters; format() quotes the literal server-side.
        stmt = await admin.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, "
                                    "$2::text)", name, password)
        await admin.execute(stmt)
    # The auth-method roles get the read-write privileges too, so a proxy test can exercise
    # any upstream auth method against the same tables.
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
