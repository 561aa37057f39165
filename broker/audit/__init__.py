"""The tamper-evident audit trail: pure chain arithmetic (`chain.py`), pure event
constructors (`events.py`), and export formats (`export.py`, `ocsf.py`).

The store appends and reads (`broker/store/audit.py`); nothing here does I/O.
"""

from broker.audit.chain import GENESIS_HASH, AuditRecord, Break, ChainVerifier, VerifyReport
from broker.audit.events import AuditEvent

__all__ = ["GENESIS_HASH", "AuditEvent", "AuditRecord", "Break", "ChainVerifier", "VerifyReport"]
