"""`annotations.csv`: one labelled event per row,
`file,start_s,end_s,label[,low_hz,high_hz,focal,snr_db]`.

`snr_db` is the call's signal-to-noise ratio where the source knows it (synth does; field
annotations leave it empty): evaluation reports event recall by SNR bucket from it.

Also home of `DatasetError` and the strict CSV reader every dataset table goes through, so
that every table reports mistakes the same way: `path:line: what is wrong` (line 1 is the
header). Readers take `problems`: when it is a list, a bad row is skipped and its message
appended there (lenient mode) instead of raised.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edge_runtime.contract.errors import UserError, location
from edge_runtime.contract.times import format_number

REQUIRED_COLUMNS = ("file", "start_s", "end_s", "label")
OPTIONAL_COLUMNS = ("low_hz", "high_hz", "focal", "snr_db")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}


class DatasetError(UserError):
    """A dataset folder or one of its tables breaks the data contract."""


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


# --- shared table reading ------------------------------------------------------------------


def read_table(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    problems: list[str] | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield `(line, {column: stripped cell})` for each non-blank row of a CSV file.

    Column names are matched case-insensitively. A missing required column always raises; an
    unknown column raises, or in lenient mode is ignored and reported.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next((row for row in reader if any(c.strip() for c in row)), None)
            if header is None:
                raise DatasetError(f"{path}: empty file; the first line must name the columns "
                                   f"({','.join(required)})")
            columns = _check_header(path, reader.line_num, header, required, optional, problems)
            for row in reader:
                if not any(c.strip() for c in row):
                    continue
                where = location(path, reader.line_num)
                if len(row) > len(columns):
                    fail_or_record(f"{where}: {len(row)} cells but the header names {len(columns)} "
                          "columns (a stray comma?)", problems)
                    continue
                # Spreadsheets drop trailing empty cells; a short row means empty cells.
                cells = {name: (row[i].strip() if i < len(row) else "")
                         for i, name in enumerate(columns) if name is not None}
                yield reader.line_num, cells
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as err:
        raise DatasetError(f"{path}: not a readable CSV file ({err})") from None


def _check_header(path, line, header, required, optional, problems) -> list[str | None]:
    known = set(required) | set(optional)
    columns: list[str | None] = []
    for raw in header:
        name = raw.strip().lower()
        if name in columns:
            raise DatasetError(f"{location(path, line)}: column '{name}' appears twice")
        if name not in known:
            fail_or_record(f"{location(path, line)}: unknown column '{raw.strip()}' (allowed: "
                  f"{', '.join([*required, *optional])})", problems)
            columns.append(None)  # lenient: the column is ignored
            continue
        columns.append(name)
    missing = [c for c in required if c not in columns]
    if missing:
        raise DatasetError(f"{location(path, line)}: missing required column(s) "
                           f"{', '.join(missing)} (header is: {','.join(h.strip() for h in header)})")
    return columns


def fail_or_record(message: str, problems: list[str] | None) -> None:
    if problems is None:
        raise DatasetError(message)
    problems.append(message)


def parse_float(text: str, column: str, where: str, required: bool = True) -> float | None:
    """A finite number, or None for an empty optional cell."""
    if text == "":
        if required:
            raise DatasetError(f"{where}: {column} is empty")
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{where}: {column} '{text}' is not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {column} '{text}' is not a finite number")
    return value


def parse_file(text: str, where: str) -> str:
    """A dataset-relative audio path: POSIX separators, inside `audio/`."""
    if text == "":
        raise DatasetError(f"{where}: file is empty")
    rel = PurePosixPath(text.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or (text[1:2] == ":"):
        raise DatasetError(f"{where}: file '{text}' must be a path relative to audio/")
    return rel.as_posix()


def missing_file_message(where: str, file: str) -> str:
    hint = " (paths are relative to audio/; drop the 'audio/' prefix)" if file.startswith(
        "audio/") else ""
    return f"{where}: file '{file}' is not in audio/{hint}"


# --- annotations.csv -----------------------------------------------------------------------


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
    path = Path(path)
    label_set = set(labels) if labels is not None else None
    rows = []
    for line, cells in read_table(path, REQUIRED_COLUMNS, OPTIONAL_COLUMNS, problems):
        where = location(path, line)
        try:
            ann = parse_annotation(cells, where)
            if label_set is not None and ann.label not in label_set:
                raise DatasetError(f"{where}: label '{ann.label}' is not in the label set "
                                   f"({', '.join(labels)})")
            if durations is not None:
                if ann.file not in durations:
                    raise DatasetError(missing_file_message(where, ann.file))
                duration = durations[ann.file]
                if duration is None:
                    continue
                if ann.start_s >= duration:
                    raise DatasetError(f"{where}: start_s {ann.start_s:g} is past the end of "
                                       f"{ann.file} ({duration:g} s long)")
        except DatasetError as err:
            fail_or_record(str(err), problems)
            continue
        rows.append(ann)
    return rows


def write_annotations(path: str | Path, rows: Iterable[Annotation]) -> None:
    """Write `annotations.csv`; optional columns appear only if some row has a value."""
    rows = list(rows)
    columns = list(REQUIRED_COLUMNS) + [
        c for c in OPTIONAL_COLUMNS if any(getattr(r, c) is not None for r in rows)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([cell_text(getattr(r, c)) for c in columns])


def cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return format_number(value)
    return str(value)


def unique_labels(rows: Iterable[Annotation]) -> list[str]:
    return sorted({r.label for r in rows})

