"""The store's tables, as SQLAlchemy 2 declarative models.

The same models serve SQLite (aiosqlite) and PostgreSQL (asyncpg). The schema itself is
created by the Alembic migrations in `broker/migrations/versions/`, written by hand to match;
`tests/broker/store/test_migrations.py` fails when the two drift apart.

Timestamps are timezone-aware UTC in Python on both backends (`UTCDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so later migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on both backends.

    PostgreSQL keeps `timestamptz`; SQLite has no time zones, so values are stored as naive
    UTC and given their zone back on load. Naive input is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime()}


class GatewayToken(Base):
    """A gateway token: stored only as the SHA-256 of the token, bound to one grant."""

    __tablename__ = "gateway_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(255))  # an agent's person (migration 0007)
    groups: Mapped[list[str]] = mapped_column(JSON)
    resource: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    reusable: Mapped[bool] = mapped_column(Boolean)
    # A single-session token is consumed by its first successful verification.
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_gateway_tokens_token_hash", "token_hash", unique=True),)


class Session(Base):
    """One client connection through the proxy, from startup to termination."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("gateway_tokens.id"))
    principal: Mapped[str] = mapped_column(String(255))
    groups: Mapped[list[str]] = mapped_column(JSON)
    resource: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(63))
    client_addr: Mapped[str | None] = mapped_column(String(255))
    application_name: Mapped[str | None] = mapped_column(Text)
    intent: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(Text)
    statements: Mapped[int] = mapped_column(Integer, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)

    statement_rows: Mapped[list[Statement]] = relationship(
        back_populates="session",
        order_by="Statement.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (
        Index("ix_sessions_started_at", "started_at"),
        Index("ix_sessions_ended_at", "ended_at"),
        Index("ix_sessions_token_id", "token_id"),
    )


def _only_where_set(column: str) -> dict[str, Any]:
    """Keyword arguments that make an `Index` partial: only rows where `column` is set."""
    where = text(f"{column} IS NOT NULL")
    return {"sqlite_where": where, "postgresql_where": where}


class Statement(Base):
    """One statement the proxy saw in a session, with the decision taken on it."""

    __tablename__ = "statements"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("sessions.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(Integer)
    sql: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str | None] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str | None] = mapped_column(Text)
    shadow_decision: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime]
    duration_ms: Mapped[float | None] = mapped_column(Float)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    masked_values: Mapped[int] = mapped_column(Integer, default=0)
    error_sqlstate: Mapped[str | None] = mapped_column(String(5))
    # Recorded result rows (JSON), only for resources with record_results (0005_results).
    results: Mapped[Any | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # The approval it ran under or was refused by (0011_statement_approval); not a foreign
    # key: the approval may live on after this row's session is gone, and the reverse.
    approval_id: Mapped[str | None] = mapped_column(String(36), nullable=True)

    session: Mapped[Session] = relationship(back_populates="statement_rows")

    __table_args__ = (
        # Makes a retried batch idempotent: the recorder inserts with ON CONFLICT DO NOTHING.
        UniqueConstraint("session_id", "seq"),
        Index("ix_statements_started_at", "started_at"),
        # Partial (0012_partial_statement_indexes): both are NULL on nearly every row, and a
        # NULL row should cost the recorder's insert no index entry.
        Index("ix_statements_fingerprint", "fingerprint", **_only_where_set("fingerprint")),
        Index("ix_statements_approval_id", "approval_id", **_only_where_set("approval_id")),
    )


class AuditEventRow(Base):
    """One record of the hash-chained audit log (see `broker/audit/chain.py`).

    `seq` is assigned by the appender as head + 1, never by the database, so the chain has
    no gaps and a missing record shows as one.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=False)
    id: Mapped[str] = mapped_column(String(36))
    ts: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str | None] = mapped_column(String(255))
    session_id: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_audit_events_ts", "ts"),
        Index("ix_audit_events_session_id", "session_id"),
    )


class AuditState(Base):
    """The chain's single head row: written with every append, read by verification.

    `head_*` is the last record appended (a cut tail shows as a head beyond the chain);
    `anchor_*` is the last record archived and pruned by retention, which the first
    remaining record must follow.
    """

    __tablename__ = "audit_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(64))
    anchor_seq: Mapped[int] = mapped_column(BigInteger)
    anchor_hash: Mapped[str] = mapped_column(String(64))


class AccessRequest(Base):
    """A request for a role on a resource, with its reason and outcome.

    `status` moves pending -> granted | denied | expired | cancelled; a granted request
    names the gateway token it produced (the token itself is never stored in the clear).
    """

    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    principal: Mapped[str] = mapped_column(String(255))
    groups: Mapped[list[str]] = mapped_column(JSON)
    resource: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(63))
    reason: Mapped[str] = mapped_column(Text)
    ttl_seconds: Mapped[int] = mapped_column(Integer)
    reusable: Mapped[bool] = mapped_column(Boolean)
    approvers: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    token_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("gateway_tokens.id"))
    created_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_access_requests_status", "status"),
        Index("ix_access_requests_principal", "principal"),
    )


class Lease(Base):
    """An upstream credential issued for a session, until it is revoked.

    The reaper revokes what stays outstanding after its session ended or its lease lapsed
    (a crashed proxy, a revocation that failed while Vault was down). No secret is stored.
    """

    __tablename__ = "leases"

    lease_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(63))
    role: Mapped[str] = mapped_column(String(63))
    session_id: Mapped[str] = mapped_column(String(36))
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        Index("ix_leases_revoked_at", "revoked_at"),
        Index("ix_leases_session_id", "session_id"),
    )


class ApprovalRow(Base):
    """A request a human decides on: an access request or a parked statement.

    See `broker.approvals.model` for the states. The row holds the request and its current
    state; the votes are rows of their own (one per voter: a double click inserts nothing).
    """

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    requester: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(255))
    requester_groups: Mapped[list[str]] = mapped_column(JSON)
    resource: Mapped[str] = mapped_column(String(63))
    role: Mapped[str | None] = mapped_column(String(63))
    reason: Mapped[str | None] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(String(36))
    sql: Mapped[str | None] = mapped_column(Text)
    statement_hash: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    rule: Mapped[str | None] = mapped_column(String(255))
    risk: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    approver_groups: Mapped[list[str]] = mapped_column(JSON)
    quorum: Mapped[int] = mapped_column(Integer)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    fingerprint_window_seconds: Mapped[int] = mapped_column(Integer)
    break_glass: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[list[str]] = mapped_column(JSON)
    decision_reason: Mapped[str | None] = mapped_column(Text)
    scope: Mapped[str | None] = mapped_column(String(16))
    covers_until: Mapped[datetime | None]
    used: Mapped[int] = mapped_column(Integer, default=0)
    reminded_at: Mapped[datetime | None]
    escalated_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_approvals_status", "status"),
        Index("ix_approvals_session", "session_id", "statement_hash"),
        Index("ix_approvals_fingerprint", "requester", "fingerprint"),
    )


class SlackMessageRow(Base):
    """A Slack message posted once per approval and kind (prompt, escalation, break-glass page).

    The row is claimed (ts NULL) before the post and gets the message's channel and ts after
    it, so a redelivered task updates that message instead of posting again, with no need to
    search the channel's history (the app holds no `*:history` scope).
    """

    __tablename__ = "slack_messages"

    approval_id: Mapped[str] = mapped_column(String(36), ForeignKey("approvals.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[datetime]


class ApprovalVoteRow(Base):
    __tablename__ = "approval_votes"

    approval_id: Mapped[str] = mapped_column(String(36), ForeignKey("approvals.id"), primary_key=True)
    voter: Mapped[str] = mapped_column(String(255), primary_key=True)
    choice: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(String(16))
    break_glass: Mapped[bool] = mapped_column(Boolean)
    via: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]


class PrincipalRow(Base):
    """The directory: each principal the broker has seen authenticate, with its groups then.

    Slack approvers are people whose Slack email matches an OIDC email seen here; their
    approver groups are the ones their last OIDC login carried.
    """

    __tablename__ = "principals"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    email: Mapped[str | None] = mapped_column(String(255))
    groups: Mapped[list[str]] = mapped_column(JSON)
    owner: Mapped[str | None] = mapped_column(String(255))
    issuer: Mapped[str] = mapped_column(Text)
    last_seen: Mapped[datetime]

    __table_args__ = (Index("ix_principals_email", "email"),)


class EgressUsage(Base):
    """Rows and bytes one agent read from one resource in one window (the per-agent egress
    budget, proxy.egress_ledger). Windows are fixed: `window_start` is Unix seconds, a multiple
    of `window_seconds`; a changed `agent_window` starts separate rows instead of mixing."""

    __tablename__ = "egress_usage"

    principal: Mapped[str] = mapped_column(String(255), primary_key=True)
    resource: Mapped[str] = mapped_column(String(63), primary_key=True)
    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    window_start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    row_count: Mapped[int] = mapped_column(BigInteger)
    byte_count: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_egress_usage_window_start", "window_start"),)


class SessionSlot(Base):
    """One open session counted against the concurrent-session caps (proxy.admission), held
    by the proxy process serving it. The process renews `expires_at` while the session lives
    and deletes the row when it ends; a process that died leaves rows that lapse at
    `expires_at`, so a crash frees its slots within the lease time."""

    __tablename__ = "session_slots"

    slot_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str | None] = mapped_column(String(64))
    principal: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(63))
    started_at: Mapped[datetime]
    expires_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_session_slots_token_id", "token_id"),
        Index("ix_session_slots_principal", "principal"),
        Index("ix_session_slots_expires_at", "expires_at"),
    )
