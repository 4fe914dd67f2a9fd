"""Result tables of `meerkit analyze --rtype`, in the formats ecologists open.

  raven           one Raven selection table per audio file,
                  `<rel dir>/<stem>.Table.1.selections.txt` (header only when nothing was
                  detected), written by contract/raven.py
  raven-combined  one table for the whole card, `combined.selections.txt`, and
                  `combined.list.txt`, the audio files in table order (open them in Raven as a
                  file sequence, then open the table)
  audacity        one label track per audio file, `<rel dir>/<stem>.labels.txt`:
                  start<TAB>end<TAB>label
  kaleidoscope    `kaleidoscope.csv`, one row per event, as BirdNET-Analyzer writes it
  csv             `events.csv`
  parquet         `events.parquet` (needs pyarrow: the `analyze` extra)

Combined Raven table. Raven Pro (User's Manual 1.4, "file sequences" and the Begin File /
Begin Path / File Offset measurements) counts `Begin Time (s)` from the start of the sequence,
so each file's events are shifted by the durations of every file before it, detections or
not; `File Offset (s)` is the time within the file, `Begin Path` its path and `Begin File` its
name. BirdNET-Analyzer's combined table (birdnet_analyzer/analyze/core.py, `save_as_raven`
combined) uses the same rule and columns (Selection, View, Channel, Begin/End Time (s),
Low/High Freq (Hz), a label column, Confidence, Begin Path, File Offset (s)); we add Begin File,
and the UTC start, its source and the clip as annotation columns, which Raven shows as they
are. csv and parquet carry the same `clip` (empty without `--clips`).

Kaleidoscope: BirdNET-Analyzer's `INDIR,FOLDER,IN FILE,OFFSET,DURATION,TOP1MATCH,TOP1DIST`
(Wildlife Acoustics' id.csv names: INDIR the card root, FOLDER the sub-folder, IN FILE the
name), TOP1MATCH the label, TOP1DIST the confidence; plus START UTC and TIME SOURCE.

Every writer replaces its file atomically, so a crash never leaves half a table.
"""

from __future__ import annotations

import csv
import importlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge_runtime.contract.atomic import write_text_atomic
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.raven import TABLE_SUFFIX, VIEW, write_selection_table
from edge_runtime.contract.times import format_number

RTYPES = ("raven", "raven-combined", "audacity", "kaleidoscope", "csv", "parquet")
COMBINED_TABLE = "combined.selections.txt"
COMBINED_LIST = "combined.list.txt"
LABELS_SUFFIX = ".labels.txt"
KALEIDOSCOPE_CSV = "kaleidoscope.csv"
EVENTS_CSV = "events.csv"
EVENTS_PARQUET = "events.parquet"
CSV_COLUMNS = ("file", "label", "start_s", "end_s", "confidence_max", "confidence_mean",
               "start_utc", "time_source", "clip")
COMBINED_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                    "Low Freq (Hz)", "High Freq (Hz)", "Species", "Confidence", "Begin Path",
                    "File Offset (s)", "Begin File", "Start UTC", "Time Source", "Clip")
KALEIDOSCOPE_COLUMNS = ("INDIR", "FOLDER", "IN FILE", "OFFSET", "DURATION", "TOP1MATCH",
                        "TOP1DIST", "START UTC", "TIME SOURCE")


@dataclass(frozen=True)
class EventRow:
    """One detection in one audio file."""

    file: str  # the audio file's path as analysed
    rel: str  # its path relative to the card root, with `/`: the key of every output
    label: str
    start_s: float  # within the file
    end_s: float
    confidence_max: float
    confidence_mean: float
    start_utc: str = ""  # ISO 8601 UTC of start_s; "" when the recording time is unknown
    time_source: str = "unknown"  # RecordingStart.source
    clip: str = ""  # `meerkit analyze --clips`: the clip's path relative to the clips folder


@dataclass(frozen=True)
class AnalysedFile:
    """An audio file of the run, with or without events (Raven's sequence needs them all)."""

    file: str
    rel: str
    duration_s: float
    sample_rate: int


def parse_rtypes(spec: str | Sequence[str], where: str = "--rtype") -> list[str]:
    """`"raven,csv"` or ["raven", "csv"] -> checked, de-duplicated list in the given order."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: list[str] = []
    for item in (i.strip().lower() for i in items):
        if item not in RTYPES:
            raise UserError(f"{where} {item!r}: choose from {', '.join(RTYPES)}")
        if item not in chosen:
            chosen.append(item)
    if not chosen:
        raise UserError(f"{where}: give at least one of {', '.join(RTYPES)}")
    return chosen


def default_rtypes() -> list[str]:
    """Per-file Raven tables and events.csv, on every install. parquet is written only when
    asked (`--rtype ...,parquet`): importing pyarrow costs ~36 MB, which alone would lift a
    one-worker run past the 100 MB a recorder allows, and a default that depended on what
    happens to be installed would give the same command different outputs on two machines."""
    return ["raven", "csv"]


def write_outputs(out: str | Path, rtypes: Sequence[str], rows: Sequence[EventRow],
                  files: Sequence[AnalysedFile]) -> list[Path]:
    """Write every chosen format into `out`; returns the files written."""
    out = Path(out)
    written: list[Path] = []
    for rtype in parse_rtypes(rtypes):
        written += WRITERS[rtype](out, rows, files)
    return written


def _sorted(rows: Sequence[EventRow]) -> list[EventRow]:
    return sorted(rows, key=lambda r: (r.rel, r.start_s, r.end_s, r.label))


def _by_file(rows: Sequence[EventRow],
             files: Sequence[AnalysedFile]) -> dict[str, list[EventRow]]:
    grouped: dict[str, list[EventRow]] = {}
    for row in _sorted(rows):
        grouped.setdefault(row.rel, []).append(row)
    missing = sorted(set(grouped) - {f.rel for f in files})
    if missing:  # a caller bug: those events would silently vanish from per-file tables
        raise ValueError(f"events for files not in the run: {', '.join(missing)}")
    return grouped


def per_file_outputs(out: str | Path, rel: str) -> list[Path]:
    """The files the per-file rtypes (raven, audacity) write for the audio file `rel`."""
    return [_beside(Path(out), rel, TABLE_SUFFIX), _beside(Path(out), rel, LABELS_SUFFIX)]


def _beside(out: Path, rel: str, suffix: str) -> Path:
    """`out/<rel dir>/<stem><suffix>`: outputs mirror the card's folders, so equal names in
    different folders (SD1/..., SD2/...) do not collide."""
    p = PurePosixPath(rel)
    return out.joinpath(*p.parent.parts, p.stem + suffix)


def _csv_text(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(lines)
    return buf.getvalue()


# ------------------------------------------------------------------------- writers
def write_raven(out: Path, rows: Sequence[EventRow], files: Sequence[AnalysedFile]) -> list[Path]:
    grouped = _by_file(rows, files)
    return [write_selection_table(_beside(out, f.rel, TABLE_SUFFIX), grouped.get(f.rel, []),
                                  nyquist_hz=f.sample_rate / 2, confidence=True)
            for f in files]


def combined_raven_table(rows: Sequence[EventRow], files: Sequence[AnalysedFile]) -> str:
    """Text of the combined table; `files` in sequence order (Begin Time counts across them)."""
    grouped = _by_file(rows, files)
    lines = ["\t".join(COMBINED_COLUMNS)]
    offset, n = 0.0, 0
    for f in files:
        for r in grouped.get(f.rel, []):
            n += 1
            lines.append("\t".join([
                str(n), VIEW, "1", format_number(offset + r.start_s),
                format_number(offset + r.end_s), "0", format_number(f.sample_rate / 2),
                _cell(r.label), format_number(r.confidence_max), os.path.abspath(f.file),
                format_number(r.start_s), PurePosixPath(f.rel).name, r.start_utc,
                r.time_source, r.clip]))
        offset += f.duration_s
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return " ".join(str(text).split())  # a tab or newline inside a label would break the table


def write_raven_combined(out: Path, rows: Sequence[EventRow],
                         files: Sequence[AnalysedFile]) -> list[Path]:
    table = write_text_atomic(out / COMBINED_TABLE, combined_raven_table(rows, files),
                              newline="", make_folder=True)
    paths = "".join(f"{os.path.abspath(f.file)}\n" for f in files)
    listing = write_text_atomic(out / COMBINED_LIST, paths, newline="", make_folder=True)
    return [table, listing]


def write_audacity(out: Path, rows: Sequence[EventRow],
                   files: Sequence[AnalysedFile]) -> list[Path]:
    grouped = _by_file(rows, files)
    written = []
    for f in files:
        text = "".join(f"{format_number(r.start_s)}\t{format_number(r.end_s)}\t{_cell(r.label)}\n"
                       for r in grouped.get(f.rel, []))
        written.append(write_text_atomic(_beside(out, f.rel, LABELS_SUFFIX), text,
                                         newline="", make_folder=True))
    return written


def write_kaleidoscope(out: Path, rows: Sequence[EventRow],
                       files: Sequence[AnalysedFile]) -> list[Path]:
    lines = []
    for r in _sorted(rows):  # one table for the card; files without events have no rows
        rel = PurePosixPath(r.rel)
        root = _card_root(r.file, rel)
        folder = "" if str(rel.parent) == "." else str(rel.parent)
        lines.append([root, folder, rel.name, format_number(r.start_s),
                      format_number(r.end_s - r.start_s), r.label,
                      format_number(r.confidence_max), r.start_utc, r.time_source])
    text = _csv_text(KALEIDOSCOPE_COLUMNS, lines)
    return [write_text_atomic(out / KALEIDOSCOPE_CSV, text, newline="", make_folder=True)]


def _card_root(file: str, rel: PurePosixPath) -> str:
    """The folder the run started from: `file` minus its relative path."""
    path = Path(os.path.abspath(file))
    parts = len(rel.parts)
    return str(path.parents[parts - 1]) if len(path.parts) > parts else "."


def write_csv(out: Path, rows: Sequence[EventRow], files: Sequence[AnalysedFile]) -> list[Path]:
    lines = [[r.rel, r.label, format_number(r.start_s), format_number(r.end_s),
              format_number(r.confidence_max), format_number(r.confidence_mean), r.start_utc,
              r.time_source, r.clip] for r in _sorted(rows)]
    text = _csv_text(CSV_COLUMNS, lines)
    return [write_text_atomic(out / EVENTS_CSV, text, newline="", make_folder=True)]


def write_parquet(out: Path, rows: Sequence[EventRow],
                  files: Sequence[AnalysedFile]) -> list[Path]:
    try:
        pa = importlib.import_module("pyarrow")
        pq = importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise UserError("--rtype parquet needs pyarrow: pip install 'meerkit[analyze]'") from None
    rows = _sorted(rows)
    table = pa.table({
        "file": pa.array([r.rel for r in rows], pa.string()),
        "label": pa.array([r.label for r in rows], pa.string()),
        **{k: pa.array([getattr(r, k) for r in rows], pa.float64())
           for k in ("start_s", "end_s", "confidence_max", "confidence_mean")},
        "start_utc": pa.array([r.start_utc or None for r in rows], pa.string()),
        "time_source": pa.array([r.time_source for r in rows], pa.string()),
        "clip": pa.array([r.clip or None for r in rows], pa.string()),
    })
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{EVENTS_PARQUET}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out / EVENTS_PARQUET)
    return [out / EVENTS_PARQUET]


Writer = Callable[[Path, Sequence[EventRow], Sequence[AnalysedFile]], list[Path]]
WRITERS: dict[str, Writer] = {
    "raven": write_raven, "raven-combined": write_raven_combined, "audacity": write_audacity,
    "kaleidoscope": write_kaleidoscope, "csv": write_csv, "parquet": write_parquet,
}
