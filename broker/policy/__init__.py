"""The policy engine: classify each SQL statement as allow, review or block.

Pure: no I/O apart from reading a policy file. The proxy calls `PolicyEngine.classify` for
every statement it sees (simple Query, Parse); see docs/CONTRACTS.md for the contract and
/work/shared/design.md, "Default policy", for what the default preset decides.

Modules, in the order a statement meets them:

- `normalize`: the shape of a statement (literals taken out), the cache key;
- `facts` (with `kinds`, `where_folding`, `bodies`, `copyinfo`): parse with pglast and
  report what the statement does: its kinds, the writes it hides, functions, tables,
  settings, COPY format;
- `flow` (a package): where values come from and go: result lineage, stores under other
  names, and control flow (what the result depends on other than its outputs);
- `rules`, `presets`, `loader`: the rules (built-in presets and YAML policy files);
- `judge`: apply a policy's rules to the facts, producing a `Verdict`;
- `engine`: `PolicyEngine`, which picks the policy for a resource and caller, and caches.
"""

from __future__ import annotations

from .engine import PolicyEngine, ScopedPolicy
from .exceptions import PolicyConfigError, PolicyError
from .facts import Facts, StatementFacts, Subject, extract
from .judge import Policy, judge
from .loader import PolicyDocument, load_policy, parse_policy
from .model import CopyInfo, Decision, Lineage, Verdict
from .normalize import shape
from .presets import PRESETS, Preset
from .rules import Match, NamePattern, Rule

__all__ = [
    "PRESETS",
    "CopyInfo",
    "Lineage",
    "Decision",
    "Facts",
    "Match",
    "NamePattern",
    "Policy",
    "PolicyConfigError",
    "PolicyDocument",
    "PolicyEngine",
    "PolicyError",
    "Preset",
    "Rule",
    "ScopedPolicy",
    "StatementFacts",
    "Subject",
    "Verdict",
    "extract",
    "judge",
    "load_policy",
    "parse_policy",
    "shape",
]
