"""What `meerkit analyze` writes besides the manifest and prints: the result tables of every
chosen `--rtype` (`output_formats`), built from the manifest entries of the run's files so that
skipped and analysed files look the same, the progress and the summary. Every file is replaced
atomically: a crash never leaves half a table that a resumed run would take for a finished one."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.contract.times import iso_utc
from edge_runtime.output_formats import (
    EVENTS_PARQUET,
    AnalysedFile,
    EventRow,
    per_file_outputs,
    write_outputs,
)

if TYPE_CHECKING:
    from edge_runtime.batch import FileResult, Summary

log = logging.getLogger("edge_runtime.batch")


def rows_and_files(entries: Sequence[dict[str, Any]]) -> tuple[list[EventRow], list[AnalysedFile]]:
    """Event rows and analysed files (in the given order: Raven's file sequence) from the
    manifest entries of successfully analysed files."""
    rows, files = [], []
    for entry in entries:
        start, clips = entry.get("start_unix"), entry.get("clips") or []
        files.append(AnalysedFile(entry["path"], entry["file"], entry["audio_s"],
                                  entry["sample_rate"]))
        for i, (label, s, e, cmax, cmean) in enumerate(entry["events"]):
            rows.append(EventRow(entry["path"], entry["file"], label, s, e, cmax, cmean,
                                 iso_utc(start + s) if start is not None else "",
                                 entry.get("time_source", "unknown"),
                                 clips[i] if i < len(clips) else ""))
    return rows, files


def write_results(out: Path, rtypes: Sequence[str], entries: Sequence[dict[str, Any]],
                  failed: Sequence[str]) -> int:
    """Every chosen output over `entries`; the per-file outputs of the `failed` files (their
    relative paths) are removed, since an earlier success's table would now be stale. Returns
    the number of events."""
    for rel in failed:
        for path in per_file_outputs(out, rel):
            path.unlink(missing_ok=True)
    stale = out / EVENTS_PARQUET
    if "parquet" not in rtypes and stale.exists():  # it would contradict the other tables
        log.warning("%s removed: not among the chosen --rtype outputs (%s), so it would be "
                    "stale", stale, ",".join(rtypes))
        stale.unlink()
    rows, files = rows_and_files(entries)
    write_outputs(out, rtypes, rows, files)
    return len(rows)


def format_summary(s: Summary) -> str:
    rate = f", {s.audio_s / s.wall_s:.0f}x real time" if s.audio_s and s.wall_s else ""
    lines = [f"analyze: {s.files} files: {s.analysed - len(s.failed)} analysed, {s.skipped} "
             f"already done, {len(s.failed)} failed; {s.events} events in {s.out} "
             f"({', '.join(s.rtypes)}) ({s.audio_s:.0f} s of audio in {s.wall_s:.1f} s{rate})"]
    if s.warnings:
        lines.append(f"warnings ({len(s.warnings)}):")
        lines += [f"  {w}" for _, w in s.warnings]
    if s.failed:
        lines.append(f"failed ({len(s.failed)}; a rerun retries them):")
        lines += [f"  {e}" for _, e in s.failed]
    return "\n".join(lines)


class Progress:
    """tqdm when installed, else one stderr line per file."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.bar = None
        if enabled and total:
            try:
                tqdm = importlib.import_module("tqdm").tqdm
                self.bar = tqdm(total=total, unit="file", desc="analyze", file=sys.stderr)
            except ImportError:
                pass

    def update(self, result: FileResult) -> None:
        self.done += 1
        if result.status != "ok":
            self.write(f"failed: {result.error}")
        elif result.warning:
            self.write(f"warning: {result.warning}")
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            print(f"analyze: {self.done}/{self.total} {result.job.rel}: {result.status}, "
                  f"{len(result.events)} events", file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            log.warning("%s", text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
