"""`metadata.csv`: per-recording context (`file` plus any of the fields below; empty = missing).

The metadata heads and the shifted split use these fields; a recording absent from the file,
or an empty cell, is simply missing (None), never guessed.
"""

from __future__ import annotations

import csv
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edge_runtime.contract.errors import location
from train.data.annotations import (
    DatasetError,
    cell_text,
    fail_or_record,
    missing_file_message,
    parse_file,
    parse_float,
    read_table,
)

NUMERIC_FIELDS = ("lat", "lon", "elevation_m")
TEXT_FIELDS = ("recorder_id", "site", "habitat", "individual")
METADATA_FIELDS = ("lat", "lon", "elevation_m", "recorded_at", *TEXT_FIELDS)
_RANGES = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}


@dataclass(frozen=True)
class Metadata:
    file: str = ""
    lat: float | None = None
    lon: float | None = None
    elevation_m: float | None = None
    recorded_at: datetime | None = None  # always timezone-aware
    recorder_id: str | None = None
    site: str | None = None
    habitat: str | None = None
    individual: str | None = None

    def is_missing(self, field: str) -> bool:
        if field not in METADATA_FIELDS:
            raise KeyError(f"unknown metadata field '{field}' (known: {', '.join(METADATA_FIELDS)})")
        return getattr(self, field) is None

    def present(self) -> list[str]:
        """The fields that have a value."""
        return [f for f in METADATA_FIELDS if getattr(self, f) is not None]


def check_range(field: str, value: float, where: str) -> None:
    """lat within [-90, 90], lon within [-180, 180]."""
    low, high = _RANGES.get(field, (float("-inf"), float("inf")))
    if not low <= value <= high:
        raise DatasetError(f"{where}: {field} {value:g} is outside [{low:g}, {high:g}]")


def parse_datetime(text: str, where: str, column: str = "recorded_at") -> datetime:
    """ISO 8601 with a time zone (`2024-05-01T06:30:00+02:00` or `...Z`)."""
    try:
        # fromisoformat accepts "Z" only from Python 3.11.
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise DatasetError(f"{where}: {column} '{text}' is not an ISO 8601 date-time "
                           "(e.g. 2024-05-01T06:30:00+02:00)") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise DatasetError(f"{where}: {column} '{text}' has no time zone; add one, e.g. "
                           f"'{text}Z' for UTC or '{text}+02:00'")
    return value


def parse_metadata(cells: Mapping[str, str], where: str) -> Metadata:
    values: dict[str, object] = {"file": parse_file(cells.get("file", ""), where)}
    for name in NUMERIC_FIELDS:
        value = parse_float(cells.get(name, ""), name, where, required=False)
        if value is not None:
            check_range(name, value, where)
        values[name] = value
    text = cells.get("recorded_at", "")
    values["recorded_at"] = parse_datetime(text, where) if text else None
    for name in TEXT_FIELDS:
        values[name] = cells.get(name) or None
    return Metadata(**values)


def read_metadata(
    path: str | Path,
    files: Collection[str] | None = None,
    dropped: Collection[str] = (),
    problems: list[str] | None = None,
) -> dict[str, Metadata]:
    """Read `metadata.csv` into {file: Metadata}.

    files: if given, the audio files that exist; naming another one is an error (files in
        `dropped` were skipped earlier in lenient mode and are ignored here).
    """
    path = Path(path)
    out: dict[str, Metadata] = {}
    first_line: dict[str, int] = {}
    for line, cells in read_table(path, ("file",), METADATA_FIELDS, problems):
        where = location(path, line)
        try:
            meta = parse_metadata(cells, where)
            if meta.file in dropped:
                continue
            if files is not None and meta.file not in files:
                raise DatasetError(missing_file_message(where, meta.file))
            if meta.file in out:
                raise DatasetError(f"{where}: file '{meta.file}' is listed twice "
                                   f"(first on line {first_line[meta.file]})")
        except DatasetError as err:
            fail_or_record(str(err), problems)
            continue
        out[meta.file], first_line[meta.file] = meta, line
    return out


def write_metadata(path: str | Path, rows: Iterable[Metadata]) -> None:
    """Write `metadata.csv` with `file` plus every field some row has."""
    rows = list(rows)
    columns = ["file"] + [f for f in METADATA_FIELDS if any(getattr(r, f) is not None for r in rows)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_meta_cell(getattr(r, c)) for c in columns])


def _meta_cell(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else cell_text(value)

