"""Benchmarks: each script prints a table and writes JSON under benchmarks/out/;
`benchmarks/results.py` gathers those into benchmarks/RESULTS.md (`make bench` runs all)."""

import contextlib
import shlex
import sys
from pathlib import Path


def invocation() -> str:
    """The command line that produced a result, as a user would retype it from the repo root."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return shlex.join(["python", str(script), *sys.argv[1:]])
