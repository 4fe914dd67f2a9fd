"""Run plumbing shared by the benchmark scripts: each costly run leaves a marker with its
inputs beside its output, so a rerun skips what is finished and resumes what is not."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def say(t0: float, message: str) -> None:
    """A progress line on stderr, stamped with the minutes since `t0`."""
    print(f"[{(time.perf_counter() - t0) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def marker(path: Path, kind: str = "done") -> Path:
    return path.with_name(f"{path.name}.{kind}.json")


def recorded(path: Path, inputs: Mapping[str, Any], kind: str = "done") -> dict | None:
    """The marker of a run with exactly these inputs, if there is one (and its output)."""
    try:
        record = json.loads(marker(path, kind).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    ok = record.get("inputs") == json.loads(json.dumps(inputs))
    return record if ok and (kind != "done" or path.is_file()) else None


def run_once(path: Path, inputs: Mapping[str, Any], command: str,
             build: Callable[[bool], Any]) -> float:
    """Build `path` unless a finished run with the same inputs left it; returns the minutes
    its build took (now or back then). `build(resume)`: resume is True when an unfinished run
    with the same inputs was started before (its checkpoint is then picked up)."""
    done = recorded(path, inputs)
    if done is not None:
        return float(done.get("minutes", 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    resume = recorded(path, inputs, "started") is not None
    marker(path, "started").write_text(json.dumps({"inputs": inputs}, indent=2))
    t0 = time.perf_counter()
    build(resume)
    minutes = (time.perf_counter() - t0) / 60
    marker(path).write_text(json.dumps({"inputs": inputs, "minutes": minutes,
                                        "command": command}, indent=2) + "\n")
    marker(path, "started").unlink(missing_ok=True)
    return minutes
