"""Writing Raven selection tables (Cornell Lab's Raven Pro/Lite) with numpy only, so a recorder
can write them (`meerkit analyze`). Reading and the dataset exporter live in
`train/data/raven.py`, which writes through this module.

A table is tab-separated text, one selection per row:
`Selection  View  Channel  Begin Time (s)  End Time (s)  Low Freq (Hz)  High Freq (Hz)  Species`
(+ `Confidence` for detections). Raven needs a frequency box for every selection: a missing
low_hz is written as 0 and a missing high_hz as the file's Nyquist frequency.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edge_runtime.contract.atomic import write_text_atomic
from edge_runtime.contract.times import format_number

TABLE_SUFFIX = ".Table.1.selections.txt"
VIEW = "Spectrogram 1"


def table_name(audio_name: str) -> str:
    """`rec1.wav` -> `rec1.Table.1.selections.txt`: Raven's default name, which the importer
    maps back to the audio file by stem."""
    return Path(audio_name).stem + TABLE_SUFFIX


def _confidence(row: object) -> float | None:
    value = getattr(row, "confidence_max", None)
    return value if value is not None else getattr(row, "confidence", None)


def _tsv(text: str) -> str:
    return " ".join(str(text).split())  # a tab or newline inside a label would break the table


def selection_table(rows: Iterable[object], nyquist_hz: float | None = None,
                    label_column: str = "Species", confidence: bool | None = None) -> str:
    """The text of a selection table for rows with start_s, end_s, label and optionally
    low_hz, high_hz and confidence_max (Events) or confidence.

    confidence: add a Confidence column (default: if any row carries a confidence).
    """
    rows = list(rows)
    confs = [_confidence(r) for r in rows]
    if confidence is None:
        confidence = any(c is not None for c in confs)
    header = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
              "Low Freq (Hz)", "High Freq (Hz)", label_column]
    if confidence:
        header.append("Confidence")
    lines = ["\t".join(header)]
    for n, (row, conf) in enumerate(zip(rows, confs, strict=True), start=1):
        low = getattr(row, "low_hz", None)
        high = getattr(row, "high_hz", None)
        if high is None:
            if nyquist_hz is None:
                raise ValueError("selection_table: a row has no high_hz; pass nyquist_hz")
            high = nyquist_hz
        cells = [str(n), VIEW, "1", format_number(row.start_s), format_number(row.end_s),
                 format_number(low or 0.0), format_number(high), _tsv(row.label)]
        if confidence:
            cells.append(format_number(conf) if conf is not None else "")
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def write_selection_table(path: str | Path, rows: Iterable[object],
                          nyquist_hz: float | None = None, label_column: str = "Species",
                          confidence: bool | None = None) -> Path:
    """Write `selection_table(...)` to `path` atomically (a crash never leaves half a table
    that a resumed run would take for a finished one)."""
    text = selection_table(rows, nyquist_hz, label_column, confidence)
    return write_text_atomic(path, text, make_folder=True)
