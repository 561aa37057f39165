"""MaskingConfig: what to mask for one resource, and its compiled column-name rules.

Defaults (what a resource gets with ``masking: {}``):

- `columns`: `DEFAULT_COLUMN_PATTERNS` below; shell-style globs (``*``, ``?``, ``[...]``)
  matched case-insensitively against the whole column name as the result names it. An
  output that is not the bare column (``select email as e``, ``upper(email)``) is caught
  through the statement's column lineage when the proxy has it (`derived`), and by content.
- `extra_columns`: added to `columns` (so a resource can extend the defaults without
  repeating them); `ignore_columns`: never masked by name (content detectors still run),
  e.g. ``email_verified``.
- `detectors`: every detector but ``assignment`` (see `broker.masking.detectors`).
- `deterministic_columns`: globs of columns whose values become HMAC pseudonyms instead of
  stars; needs `hmac_key`. They need not also be listed in `columns`.
- `max_value_bytes`: 1 MiB. A value longer than this that the cheap pre-check flags is not
  scanned span by span; it is masked whole instead (``[masked:too-large]`` for text, a JSON
  string of it for json, NULL for arrays, bytea and other types). Fail closed: large random
  blobs (bytea) nearly always contain a ``@`` or ``$`` byte, so they come back NULL.
- `enabled`: True. False makes the masker plan nothing (results pass untouched).
- `inference`: ``review``. What happens to a statement whose result depends on a masked
  column other than by showing it masked (a WHERE, ORDER BY, LIMIT or CASE condition on it:
  `broker.policy.flow.controls`): ``review`` parks it for an approver, ``block`` refuses it,
  ``allow`` lets it run (the agent can then read the column a character at a time).
  `inference_columns` maps column globs to a mode of their own (first match wins), e.g.
  ``{"email": allow}`` where agents must filter and sort by e-mail and the risk is accepted.

Precedence: `ignore_columns` > `deterministic_columns` > `columns` + `extra_columns`.
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from broker.masking.detectors import DEFAULT_DETECTORS, DETECTORS

DEFAULT_COLUMN_PATTERNS: tuple[str, ...] = (
    # contact details
    "email", "e_mail", "*email*", "*e_mail*",
    "phone", "*phone*", "mobile", "mobile_number", "fax",
    # government identifiers
    "ssn", "*_ssn", "social_security*",
    # credentials
    "password*", "*_password", "passwd", "*passwd*", "*secret*", "*token*",
    "api_key", "apikey", "*api_key*", "*apikey*", "access_key", "*_access_key",
    "private_key", "*private_key*", "credential*",
    # payment
    "card_number", "*card_number*", "cc_number", "credit_card*", "pan", "cvv", "cvc",
    "iban", "*_iban",
    # planner statistics (pg_stats, pg_stats_ext): sample values of every column, masked ones too
    "most_common_vals", "most_common_elems", "histogram_bounds",
)  # fmt: skip

MIN_HMAC_KEY_CHARS = 16


class InferenceMode(enum.StrEnum):
    """What a statement gets when its result depends on a masked column (see the module doc)."""

    REVIEW = "review"
    BLOCK = "block"
    ALLOW = "allow"


class MaskingConfig(BaseModel):
    """Masking settings of one resource (``resources.<name>.masking`` in the YAML)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # Sequence so that callers may pass lists; stored as tuples (the model is frozen).
    columns: Sequence[str] = DEFAULT_COLUMN_PATTERNS
    extra_columns: Sequence[str] = ()
    ignore_columns: Sequence[str] = ()
    detectors: Sequence[str] = DEFAULT_DETECTORS
    deterministic_columns: Sequence[str] = ()
    hmac_key: SecretStr | None = None
    max_value_bytes: int = Field(default=1 << 20, ge=1)
    inference: InferenceMode = InferenceMode.REVIEW
    inference_columns: Mapping[str, InferenceMode] = Field(default_factory=dict)

    @field_validator(
        "columns", "extra_columns", "ignore_columns", "deterministic_columns", mode="after"
    )
    @classmethod
    def _patterns_not_blank(cls, patterns: Sequence[str]) -> tuple[str, ...]:
        for p in patterns:
            if not p.strip():
                raise ValueError("column patterns must not be empty")
        return tuple(patterns)

    @field_validator("inference_columns", mode="after")
    @classmethod
    def _inference_patterns_not_blank(cls, modes: Mapping[str, InferenceMode]) -> dict[str, InferenceMode]:
        for pattern in modes:
            if not pattern.strip():
                raise ValueError("column patterns must not be empty")
        return dict(modes)

    @field_validator("detectors", mode="after")
    @classmethod
    def _known_detectors(cls, names: Sequence[str]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detector(s) {unknown}; known: {sorted(DETECTORS)}")
        return tuple(names)

    @model_validator(mode="after")
    def _key_for_pseudonyms(self) -> MaskingConfig:
        if self.deterministic_columns:
            # A random per-process key would silently break joins across proxy processes.
            if self.hmac_key is None:
                raise ValueError("deterministic_columns needs hmac_key")
            if len(self.hmac_key.get_secret_value()) < MIN_HMAC_KEY_CHARS:
                raise ValueError(f"hmac_key must be at least {MIN_HMAC_KEY_CHARS} characters")
        return self


class ColumnRule(enum.Enum):
    KEEP = "keep"  # not matched by name: content detectors only
    MASK = "mask"  # matched by name: masked whole
    PSEUDONYM = "pseudonym"  # matched by deterministic_columns


def compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive regex matching a whole name against any of the globs."""
    parts = [fnmatch.translate(p) for p in patterns]
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE)


class NameRules:
    """The column-name half of a MaskingConfig, compiled once."""

    __slots__ = ("_ignore", "_inference", "_inference_default", "_mask", "_pseudonym")

    def __init__(self, config: MaskingConfig) -> None:
        self._inference = [(compile_globs([glob]), mode) for glob, mode in config.inference_columns.items()]
        self._inference_default = config.inference
        self._ignore = compile_globs(config.ignore_columns)
        self._pseudonym = compile_globs(config.deterministic_columns)
        self._mask = compile_globs((*config.columns, *config.extra_columns))

    def rule(self, name: str) -> ColumnRule:
        if self._ignore is not None and self._ignore.match(name):
            return ColumnRule.KEEP
        if self._pseudonym is not None and self._pseudonym.match(name):
            return ColumnRule.PSEUDONYM
        if self._mask is not None and self._mask.match(name):
            return ColumnRule.MASK
        return ColumnRule.KEEP

    def inference(self, name: str | None) -> InferenceMode:
        """The inference mode of a masked column (None: one the gateway cannot name)."""
        if name is not None:
            for pattern, mode in self._inference:
                if pattern is not None and pattern.match(name):
                    return mode
        return self._inference_default
