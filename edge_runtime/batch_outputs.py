"""What `meerkit analyze` writes besides the manifest: one Raven selection table per audio file,
events.csv (+ events.parquet with pyarrow) over every file of the run, the progress and the
summary it prints. Every file is replaced atomically: a crash never leaves half a table that a resumed
run would take for a finished one."""

from __future__ import annotations

import csv
import importlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.contract.raven import table_name, write_selection_table
from edge_runtime.contract.times import format_number, iso_utc

if TYPE_CHECKING:
    from edge_runtime.batch import FileResult, Summary

log = logging.getLogger("edge_runtime.batch")

EVENTS_CSV = "events.csv"
EVENTS_PARQUET = "events.parquet"
CSV_COLUMNS = ("file", "label", "start_s", "end_s", "confidence_max", "confidence_mean",
               "start_utc")


def table_path(out: Path, rel: str) -> Path:
    """The Raven table of the audio file `rel` (its path relative to the inputs' folder)."""
    return out / Path(rel).parent / table_name(rel)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def event_rows(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """events.csv rows from manifest entries, by file then time."""
    rows = []
    for entry in sorted(entries, key=lambda e: e["file"]):
        start = entry.get("start_unix")
        for label, s, e, cmax, cmean in entry["events"]:
            rows.append({"file": entry["file"], "label": label, "start_s": s, "end_s": e,
                         "confidence_max": cmax, "confidence_mean": cmean,
                         "start_utc": iso_utc(start + s) if start is not None else ""})
    return rows


def write_events(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """events.csv, and events.parquet when pyarrow is importable."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([r["file"], r["label"], format_number(r["start_s"]),
                         format_number(r["end_s"]), format_number(r["confidence_max"]),
                         format_number(r["confidence_mean"]), r["start_utc"]])
    written = [out / EVENTS_CSV]
    write_atomic(written[0], buf.getvalue())
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        stale = out / EVENTS_PARQUET
        if stale.exists():  # from a run with pyarrow: it would contradict events.csv
            log.warning("%s removed: pyarrow is not installed to update it", stale)
            stale.unlink()
        return written
    table = pa.table({
        "file": pa.array([r["file"] for r in rows], pa.string()),
        "label": pa.array([r["label"] for r in rows], pa.string()),
        **{k: pa.array([r[k] for r in rows], pa.float64())
           for k in ("start_s", "end_s", "confidence_max", "confidence_mean")},
        "start_utc": pa.array([r["start_utc"] or None for r in rows], pa.string()),
    })
    tmp = out / f".{EVENTS_PARQUET}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / EVENTS_PARQUET)
    return [*written, out / EVENTS_PARQUET]


def format_summary(s: Summary) -> str:
    rate = f", {s.audio_s / s.wall_s:.0f}x real time" if s.audio_s and s.wall_s else ""
    lines = [f"analyze: {s.files} files: {s.analysed - len(s.failed)} analysed, {s.skipped} "
             f"already done, {len(s.failed)} failed; {s.events} events in "
             f"{s.out / EVENTS_CSV} ({s.audio_s:.0f} s of audio in {s.wall_s:.1f} s{rate})"]
    if s.warnings:
        lines.append(f"warnings ({len(s.warnings)}):")
        lines += [f"  {w}" for _, w in s.warnings]
    if s.failed:
        lines.append(f"failed ({len(s.failed)}; a rerun retries them):")
        lines += [f"  {e}" for _, e in s.failed]
    return "\n".join(lines)


def write_table(out: Path, rel: str, events: Sequence[Any], sample_rate: int) -> Path:
    """The Raven selection table of one audio file (header only when nothing was detected)."""
    return write_selection_table(table_path(out, rel), events, nyquist_hz=sample_rate / 2,
                                 confidence=True)


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
