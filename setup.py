"""Builds the data path's per-message modules with mypyc; everything else is in pyproject.toml.

Why compiled: every protocol message goes through the session machine and its fast path,
and every result row with a masked or scanned column through the masking of a row; in
interpreted Python that work is most of what the gateway costs per message (README, "Where
performance stands"; bench/README.md). mypyc compiles the
same typed modules mypy checks, so there is one source of truth; the list is
`proxy.native.MODULES` (read here without importing the package). The few loops where any
Python object per value costs more than the work itself are C, written by hand
(`proxy.native.C_EXTENSIONS`; each has a Python reference it is tested against).

`pip install -e .` (what `make install` runs) compiles them in place, `pip wheel .` (the
Dockerfile) into the wheel. Both need a C compiler. `JITGATE_PURE_PYTHON=1` builds without
compiling, for a platform without one: the proxy then logs at start that it runs
interpreted, and CI's smoke test (tests/proxy/test_native.py) fails on such a build.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "proxy" / "native.py"
MANIFEST = ROOT / "proxy" / "native_sources.json"


def native_literal(name: str) -> object:
    for node in ast.parse(NATIVE.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"{NATIVE}: no {name} literal to compile")


def compiled_modules() -> list[str]:
    return list(native_literal("MODULES"))  # type: ignore[call-overload]


def c_extensions() -> dict[str, str]:
    return dict(native_literal("C_EXTENSIONS"))  # type: ignore[call-overload]


def source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def ext_modules() -> list[object]:
    modules = compiled_modules()
    hand_written = c_extensions()
    if os.environ.get("JITGATE_PURE_PYTHON") == "1":
        # No extension may shadow the sources a pure build is meant to run.
        MANIFEST.unlink(missing_ok=True)
        for module in [*modules, *hand_written]:
            for stale in source(module).parent.glob(source(module).stem + ".*.so"):
                stale.unlink()
        return []
    from mypyc.build import mypycify

    paths = [str(source(m).relative_to(ROOT)) for m in modules]
    # What each extension was built from, for proxy.native.status(); written before the
    # build copies package data, so a wheel carries it too.
    sources = {m: source(m) for m in modules} | {m: ROOT / path for m, path in hand_written.items()}
    MANIFEST.write_text(
        json.dumps({m: hashlib.sha256(path.read_bytes()).hexdigest() for m, path in sources.items()}, indent=1)
        + "\n"
    )
    c = [Extension(m, [path], extra_compile_args=["-O2"]) for m, path in hand_written.items()]
    return [*mypycify(paths, opt_level="3", group_name="jitgate_native"), *c]


setup(ext_modules=ext_modules())
