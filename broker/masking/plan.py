"""Masker: the per-resource entry point that turns column descriptions into plans.

The proxy calls `plan_rows` once per RowDescription (or Describe) and then the plan's
`mask_values` for every DataRow; `plan_copy` once per CopyOutResponse and then the plan's
`mask_copy_data` for every CopyData. A None plan means "nothing in this result can need
masking": the proxy then forwards those rows without looking at them, which is what keeps
``pgbench -S`` (one int4 column) at wire speed.

Both take the statement's column lineage (`broker.policy.Lineage`, carried on its verdict)
when the proxy has it: outputs derived from a column the name rules mask are then masked
whole too, whatever they are called (`derived`). A statement whose outputs are all bare
columns has no lineage (None), so nothing changes for it.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.masking.config import InferenceMode, MaskingConfig, NameRules
from broker.masking.copyout import CopyPlan, build_copy_plan
from broker.masking.derived import LineageLike, derived_rules, exposed, inferred
from broker.masking.detectors import DETECTORS
from broker.masking.exceptions import MaskingRefused
from broker.masking.messages import located_in_statement, mask_fields, mask_text, withhold
from broker.masking.rows import RowPlan, build_row_plan
from broker.masking.scanner import Scanner
from broker.masking.statements import reads_masked
from broker.masking.types import BINARY_FORMAT, TEXT_FORMAT, ColumnInfo, CopyInfoLike

_PLAN_CACHE_SIZE = 512
_STATEMENT_CACHE_SIZE = 512
_STATEMENT_CACHE_CHARS = 16384


class Masker:
    """Masking for one resource; immutable once built, shared by all its sessions."""

    __slots__ = ("config", "_rules", "_scanner", "_key", "_plans", "_reads")

    def __init__(self, config: MaskingConfig | None = None) -> None:
        self.config = config = config if config is not None else MaskingConfig()
        self._rules = NameRules(config)
        self._scanner = Scanner(
            [d for name, d in DETECTORS.items() if name in config.detectors],
            max_value_bytes=config.max_value_bytes,
        )
        key = config.hmac_key
        self._key = key.get_secret_value().encode("utf-8") if key is not None else None
        # Keyed by the column tuple and lineage: the same statement shape comes back all the
        # time.
        self._plans: dict[tuple[tuple[ColumnInfo, ...], LineageLike | None], RowPlan | None] = {}
        self._reads: dict[str, bool] = {}  # statement text -> reads_masked (notices repeat)

    def mask_message(self, fields: Sequence[tuple[str, str]], statement: str = "") -> list[tuple[str, str]] | None:
        """An ErrorResponse's or NoticeResponse's fields with the data they quote masked
        (`messages.mask_fields`); None when nothing needs to change. `statement` is the SQL
        the message belongs to: when it may read a masked column (`reads_masked`), the
        message's text is withheld whatever its class (`messages.withhold`), unless the
        server locates it in the statement's own text. Without a statement ("": FATAL
        shutdowns, notices between statements) only `mask_fields` applies."""
        if not self.config.enabled:
            return None
        if statement and self.reads_masked(statement) and not located_in_statement(fields, statement):
            return withhold(fields)
        return mask_fields(fields, self._scanner, statement)

    def reads_masked(self, statement: str) -> bool:
        """Might `statement` read a column these rules mask? (`statements.reads_masked`)"""
        try:
            return self._reads[statement]
        except KeyError:
            pass
        found = reads_masked(statement, self._rules)
        if len(statement) > _STATEMENT_CACHE_CHARS:
            return found  # not worth holding on to
        if len(self._reads) >= _STATEMENT_CACHE_SIZE:
            self._reads.clear()
        self._reads[statement] = found
        return found

    def mask_payload(self, text: str) -> str:
        """A notification payload, through the content detectors."""
        return mask_text(text, self._scanner) if self.config.enabled else text

    def exposed(self, stored: Sequence[tuple[str, frozenset[str]]]) -> list[str]:
        """Writes that would put masked values where reads are not masked (`derived.exposed`)."""
        return exposed(stored, self._rules) if self.config.enabled else []

    def inferred(self, controls: Sequence[tuple[str, frozenset[str]]]) -> list[tuple[str, str, InferenceMode]]:
        """Masked columns a statement's result depends on other than as outputs
        (`derived.inferred`): (column, how, mode)."""
        return inferred(controls, self._rules) if self.config.enabled else []

    def plan_rows(self, columns: Sequence[ColumnInfo], lineage: LineageLike | None = None) -> RowPlan | None:
        """The plan for DataRows described by `columns` (of a statement with this
        lineage); None when none can need masking."""
        if not self.config.enabled:
            return None
        cols = tuple(columns)
        key = (cols, lineage)
        try:
            return self._plans[key]
        except KeyError:
            pass
        plan = self._build(cols, lineage)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _build(self, cols: Sequence[ColumnInfo], lineage: LineageLike | None) -> RowPlan | None:
        return build_row_plan(
            cols,
            rules=self._rules,
            scanner=self._scanner,
            hmac_key=self._key,
            derived=derived_rules(cols, lineage, self._rules) if lineage is not None else None,
        )

    def plan_copy(
        self,
        columns: Sequence[ColumnInfo],
        copy_info: CopyInfoLike,
        lineage: LineageLike | None = None,
    ) -> CopyPlan | None:
        """The plan for one COPY's CopyData; None when it needs none (COPY FROM, nothing to
        mask). Raises MaskingRefused when the COPY cannot be masked safely. `lineage` is the
        COPY statement's (that of its query)."""
        if not self.config.enabled or copy_info.direction != "to_stdout":
            return None
        if not columns:
            raise MaskingRefused("COPY TO STDOUT column names are unknown, so it cannot be masked")
        if copy_info.columns and len(copy_info.columns) != len(columns):
            raise MaskingRefused("COPY column list and described columns differ")
        fmt = BINARY_FORMAT if copy_info.format == "binary" else TEXT_FORMAT
        cols = [ColumnInfo(c.name, c.type_oid, fmt) for c in columns]
        plan = self._build(cols, lineage)
        if plan is None:
            return None
        return build_copy_plan(plan, copy_info)
