"""Timing of the policy engine's hot path (a script, not a test).

    .venv/bin/python tests/broker/policy/bench_policy.py

Prints microseconds per classify() for: a cold parse, an exact-text hit (a verdict that read
a literal), a shape hit with a fresh literal each time (pgbench -S), and the lexer alone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from broker.policy import PolicyEngine, shape


def _best(fn: Callable[[int], object], n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    rng = random.Random(1)
    aids = [rng.randint(1, 1_000_000) for _ in range(200_000)]
    select = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
    update = "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};"
    texts = [select.format(a) for a in aids]
    updates = [update.format(rng.randint(-5000, 5000), a) for a in aids]
    sensitive = "DELETE FROM pgbench_history WHERE 1=1"
    prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
    engine = PolicyEngine.preset("agent-safe")
    engine.classify(texts[0])
    engine.classify(updates[0])

    def cold(i: int) -> object:
        engine.clear_cache()
        return engine.classify(texts[i])

    engine.clear_cache()
    rows = [
        ("cold (parse + judge)", _best(cold, 2_000)),
        ("exact hit, literal-sensitive", _best(lambda i: engine.classify(sensitive), 100_000)),
        ("exact hit, extended protocol", _best(lambda i: engine.classify(prepared), 100_000)),
        ("shape hit, pgbench -S", _best(lambda i: engine.classify(texts[i]), 100_000)),
        ("shape hit, pgbench update", _best(lambda i: engine.classify(updates[i]), 100_000)),
        ("shape() alone, pgbench -S", _best(lambda i: shape(texts[i]), 100_000)),
    ]
    for name, micros in rows:
        print(f"{name:28s} {micros:8.2f} us")


if __name__ == "__main__":
    main()
