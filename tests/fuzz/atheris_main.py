"""Coverage-guided fuzzing of the codec, the session machine and the policy with atheris.

    .venv/bin/python tests/fuzz/atheris_main.py codec|session|policy -max_total_time=60

`make fuzz` runs each target for FUZZ_SECONDS (default 60). Crashes are written by libFuzzer
as crash-* files in the current directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from tests.fuzz import targets  # noqa: E402


def main() -> None:
    target = getattr(targets, sys.argv[1])
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
