"""The CSV toolkit every dataset table goes through (annotations.csv, metadata.csv, splits.csv;
the importers' source files), so that every table reports mistakes the same way:
`path:line: what is wrong` (line 1 is the header).

Readers take `problems`: when it is a list, a bad row is skipped and its message appended
there (lenient mode) instead of raised. What a row means is each table's own business
(annotations.py, metadata.py, dataset.py); here are the parts they share: reading rows and
checking columns, numbers, audio-relative paths, per-recording rows, text and writing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from edge_runtime.contract.errors import UserError, location
from edge_runtime.contract.times import format_number

T = TypeVar("T")


class DatasetError(UserError):
    """A dataset folder or one of its tables breaks the data contract."""


def fail_or_record(message: str, problems: list[str] | None) -> None:
    """Raise `message` as a DatasetError, or in lenient mode append it to `problems`."""
    if problems is None:
        raise DatasetError(message)
    problems.append(message)


# --- reading -------------------------------------------------------------------------------


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


def read_rows(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str],
    parse: Callable[[dict[str, str], str], T | None],
    problems: list[str] | None = None,
) -> Iterator[tuple[int, T]]:
    """`(line, parse(cells, where))` per row of `read_table`; a DatasetError from `parse`
    raises, or in lenient mode is recorded and the row skipped; None skips a row silently.
    Rows are parsed one at a time, so `parse` sees what the caller did with earlier rows."""
    for line, cells in read_table(path, required, optional, problems):
        try:
            value = parse(cells, location(path, line))
        except DatasetError as err:
            fail_or_record(str(err), problems)
            continue
        if value is not None:
            yield line, value


def read_text(path: Path) -> str:
    """A hand-made or exported text file: UTF-8 (with or without BOM), else the Windows ANSI
    page (Raven and Audacity on Windows write it)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"{path}: cannot read ({err.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


# --- cells ---------------------------------------------------------------------------------


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


def parse_decimal(text: str, column: str, where: str) -> float:
    """A number that may carry a decimal comma (Raven and older Audacity builds on a
    European-locale machine write one)."""
    text = text.strip()
    try:
        return float(text.replace(",", ".") if "." not in text else text)
    except ValueError:
        raise DatasetError(f"{where}: {column} '{text}' is not a number") from None


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


def check_recording(file: str, where: str, files: Collection[str] | None,
                    dropped: Collection[str], first_line: Mapping[str, int]) -> bool:
    """One row per recording (metadata.csv, splits.csv): False for a file dropped earlier
    (unreadable audio, lenient mode); a file not in `files` or listed again raises."""
    if file in dropped:
        return False
    if files is not None and file not in files:
        raise DatasetError(missing_file_message(where, file))
    if file in first_line:
        raise DatasetError(f"{where}: file '{file}' is listed twice "
                           f"(first on line {first_line[file]})")
    return True


# --- writing -------------------------------------------------------------------------------


def cell_text(value: object) -> str:
    """How a value is written in a dataset table (None: an empty cell)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def write_table(path: str | Path, columns: Sequence[str], rows: Iterable[Iterable[Any]]) -> None:
    """A UTF-8 CSV file with `columns` as its header; cells through `cell_text`."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([cell_text(v) for v in row] for row in rows)


def write_records(path: str | Path, records: Iterable[object], always: Sequence[str],
                  optional: Sequence[str]) -> None:
    """Dataclass rows as a table: the `always` columns plus each optional column some record
    has a value in."""
    records = list(records)
    columns = [*always, *(c for c in optional
                          if any(getattr(r, c) is not None for r in records))]
    write_table(path, columns, ([getattr(r, c) for c in columns] for r in records))
