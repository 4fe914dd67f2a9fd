"""`annotations.csv`: one labelled event per row,
`file,start_s,end_s,label[,low_hz,high_hz,focal,snr_db]`.

`snr_db` is the call's signal-to-noise ratio where the source knows it (synth does; field
annotations leave it empty): evaluation reports event recall by SNR bucket from it.
Reading goes through the dataset table toolkit (train/data/table.py): errors name
`path:line`, and `problems` (a list) makes reading lenient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from train.data.table import (
    DatasetError,
    missing_file_message,
    parse_file,
    parse_float,
    read_rows,
    write_records,
)

REQUIRED_COLUMNS = ("file", "start_s", "end_s", "label")
OPTIONAL_COLUMNS = ("low_hz", "high_hz", "focal", "snr_db")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class Annotation:
    file: str
    start_s: float
    end_s: float
    label: str
    low_hz: float | None = None
    high_hz: float | None = None
    focal: bool | None = None
    snr_db: float | None = None  # known only for generated data; may be negative

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def parse_annotation(cells: Mapping[str, str], where: str) -> Annotation:
    """Build and check one annotation from its cells (used for every source format)."""
    low = parse_float(cells.get("low_hz", ""), "low_hz", where, required=False)
    high = parse_float(cells.get("high_hz", ""), "high_hz", where, required=False)
    snr = parse_float(cells.get("snr_db", ""), "snr_db", where, required=False)
    focal_text = cells.get("focal", "").lower()
    if focal_text and focal_text not in _TRUE | _FALSE:
        raise DatasetError(f"{where}: focal '{cells['focal']}' is not one of 1/0/true/false/yes/no")
    ann = Annotation(
        file=parse_file(cells.get("file", ""), where),
        start_s=parse_float(cells.get("start_s", ""), "start_s", where),
        end_s=parse_float(cells.get("end_s", ""), "end_s", where),
        label=cells.get("label", ""),
        low_hz=low,
        high_hz=high,
        focal=(focal_text in _TRUE) if focal_text else None,
        snr_db=snr,
    )
    check_annotation(ann, where)
    return ann


def check_annotation(ann: Annotation, where: str) -> None:
    """The checks that need no audio: times, frequencies, label."""
    if not ann.label:
        raise DatasetError(f"{where}: label is empty")
    if ann.start_s < 0:
        raise DatasetError(f"{where}: start_s {ann.start_s:g} is negative")
    if ann.end_s <= ann.start_s:
        what = "equals" if ann.end_s == ann.start_s else "is before"
        raise DatasetError(f"{where}: end_s {ann.end_s:g} {what} start_s {ann.start_s:g} "
                           "(an event needs a positive duration)")
    for name in ("low_hz", "high_hz"):
        value = getattr(ann, name)
        if value is not None and value < 0:
            raise DatasetError(f"{where}: {name} {value:g} is negative")
    if ann.low_hz is not None and ann.high_hz is not None and ann.high_hz < ann.low_hz:
        raise DatasetError(f"{where}: high_hz {ann.high_hz:g} is below low_hz {ann.low_hz:g}")


def read_annotations(
    path: str | Path,
    labels: Sequence[str] | None = None,
    durations: Mapping[str, float | None] | None = None,
    problems: list[str] | None = None,
) -> list[Annotation]:
    """Read and check `annotations.csv`.

    labels: if given, every label must be one of them.
    durations: if given, the audio files that exist (relative path -> duration in seconds); a
        row naming another file, or starting past the end of its file, is an error. A file
        mapped to None was dropped earlier (unreadable, lenient mode): its rows are skipped
        without another report.
    problems: lenient mode (see module docstring).
    """
    label_set = set(labels) if labels is not None else None

    def parse(cells: dict[str, str], where: str) -> Annotation | None:
        ann = parse_annotation(cells, where)
        if label_set is not None and ann.label not in label_set:
            raise DatasetError(f"{where}: label '{ann.label}' is not in the label set "
                               f"({', '.join(labels)})")
        if durations is not None:
            if ann.file not in durations:
                raise DatasetError(missing_file_message(where, ann.file))
            duration = durations[ann.file]
            if duration is None:
                return None
            if ann.start_s >= duration:
                raise DatasetError(f"{where}: start_s {ann.start_s:g} is past the end of "
                                   f"{ann.file} ({duration:g} s long)")
        return ann

    return [ann for _, ann in read_rows(Path(path), REQUIRED_COLUMNS, OPTIONAL_COLUMNS, parse,
                                        problems)]


def write_annotations(path: str | Path, rows: Iterable[Annotation]) -> None:
    """Write `annotations.csv`; optional columns appear only if some row has a value."""
    write_records(path, rows, REQUIRED_COLUMNS, OPTIONAL_COLUMNS)


def unique_labels(rows: Iterable[Annotation]) -> list[str]:
    return sorted({r.label for r in rows})

