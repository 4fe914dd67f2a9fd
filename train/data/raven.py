"""Raven selection tables (Cornell Lab's Raven Pro/Lite): what ecologists open first.

A table is tab-separated text, one selection per row:
`Selection  View  Channel  Begin Time (s)  End Time (s)  Low Freq (Hz)  High Freq (Hz)  Species`.
Raven writes every selection once per open view (Waveform 1, Spectrogram 1, ...) with the
same Selection number; reading keeps one row per number, preferring the spectrogram view
(whose frequency box is the one the annotator drew). Tables that span several files carry
`Begin File`/`Begin Path` and `File Offset (s)` (time within that file); reading uses them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from edge_runtime.contract.errors import location
from edge_runtime.contract.raven import TABLE_SUFFIX, write_selection_table
from train.data.table import DatasetError, fail_or_record, parse_decimal, read_text

LABEL_COLUMNS = ("species", "annotation", "label", "class", "call type")


@dataclass(frozen=True)
class RavenSelection:
    selection: int | None
    start_s: float
    end_s: float
    label: str
    low_hz: float | None = None
    high_hz: float | None = None
    channel: int = 1
    begin_file: str | None = None  # file name from Begin File / Begin Path, if the table has it
    confidence: float | None = None
    line: int = field(default=0, compare=False)  # where it came from, for error messages


def audio_stem_of_table(path: str | Path) -> str:
    """`rec1.Table.1.selections.txt` -> `rec1` (Raven's default table name for rec1.wav)."""
    name = Path(path).name
    i = name.find(".Table.")
    return name[:i] if i > 0 else Path(name).stem


def read_raven_table(
    path: str | Path,
    label_column: str | None = None,
    problems: list[str] | None = None,
) -> list[RavenSelection]:
    """Selections of one table, one per Selection number, in table order.

    label_column: the column holding labels; by default the first of Species, Annotation,
    Label, Class, Call Type present (case-insensitive).
    """
    path = Path(path)
    lines = read_text(path).splitlines()
    head = next((i for i, line in enumerate(lines) if line.strip()), None)
    if head is None:
        raise DatasetError(f"{path}: empty file, not a Raven selection table")
    header = [h.strip() for h in lines[head].split("\t")]
    col = {h.lower(): i for i, h in enumerate(header)}
    for need in ("begin time (s)", "end time (s)"):
        if need not in col:
            raise DatasetError(f"{location(path, head + 1)}: no '{need.title()}' column; not a "
                               f"Raven selection table (columns: {', '.join(header)})")
    label_idx = _label_index(path, head + 1, header, col, label_column)

    def get(cells: list[str], name: str) -> str:
        i = col.get(name)
        return cells[i].strip() if i is not None and i < len(cells) else ""

    chosen: dict[object, RavenSelection] = {}
    spectrogram: set[object] = set()
    for i in range(head + 1, len(lines)):
        if not lines[i].strip():
            continue
        cells = lines[i].split("\t")
        where = location(path, i + 1)
        try:
            sel = _parse_row(get, cells, label_idx, where, i + 1)
        except DatasetError as err:
            fail_or_record(str(err), problems)
            continue
        key = sel.selection if sel.selection is not None else ("row", i)
        is_spec = get(cells, "view").lower().startswith("spectrogram")
        if key not in chosen or (is_spec and key not in spectrogram):
            chosen[key] = sel  # dict keeps the first-seen position of each selection
        if is_spec:
            spectrogram.add(key)
    return list(chosen.values())


def _parse_row(get, cells, label_idx, where, line) -> RavenSelection:
    number = get(cells, "selection")
    try:
        selection = int(number) if number else None
    except ValueError:
        raise DatasetError(f"{where}: Selection '{number}' is not a whole number") from None
    begin = _number(get(cells, "begin time (s)"), "Begin Time (s)", where)
    end = _number(get(cells, "end time (s)"), "End Time (s)", where)
    offset = _number(get(cells, "file offset (s)"), "File Offset (s)", where, required=False)
    if offset is not None:  # multi-file table: Begin Time counts from the first file
        begin, end = offset, offset + (end - begin)
    channel = _number(get(cells, "channel"), "Channel", where, required=False)
    file = get(cells, "begin file") or get(cells, "begin path")
    return RavenSelection(
        selection=selection,
        start_s=begin,
        end_s=end,
        label=cells[label_idx].strip() if label_idx < len(cells) else "",
        low_hz=_number(get(cells, "low freq (hz)"), "Low Freq (Hz)", where, required=False),
        high_hz=_number(get(cells, "high freq (hz)"), "High Freq (Hz)", where, required=False),
        channel=int(channel) if channel is not None else 1,
        # Begin Path is whatever path the annotator's machine had (often C:\...); keep the name.
        begin_file=PureWindowsPath(file).name if file else None,
        confidence=_number(get(cells, "confidence"), "Confidence", where, required=False),
        line=line,
    )


def _label_index(path, line, header, col, label_column) -> int:
    if label_column is not None:
        if label_column.strip().lower() not in col:
            raise DatasetError(f"{location(path, line)}: no label column '{label_column}' "
                               f"(columns: {', '.join(header)})")
        return col[label_column.strip().lower()]
    for name in LABEL_COLUMNS:
        if name in col:
            return col[name]
    raise DatasetError(f"{location(path, line)}: no label column (looked for "
                       f"{', '.join(n.title() for n in LABEL_COLUMNS)}; columns: "
                       f"{', '.join(header)}); name it with --label-column")


def _number(text: str, column: str, where: str, required: bool = True) -> float | None:
    if not text:
        if required:
            raise DatasetError(f"{where}: {column} is empty")
        return None
    return parse_decimal(text, column, where)


def write_raven_table(
    path: str | Path,
    rows: Iterable[object],
    nyquist_hz: float | None = None,
    label_column: str = "Species",
    confidence: bool | None = None,
) -> None:
    """Write a selection table from Annotations, Events or RavenSelections.

    Raven needs a frequency box: a missing low_hz is written as 0 and a missing high_hz as
    `nyquist_hz` (required if some row lacks high_hz). confidence: add a Confidence column
    (default: if the rows carry confidences, as Events do). The writer is shared with
    `meerkit analyze` (edge_runtime/contract/raven.py), so both write the same format.
    """
    write_selection_table(path, rows, nyquist_hz, label_column, confidence)


def export_raven(dataset, out_dir: str | Path) -> list[Path]:
    """One table per audio file, `<stem>.Table.1.selections.txt`, mirroring audio/ subfolders.

    Files without annotations get a header-only table (annotated, nothing found).
    """
    out_dir = Path(out_dir)
    written = []
    for file in dataset.files:
        rows = sorted(dataset.annotations(file), key=lambda a: (a.start_s, a.end_s, a.label))
        target = out_dir / Path(file).parent / (Path(file).stem + TABLE_SUFFIX)
        write_raven_table(target, rows, nyquist_hz=dataset.info(file).sample_rate / 2)
        written.append(target)
    return written

