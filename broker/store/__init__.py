"""The broker's store: SQLAlchemy 2 async over SQLite (default) or PostgreSQL.

Public surface: `Store` (open/close, tokens, sessions, statements) and the plain records it
takes and returns. See `db.py` for the lifecycle and `tokens.py` for the token scheme.
"""

from broker.store.db import Store, create_engine
from broker.store.egress_usage import EgressCharge
from broker.store.records import (
    Grant,
    IssuedToken,
    SessionDetail,
    SessionInfo,
    SessionStats,
    SessionSweep,
    StatementInfo,
    StatementRecord,
)

__all__ = [
    "EgressCharge",
    "Grant",
    "IssuedToken",
    "SessionDetail",
    "SessionInfo",
    "SessionStats",
    "SessionSweep",
    "StatementInfo",
    "StatementRecord",
    "Store",
    "create_engine",
]
