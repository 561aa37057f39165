"""Result masking: secrets and PII never reach the client, in DataRows or COPY output.

Pure (no I/O). One `Masker` per resource, built from its `MaskingConfig`::

    masker = Masker(MaskingConfig(extra_columns=["customer_note"]))
    plan = masker.plan_rows([ColumnInfo("email", 25, 0), ColumnInfo("id", 23, 0)])
    values, n_masked = plan.mask_values([b"jane.doe@example.com", b"7"])
    # values == [b"j***@example.com", b"7"], n_masked == 1; (None, 0) when nothing changed

Two mechanisms, both on by default:

- **By column name** (`config`): a matching column is masked whole, keeping a recognisable
  shape for text (`shapes`), NULL for other types, or an HMAC pseudonym for
  `deterministic_columns`.
- **By content** (`detectors`, `scanner`): every text-like value is scanned and only the
  matched spans are replaced (an e-mail inside a sentence, a JWT in a log line).

And, given the statement's column lineage (`derived`), values computed from a masked column
(``reverse(ssn)``, ``upper(email) as e``, ``string_agg(ssn, ',')``) are masked whole.

Errors and notices (`messages`): the data they quote is masked, and their whole text is
withheld when the statement may read a masked column (`statements`).

`rows` documents the treatment of each column type and format; `copyout` the COPY formats;
`exceptions` the error tree. Everything the proxy needs is re-exported here.
"""

from __future__ import annotations

from broker.masking.config import DEFAULT_COLUMN_PATTERNS, MaskingConfig
from broker.masking.copyout import CopyPlan
from broker.masking.derived import LineageLike
from broker.masking.detectors import DEFAULT_DETECTORS, DETECTORS
from broker.masking.exceptions import MaskingError, MaskingRefused
from broker.masking.plan import Masker
from broker.masking.rows import RowPlan
from broker.masking.types import ColumnInfo, CopyInfoLike

__all__ = [
    "DEFAULT_COLUMN_PATTERNS",
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "LineageLike",
    "ColumnInfo",
    "CopyInfoLike",
    "CopyPlan",
    "Masker",
    "MaskingConfig",
    "MaskingError",
    "MaskingRefused",
    "RowPlan",
]
