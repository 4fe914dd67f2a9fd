"""Turn annotations made elsewhere into a dataset folder (see train/data/dataset.py).

Three sources: Raven selection tables, Audacity label tracks, MeerKAT-style clip folders
(`X.wav` + `X.csv`/`X.txt`). Each importer collects (audio file, annotations) pairs, checks
them against the audio headers, copies (or symlinks, `link=True`) the audio into
`OUT/audio/`, writes annotations.csv, metadata.csv (file column only: fill it in) and
labels.txt, and returns the validated `Dataset`.

Only audio that has annotations is imported (an annotation file with no rows counts: it says
"annotated, nothing there"); a recording nobody annotated is not a negative, so it stays out.
With `lenient=True` a bad row or unreadable audio file is skipped and listed in
`Dataset.problems`; otherwise the first one raises `DatasetError` naming file and line.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath

from edge_runtime.contract.errors import UserError, location
from train.data.annotations import Annotation, check_annotation, unique_labels, write_annotations
from train.data.audio_io import AudioInfo, audio_info, list_audio
from train.data.dataset import Dataset, write_labels
from train.data.metadata import Metadata, write_metadata
from train.data.raven import audio_stem_of_table, read_raven_table
from train.data.table import DatasetError, fail_or_record, parse_decimal, read_text

log = logging.getLogger(__name__)

# (where, annotation) pairs keep the source line for error messages.
Sourced = list[tuple[str, Annotation]]


class AudioIndex:
    """Audio files under a folder, found by relative path, file name or stem."""

    def __init__(self, folder: Path) -> None:
        if not folder.is_dir():
            raise UserError(f"{folder}: audio folder not found")
        self.folder = folder
        self.files = list_audio(folder)
        self._by_name: dict[str, list[str]] = {}
        self._by_stem: dict[str, list[str]] = {}
        for rel in self.files:
            p = PurePosixPath(rel)
            self._by_name.setdefault(p.name.lower(), []).append(rel)
            self._by_stem.setdefault(p.stem.lower(), []).append(rel)

    def by_name(self, name: str, where: str) -> str:
        return self._one(self._by_name.get(name.lower(), []), f"'{name}'", where)

    def by_stem(self, stem: str, where: str) -> str:
        return self._one(self._by_stem.get(stem.lower(), []), f"'{stem}.wav' or '{stem}.flac'",
                         where)

    def _one(self, found: list[str], what: str, where: str) -> str:
        if not found:
            raise DatasetError(f"{where}: no audio file {what} under {self.folder}")
        if len(found) > 1:
            raise DatasetError(f"{where}: {what} is ambiguous under {self.folder}: "
                               f"{', '.join(found)}")
        return found[0]


# --- Raven ---------------------------------------------------------------------------------


def import_raven(
    tables: Sequence[str | Path],
    audio_dir: str | Path,
    out: str | Path,
    label_column: str | None = None,
    link: bool = False,
    lenient: bool = False,
    sample_rate: int | None = None,
) -> Dataset:
    """Raven selection tables (files, or folders searched for `*.selections.txt`).

    The audio file is the table's `Begin File`/`Begin Path` column if it has one, else the
    table name: `rec1.Table.1.selections.txt` annotates `rec1.wav` (or .flac) in `audio_dir`.
    """
    index = AudioIndex(Path(audio_dir))
    problems: list[str] | None = [] if lenient else None
    found: dict[str, Sourced] = {}
    paths = _expand(tables, "*.selections.txt")
    if not paths:
        raise UserError(f"no Raven selection tables (*.selections.txt) in {', '.join(map(str, tables))}")
    for table in paths:
        try:
            selections = read_raven_table(table, label_column, problems)
            by_name = None
            if not selections or any(s.begin_file is None for s in selections):
                by_name = index.by_stem(audio_stem_of_table(table), location(table))
                found.setdefault(by_name, [])
        except DatasetError as err:
            fail_or_record(str(err), problems)
            continue
        for s in selections:
            where = location(table, s.line)
            try:
                file = index.by_name(s.begin_file, where) if s.begin_file else by_name
            except DatasetError as err:
                fail_or_record(str(err), problems)
                continue
            ann = Annotation(file, s.start_s, s.end_s, s.label, s.low_hz, s.high_hz)
            found.setdefault(file, []).append((where, ann))
    return _write_dataset(found, index, Path(out), link, problems, sample_rate)


# --- Audacity ------------------------------------------------------------------------------

_LABEL_SUFFIX = re.compile(r"[ ._-]?labels?$", re.IGNORECASE)


def import_audacity(
    label_files: Sequence[str | Path],
    audio_dir: str | Path,
    out: str | Path,
    link: bool = False,
    lenient: bool = False,
    sample_rate: int | None = None,
) -> Dataset:
    """Audacity label tracks (File > Export > Labels), files or folders of `*.txt`.

    `rec1.txt` (or `rec1_labels.txt`, `rec1.labels.txt`) annotates `rec1.wav`/.flac. Lines are
    `start<TAB>end<TAB>label`; a spectral selection adds a line `\\<TAB>low_hz<TAB>high_hz`.
    """
    index = AudioIndex(Path(audio_dir))
    problems: list[str] | None = [] if lenient else None
    found: dict[str, Sourced] = {}
    paths = _expand(label_files, "*.txt")
    if not paths:
        raise UserError(f"no Audacity label files (*.txt) in {', '.join(map(str, label_files))}")
    for path in paths:
        try:
            file = _audio_for_label_file(index, path)
            rows = read_audacity_labels(path, file, problems)
        except DatasetError as err:
            fail_or_record(str(err), problems)
            continue
        found.setdefault(file, []).extend(rows)
    return _write_dataset(found, index, Path(out), link, problems, sample_rate)


def _audio_for_label_file(index: AudioIndex, path: Path) -> str:
    try:
        return index.by_stem(path.stem, location(path))
    except DatasetError:
        stripped = _LABEL_SUFFIX.sub("", path.stem)
        if stripped and stripped != path.stem:
            return index.by_stem(stripped, location(path))
        raise


def read_audacity_labels(path: str | Path, file: str, problems: list[str] | None = None) -> Sourced:
    """Rows of an Audacity label file as (where, Annotation) for `file`."""
    path = Path(path)
    rows: Sourced = []
    last_line = failed_line = 0  # line numbers of the last label line parsed / rejected
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = location(path, n)
        cells = line.split("\t")
        try:
            if cells[0].strip() == "\\":  # frequency line for the label line above
                if failed_line == n - 1:
                    continue  # its label line was already reported
                if last_line != n - 1:
                    raise DatasetError(f"{where}: frequency line without a label line above it")
                low, high = (parse_decimal(c, "frequency", where)
                             for c in (cells + ["", ""])[1:3])
                # Audacity writes -1 for an undefined bound.
                prev_where, prev = rows[-1]
                rows[-1] = (prev_where, replace(prev, low_hz=low if low >= 0 else None,
                                                high_hz=high if high >= 0 else None))
                continue
            if len(cells) < 3:
                raise DatasetError(f"{where}: expected start<TAB>end<TAB>label, got {line!r}")
            start = parse_decimal(cells[0], "start", where)
            end = parse_decimal(cells[1], "end", where)
            if end == start:
                raise DatasetError(f"{where}: point label at {start:g} s (start = end); "
                                   "annotate a region instead")
            rows.append((where, Annotation(file, start, end, "\t".join(cells[2:]).strip())))
            last_line = n
        except DatasetError as err:
            failed_line = n
            fail_or_record(str(err), problems)
    return rows


# --- MeerKAT-style clips -------------------------------------------------------------------


def import_meerkat(
    clips_dir: str | Path,
    out: str | Path,
    link: bool = False,
    lenient: bool = False,
    sample_rate: int | None = None,
) -> Dataset:
    """A folder of clips `X.wav` with label files `X.csv` or `X.txt` beside them.

    Label files are either `Name,Start,Duration` (as in the MeerKAT release; times in seconds
    or `m:ss.fff` / `h:mm:ss.fff`; tab-separated Audition marker lists work too) or
    `start,end,label` (with or without that header; comma- or tab-separated).
    Clips without a label file are skipped (logged), since unannotated is not negative.
    """
    clips_dir = Path(clips_dir)
    index = AudioIndex(clips_dir)
    problems: list[str] | None = [] if lenient else None
    found: dict[str, Sourced] = {}
    unlabelled = []
    for rel in index.files:
        audio = clips_dir / rel
        label_file = next((p for p in (audio.with_suffix(".csv"), audio.with_suffix(".txt"))
                           if p.is_file()), None)
        if label_file is None:
            unlabelled.append(rel)
            continue
        try:
            found[rel] = read_clip_labels(label_file, rel, problems)
        except DatasetError as err:
            fail_or_record(str(err), problems)
    if unlabelled:
        log.warning("%d clip(s) have no label file and were skipped (e.g. %s)",
                    len(unlabelled), unlabelled[0])
    if not found:
        first = f" (first problem: {problems[0]})" if problems else ""
        raise UserError(f"{clips_dir}: no clip has a usable label file (X.wav needs X.csv or "
                        f"X.txt){first}")
    return _write_dataset(found, index, Path(out), link, problems, sample_rate)


def read_clip_labels(path: str | Path, file: str, problems: list[str] | None = None) -> Sourced:
    """Rows of one MeerKAT-style label file as (where, Annotation) for `file`."""
    path = Path(path)
    text = read_text(path)
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = "\t" if "\t" in first else ","
    records = [(n, [c.strip() for c in row]) for n, row in
               enumerate(csv.reader(io.StringIO(text), delimiter=delimiter), start=1)
               if any(c.strip() for c in row)]
    if not records:
        return []
    head = [c.lower() for c in records[0][1]]
    if {"name", "start", "duration"} <= set(head):
        cols, kind = [head.index(c) for c in ("name", "start", "duration")], "duration"
        records = records[1:]
    elif {"start", "end", "label"} <= set(head) or {"start_s", "end_s", "label"} <= set(head):
        names = ("start", "end") if "start" in head else ("start_s", "end_s")
        cols, kind = [head.index("label"), head.index(names[0]), head.index(names[1])], "end"
        records = records[1:]
    else:
        try:
            _clock(records[0][1][0], "start", location(path, records[0][0]))
        except (DatasetError, IndexError):
            raise DatasetError(f"{location(path, records[0][0])}: unrecognised label file; "
                               "expected a Name,Start,Duration or start,end,label header "
                               "(or headerless start,end,label rows)") from None
        cols, kind = [2, 0, 1], "end"
    rows: Sourced = []
    for n, cells in records:
        where = location(path, n)
        try:
            if len(cells) <= max(cols):
                raise DatasetError(f"{where}: expected {max(cols) + 1} cells, got {len(cells)}")
            label = cells[cols[0]]
            start = _clock(cells[cols[1]], "start", where)
            second = _clock(cells[cols[2]], "duration" if kind == "duration" else "end", where)
            end = start + second if kind == "duration" else second
            rows.append((where, Annotation(file, start, end, label)))
        except DatasetError as err:
            fail_or_record(str(err), problems)
    return rows


def _clock(text: str, column: str, where: str) -> float:
    """Seconds from `12.5`, `0:12.500` or `1:02:03.5`."""
    parts = text.split(":")
    try:
        if len(parts) > 3 or any(p.strip() == "" for p in parts):
            raise ValueError
        seconds = 0.0
        for p in parts:
            seconds = seconds * 60 + float(p)
        return seconds
    except ValueError:
        raise DatasetError(f"{where}: {column} '{text}' is not a time (seconds or m:ss.fff)") \
            from None


# --- shared --------------------------------------------------------------------------------


def _write_dataset(
    found: dict[str, Sourced],
    index: AudioIndex,
    out: Path,
    link: bool,
    problems: list[str] | None,
    sample_rate: int | None,
) -> Dataset:
    """Check rows against the audio, write OUT, validate it; bad rows skipped if lenient."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; choose a new --out folder")
    infos: dict[str, AudioInfo] = {}
    kept: list[Annotation] = []
    for file in sorted(found):
        try:
            infos[file] = audio_info(index.folder / file)
        except UserError as err:
            fail_or_record(str(err), problems)
            continue
        duration = infos[file].duration_s
        for where, ann in found[file]:
            try:
                check_annotation(ann, where)
                if ann.start_s >= duration:
                    raise DatasetError(f"{where}: start {ann.start_s:g} s is past the end of "
                                       f"{file} ({duration:g} s long)")
            except DatasetError as err:
                fail_or_record(str(err), problems)
                continue
            kept.append(ann)
    if not infos:
        raise UserError("nothing to import: no annotated, readable audio file was found")

    audio_out = out / "audio"
    for file in infos:
        src, dst = (index.folder / file).resolve(), audio_out / file
        dst.parent.mkdir(parents=True, exist_ok=True)
        if link:
            os.symlink(src, dst)
        else:
            shutil.copy2(src, dst)
    kept.sort(key=lambda a: (a.file, a.start_s, a.end_s, a.label))
    write_annotations(out / "annotations.csv", kept)
    write_metadata(out / "metadata.csv", [Metadata(file=f) for f in infos])
    labels = unique_labels(kept)
    if labels:
        write_labels(out / "labels.txt", labels)

    rates = {i.sample_rate for i in infos.values()}
    if sample_rate is None and len(rates) > 1:
        # The folder is valid; only loading it needs one rate. Validate at the highest.
        log.warning("imported audio has several sample rates (%s Hz); give a sample rate "
                    "when training", ", ".join(map(str, sorted(rates))))
        sample_rate = max(rates)
    dataset = Dataset(out, sample_rate=sample_rate)
    dataset.problems = list(problems or [])
    log.info("imported %d file(s), %d annotation(s), %d label(s) into %s",
             len(infos), len(kept), len(labels), out)
    return dataset


def _expand(paths: Sequence[str | Path], pattern: str) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(p.rglob(pattern)) if p.is_dir() else [p])
    return out
