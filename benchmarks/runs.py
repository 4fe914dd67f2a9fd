"""Run plumbing shared by the benchmark scripts: each costly run leaves a marker with its
inputs beside its output, so a rerun skips what is finished and resumes what is not."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
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
    with the same inputs was started before (its checkpoint is then picked up).

    Benchmark processes run side by side (one per seed) and may reach the same run: an
    exclusive lock on `<path>.lock` makes the second wait for the first and then reuse its
    output. The kernel drops the lock when its holder dies, even by kill -9."""
    done = recorded(path, inputs)
    if done is not None:
        return float(done.get("minutes", 0.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(f"{path.name}.lock")):
        done = recorded(path, inputs)  # built by the process we waited for
        if done is not None:
            return float(done.get("minutes", 0.0))
        return _build(path, inputs, command, build)


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process that is building {lock.with_suffix('')}",
                  file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _build(path: Path, inputs: Mapping[str, Any], command: str,
           build: Callable[[bool], Any]) -> float:
    resume = recorded(path, inputs, "started") is not None
    marker(path, "started").write_text(json.dumps({"inputs": inputs}, indent=2))
    t0 = time.perf_counter()
    build(resume)
    minutes = (time.perf_counter() - t0) / 60
    marker(path).write_text(json.dumps({"inputs": inputs, "minutes": minutes,
                                        "command": command}, indent=2) + "\n")
    marker(path, "started").unlink(missing_ok=True)
    return minutes


def machine() -> dict[str, Any]:
    """Where a benchmark ran; torch's thread count too, since it sets the training speed."""
    import os
    import platform

    import torch

    return {"arch": platform.machine(), "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()), "python": platform.python_version(),
            "torch_threads": torch.get_num_threads()}


def finish(result: dict[str, Any], out: Path, t0: float, built_minutes: float,
           render: Callable[[dict[str, Any]], str]) -> int:
    """Stamp the result with its minutes and machine, write it as JSON and print its tables."""
    from train.evaluate import json_safe

    result.update(minutes=(time.perf_counter() - t0) / 60, built_minutes=built_minutes,
                  machine=machine())
    result = json_safe(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    print(f"\nwrote {out} ({result['minutes']:.1f} min this run; the runs took "
          f"{built_minutes:.1f} min when built)")
    return 0


def run_script(main: Callable[[], int]) -> None:
    """A benchmark script's entry: a user mistake is one line on stderr, not a traceback."""
    from edge_runtime.contract.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:
        sys.exit(f"error: {err}")
