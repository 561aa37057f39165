"""Which of the proxy's modules run compiled, and whether they were built from today's source.

The modules in `MODULES` are the per-message path: framing, the session machine, the fast
path, routing answers to in-flight entries, the recorder hand-off, and masking a row; and the
per-statement work of the recorder's writer process (each statement's row and chained JSON).
`C_EXTENSIONS` are the loops written in C by hand, where a Python object per value would cost
more than the work (each with a Python reference of the same function).
`setup.py` compiles the first with mypyc (the same typed source mypy checks; no second copy
of the logic) and the second with the C compiler, at `make install` and in the Dockerfile.
Everything else (policy decisions made the first time, masking plans, approvals, identity,
the broker) stays interpreted: it runs per statement shape or per session, not per message. The relay's socket
callbacks (proxy/relay.py) stay interpreted too: compiled, they measured no better, and the
tests drive them with stand-in machines a compiled attribute type would refuse.

Two ways the compiled path could silently not be the one running, and how each is caught:

- the build fell back to pure Python (no compiler, `JITGATE_PURE_PYTHON=1`): `status()` says
  so per module, the proxy logs it at start, and tests/proxy/test_native.py fails under CI;
- a module was edited after it was compiled: Python loads the extension before the `.py`
  beside it, so the edit would not run. The build records each source's SHA-256 in
  `native_sources.json`; `status()` compares, `make test` rebuilds when a source changed,
  and the test fails on a stale module.

This module itself is never compiled.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
from dataclasses import dataclass
from pathlib import Path

#: Compiled by setup.py (read there with `ast`, so keep it a literal tuple of dotted names).
MODULES = (
    "proxy.protocol.codes",
    "proxy.protocol.frames",
    "proxy.protocol.messages",
    "proxy.names",
    "proxy.records",
    "proxy.session_state",
    "proxy.server_messages",
    "proxy.inflight",
    "proxy.answers",
    "proxy.results",
    "proxy.requests",
    "proxy.fastpath",
    "proxy.machine",
    "proxy.wiring",
    # Every row of a result with a masked or scanned column (see bench/stream_rows.py).
    "broker.masking.scanner",
    "broker.masking.shapes",
    "broker.masking.rows",
    "broker.masking.detectors.base",
    "broker.masking.detectors.email",
    "broker.masking.detectors.cards",
    # Every statement recorded, in the recorder's writer process (bench/recorder_cost.py).
    "broker.store.statement_batch",
)

#: Written in C by hand (setup.py builds them beside the mypyc modules): {module: its source}.
#: Each has a Python reference that runs when it is not built, and that it is tested against.
C_EXTENSIONS = {
    # Runs of result rows and COPY output: one content-gate call per run, masked columns
    # rewritten without a Python object per row (proxy/protocol/rowrun.py).
    "proxy.protocol._rowrun": "proxy/protocol/_rowrun.c",
}

#: Written by setup.py next to this file: {module: sha256 of the source it compiled}.
MANIFEST = Path(__file__).with_name("native_sources.json")


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    name: str
    compiled: bool  # loaded from an extension module, not from its .py
    # Runs the source beside it: an interpreted module always does; a compiled one when it
    # was built from that source. None where no source ships (a wheel without .py files).
    current: bool | None


ROOT = Path(__file__).resolve().parent.parent


def source_path(name: str) -> Path:
    if name in C_EXTENSIONS:
        return ROOT / C_EXTENSIONS[name]
    return ROOT.joinpath(*name.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def status() -> list[ModuleStatus]:
    try:
        built: dict[str, str] = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        built = {}
    out = []
    for name in (*MODULES, *C_EXTENSIONS):
        try:
            module = importlib.import_module(name)
        except ImportError:
            if name not in C_EXTENSIONS:
                raise
            out.append(ModuleStatus(name, False, True))  # not built: its Python reference runs
            continue
        origin = getattr(module, "__file__", None) or ""
        compiled = origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
        source = source_path(name)
        current: bool | None = None
        if source.exists():
            current = not compiled or built.get(name) == source_digest(source)
        out.append(ModuleStatus(name, compiled, current))
    return out


def summary(modules: list[ModuleStatus] | None = None) -> str:
    """One line for the proxy's start-up log: "20/20 compiled", or what is not (of `modules`,
    a `status()` already taken, else a new one)."""
    if modules is None:
        modules = status()
    interpreted = [m.name for m in modules if not m.compiled]
    stale = [m.name for m in modules if m.current is False]
    text = f"{len(modules) - len(interpreted)}/{len(modules)} compiled"
    if interpreted:
        text += "; interpreted: " + ", ".join(interpreted)
    if stale:
        text += "; STALE (edited since built, run `make native`): " + ", ".join(stale)
    return text
