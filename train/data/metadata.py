"""`metadata.csv`: per-recording context (`file` plus any of the fields below; empty = missing).

The metadata heads and the shifted split use these fields; a recording absent from the file,
or an empty cell, is simply missing (None), never guessed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from train.data.table import (
    DatasetError,
    check_recording,
    parse_file,
    parse_float,
    read_rows,
    write_records,
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
    out: dict[str, Metadata] = {}
    first_line: dict[str, int] = {}

    def parse(cells: dict[str, str], where: str) -> Metadata | None:
        meta = parse_metadata(cells, where)
        return meta if check_recording(meta.file, where, files, dropped, first_line) else None

    for line, meta in read_rows(Path(path), ("file",), METADATA_FIELDS, parse, problems):
        out[meta.file], first_line[meta.file] = meta, line
    return out


def write_metadata(path: str | Path, rows: Iterable[Metadata]) -> None:
    """Write `metadata.csv` with `file` plus every field some row has."""
    write_records(path, rows, ("file",), METADATA_FIELDS)

