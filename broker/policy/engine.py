"""`PolicyEngine`: the policy the proxy calls for every statement, with its cache.

::

    engine = PolicyEngine.preset("agent-safe")          # or .from_file("policy.yaml")
    verdict = engine.classify(sql, resource="demo", groups=("ai-agents",))

Classifying means parsing, which costs tens of microseconds; the proxy does it for every
statement. So verdicts are cached per policy scope in two bounded LRU maps:

- by *exact text*: the only key for verdicts that depended on a literal's value
  (``WHERE 1=1``, ``set_config('role', ...)``, COPY options, function bodies) and for text
  the shape lexer will not key; and the fast path for text sent again verbatim (the
  extended protocol's ``... WHERE id = $1``);
- by *shape* (`normalize.shape`: the text with literal values taken out), for all other
  verdicts, so that ``... WHERE aid = 48213`` and ``... WHERE aid = 17`` share one entry.

A lookup tries the exact text, then the shape, then parses. A parsed verdict is stored
under its exact text, and under its shape only when the classifier reports that it read no
literal value, which is what makes sharing it sound (the reasoning is in `normalize`).
Both maps are bounded (10,000 entries each by default); statements longer than 64 KiB are
not cached at all.

The caches are OrderedDicts guarded only by the GIL: safe for asyncio and for threads (a
race at worst computes a verdict twice or drops a recency update).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from .exceptions import PolicyConfigError
from .facts import extract
from .judge import Policy, judge
from .loader import PolicyDocument, Scope, load_policy, parse_policy
from .model import DEFAULT_MAX_ROWS, RowLimits, Verdict
from .normalize import shape
from .presets import PRESETS
from .timeouts import DEFAULT_TIMEOUTS

__all__ = ["PolicyEngine", "ScopedPolicy"]

DEFAULT_CACHE_SIZE = 10_000
MAX_CACHED_TEXT = 65_536
_MAX_SCOPES = 1_024


class _LRU:
    """A bounded map that forgets the least recently used entry."""

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._data: OrderedDict[str, Verdict] = OrderedDict()
        self._size = size

    def get(self, key: str) -> Verdict | None:
        value = self._data.get(key)
        if value is not None:
            try:
                self._data.move_to_end(key)
            except KeyError:  # evicted by another thread in between: still a valid answer
                pass
        return value

    def put(self, key: str, value: Verdict) -> None:
        if self._size <= 0:
            return
        self._data[key] = value
        if len(self._data) > self._size:
            try:
                self._data.popitem(last=False)
            except KeyError:
                pass

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class ScopedPolicy:
    """One policy (preset + operator rules for one resource and set of groups) and its
    caches. `PolicyEngine.classify` picks one; it can also be used directly."""

    __slots__ = ("exact", "policy", "shapes")

    def __init__(self, policy: Policy, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.policy = policy
        self.exact = _LRU(cache_size)
        self.shapes = _LRU(cache_size)

    def classify(self, sql: str) -> Verdict:
        verdict = self.exact.get(sql)
        if verdict is not None:
            return verdict
        if len(sql) > MAX_CACHED_TEXT:
            return judge(self.policy, extract(sql))
        key = shape(sql)
        if key is not None:
            verdict = self.shapes.get(key)
            if verdict is not None:
                return verdict
        facts = extract(sql)
        verdict = judge(self.policy, facts)
        # The exact text too: a client using the extended protocol sends the same text with
        # $n parameters every time, and an exact hit skips the lexer.
        self.exact.put(sql, verdict)
        if key is not None and not facts.literal_sensitive:
            self.shapes.put(key, verdict)
        return verdict


class PolicyEngine:
    """Classifies statements for any resource and caller, under one policy document."""

    def __init__(self, document: PolicyDocument, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.document = document
        self._cache_size = cache_size
        self._default = ScopedPolicy(self._policy(document.top, ()), cache_size)
        self._scoped: dict[tuple[str | None, tuple[str, ...]], ScopedPolicy] = {}
        # Only groups the document mentions can change a decision: callers' other groups
        # are dropped from the scope key, so they cannot multiply the caches.
        self._known_groups = frozenset(document.groups).union(
            *(set(groups) for groups in document.resource_groups.values())
        )

    # Construction ----------------------------------------------------------------------

    @classmethod
    def preset(
        cls, name: str = "agent-safe", *, cache_size: int = DEFAULT_CACHE_SIZE
    ) -> PolicyEngine:
        """An engine for a built-in preset: agent-safe, observe or read-only."""
        if name not in PRESETS:
            choices = ", ".join(PRESETS)
            raise PolicyConfigError(
                [("preset", f"unknown preset {name!r}: choose one of {choices}")]
            )
        return cls(PolicyDocument(Scope(preset=name)), cache_size=cache_size)

    @classmethod
    def from_file(cls, path: str | Path, *, cache_size: int = DEFAULT_CACHE_SIZE) -> PolicyEngine:
        """An engine for a YAML policy file (see `loader`); errors name the YAML key."""
        return cls(load_policy(path), cache_size=cache_size)

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> PolicyEngine:
        return cls(parse_policy(text, source=source))

    @classmethod
    def load(cls, spec: str, *, cache_size: int = DEFAULT_CACHE_SIZE) -> PolicyEngine:
        """A preset name or a path to a policy file, as `resources.*.policy` holds it."""
        if spec in PRESETS:
            return cls.preset(spec, cache_size=cache_size)
        return cls.from_file(spec, cache_size=cache_size)

    # Classifying -----------------------------------------------------------------------

    def classify(
        self, sql: str, resource: str | None = None, groups: Sequence[str] = ()
    ) -> Verdict:
        """The verdict on `sql` (one or more statements) for this resource and caller."""
        if not self.document.scoped:
            return self._default.classify(sql)
        return self.scope(resource, groups).classify(sql)

    def bind(self, resource: str) -> Callable[[str, Sequence[str]], Verdict]:
        """``(sql, groups) -> Verdict`` for one resource, the shape `proxy.hooks` expects."""

        def classify(sql: str, groups: Sequence[str]) -> Verdict:
            return self.classify(sql, resource=resource, groups=groups)

        return classify

    def scope(self, resource: str | None, groups: Sequence[str]) -> ScopedPolicy:
        """The policy (and caches) that apply to `resource` and `groups`."""
        if not self.document.scoped:
            return self._default
        relevant = tuple(g for g in groups if g in self._known_groups)
        if (
            resource not in self.document.resources
            and resource not in self.document.resource_groups
        ):
            resource = None
        if resource is None and not relevant:
            return self._default
        key = (resource, relevant)
        scoped = self._scoped.get(key)
        if scoped is None:
            scopes = list(self.document.scopes_for(resource, relevant))
            scoped = ScopedPolicy(self._policy_from(scopes), self._cache_size)
            if len(self._scoped) >= _MAX_SCOPES:
                self._scoped.clear()
            self._scoped[key] = scoped
        return scoped

    def clear_cache(self) -> None:
        self._default.exact.clear()
        self._default.shapes.clear()
        self._scoped.clear()

    def _policy(self, top: Scope, scopes: tuple[Scope, ...]) -> Policy:
        return self._policy_from([*scopes, top])

    @staticmethod
    def _policy_from(scopes: list[Scope]) -> Policy:
        # Most specific first: the first scope naming a preset, channels or a timeout decides.
        preset = next(s.preset for s in scopes if s.preset is not None)
        rules = tuple(rule for s in scopes for rule in s.rules)
        channels = next((s.notify_channels for s in scopes if s.notify_channels is not None), frozenset())
        timeouts = dict(DEFAULT_TIMEOUTS)
        for s in reversed(scopes):
            timeouts.update(s.timeouts)
        row_limit = next((s.row_limit for s in scopes if s.row_limit is not None), DEFAULT_MAX_ROWS)
        tables = next((s.table_limits for s in scopes if s.table_limits is not None), ())
        return Policy(PRESETS[preset], rules, channels, timeouts, row_limits=RowLimits(row_limit, tables))

    def timeouts(self, resource: str | None = None) -> dict[str, int]:
        """The session timeouts (ms) the gateway sets on `resource`, and their ceilings."""
        return dict(self.scope(resource, ()).policy.timeouts)
