"""The broker's store: SQLAlchemy 2 async over SQLite (default) or PostgreSQL.

Public surface: `Store` (open/close/transaction, and its repositories `tokens`, `sessions`,
`access`, `approvals`, `audit`, `egress`, `slots`) and the plain records they take and
return. See `db.py` for the lifecycle, `tokens.py` for the token scheme and `recorder.py`
for the proxy's buffered writer of session records.
"""

from broker.store.db import Store, create_engine
from broker.store.egress_usage import EgressCharge
from broker.store.records import (
    Grant,
    IssuedToken,
    SessionDetail,
    SessionInfo,
    SessionStart,
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
    "SessionStart",
    "SessionStats",
    "SessionSweep",
    "StatementInfo",
    "StatementRecord",
    "Store",
    "create_engine",
]
