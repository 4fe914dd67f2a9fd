"""A dataset folder (the data contract), validated on construction.

```
ROOT/
  audio/            .wav/.flac, any rate, mono or multichannel, subfolders allowed
  annotations.csv   file,start_s,end_s,label[,low_hz,high_hz,focal,snr_db]   (required)
  metadata.csv      file + any of lat,lon,elevation_m,recorded_at,recorder_id,site,
                    habitat,individual; empty cell = missing               (optional)
  splits.csv        file,split                                             (optional)
  labels.txt        ordered label set, one per line (default: sorted labels of annotations)
```
`file` cells are paths relative to `audio/`. Every audio file under `audio/` belongs to the
dataset; one without annotations is a negative (nothing happens in it). Split names are
lowercase identifiers (`[a-z0-9_]+`): train, val, test, shift (unseen recorder) and pretrain
(unlabelled pool) are the ones the training code uses, others are allowed. A file absent from
splits.csv (or with an empty split cell) is in no split.

Validation reads only audio headers. Every contract violation raises one `DatasetError`
naming the file and line; with `lenient=True` bad rows (and unreadable audio files) are
skipped and described in `Dataset.problems`, while problems that leave no usable dataset
(missing annotations.csv or audio/, missing required columns, mixed sample rates) still raise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.contract.errors import UserError, location
from edge_runtime.contract.events import Event, events_to_frames
from train.data.annotations import Annotation, read_annotations, unique_labels
from train.data.audio_io import AudioInfo, audio_info, list_audio, read_audio
from train.data.metadata import Metadata, read_metadata
from train.data.table import (
    DatasetError,
    check_recording,
    fail_or_record,
    parse_file,
    read_rows,
    write_table,
)

__all__ = ["Clip", "Dataset", "DatasetError", "SPLIT_NAME", "read_labels", "read_splits",
           "write_labels", "write_splits"]

SPLIT_NAME = re.compile(r"[a-z0-9_]+")
KNOWN_SPLITS = ("train", "val", "test", "shift", "pretrain")


@dataclass
class Clip:
    file: str
    offset_s: float
    audio: np.ndarray  # (samples,) float32 mono, zero-padded at the end
    sample_rate: int
    targets: np.ndarray  # (frames, C) float32 0/1
    metadata: Metadata


class Dataset:
    """A validated dataset folder; see the module docstring for the layout and rules.

    labels: the ordered label set (overrides labels.txt).
    sample_rate: load audio at this rate; without it all files must share one rate.
    lenient: skip bad rows and unreadable audio, listing them in `problems`.
    """

    def __init__(
        self,
        root: str | Path,
        labels: Sequence[str] | None = None,
        sample_rate: int | None = None,
        lenient: bool = False,
    ) -> None:
        self.root = Path(root)
        self.problems: list[str] = []
        problems = self.problems if lenient else None
        audio_dir = self.root / "audio"
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such dataset folder")
        if not audio_dir.is_dir():
            raise DatasetError(f"{audio_dir}: missing; a dataset keeps its recordings in audio/")
        if not (self.root / "annotations.csv").is_file():
            raise DatasetError(f"{self.root / 'annotations.csv'}: missing (write just the header "
                               "'file,start_s,end_s,label' if nothing is annotated)")
        if sample_rate is not None:
            if not float(sample_rate).is_integer() or sample_rate <= 0:
                raise UserError(f"sample_rate must be a positive integer, got {sample_rate!r}")
            sample_rate = int(sample_rate)

        self._info: dict[str, AudioInfo] = {}
        dropped: set[str] = set()
        for rel in list_audio(audio_dir):
            try:
                self._info[rel] = audio_info(audio_dir / rel)
            except UserError as err:
                fail_or_record(f"{err} (skipped with its annotations)" if lenient else str(err),
                               problems)
                dropped.add(rel)
        self.files: list[str] = list(self._info)
        if not self.files:
            raise DatasetError(f"{audio_dir}: no readable .wav or .flac files")
        self.sample_rate = sample_rate or self._common_rate()

        if labels is not None:
            self.labels = _check_labels(list(labels), "labels argument")
        elif (self.root / "labels.txt").is_file():
            self.labels = read_labels(self.root / "labels.txt")
        else:
            self.labels = None
        durations: dict[str, float | None] = {f: i.duration_s for f, i in self._info.items()}
        durations.update(dict.fromkeys(dropped))
        rows = read_annotations(self.root / "annotations.csv", self.labels, durations, problems)
        if self.labels is None:
            self.labels = unique_labels(rows)
        self._annotations: dict[str, list[Annotation]] = {f: [] for f in self.files}
        for row in rows:
            self._annotations[row.file].append(row)

        meta_path = self.root / "metadata.csv"
        self._metadata = (read_metadata(meta_path, self._info, dropped, problems)
                          if meta_path.is_file() else {})
        split_path = self.root / "splits.csv"
        self.splits: dict[str, str] = (read_splits(split_path, self._info, dropped, problems)
                                       if split_path.is_file() else {})

    def __repr__(self) -> str:
        return (f"Dataset({str(self.root)!r}, files={len(self.files)}, labels={self.labels}, "
                f"sample_rate={self.sample_rate})")

    def __len__(self) -> int:
        return len(self.files)

    # --- per-file access ---------------------------------------------------------------

    def annotations(self, file: str) -> list[Annotation]:
        return list(self._annotations[self._known(file)])

    def events(self, file: str) -> list[Event]:
        return [Event(a.label, a.start_s, a.end_s, file=file) for a in self.annotations(file)]

    def metadata(self, file: str) -> Metadata:
        return self._metadata.get(self._known(file)) or Metadata(file=file)

    def info(self, file: str) -> AudioInfo:
        """Native sample rate, frames, channels (duration_s) from the header."""
        return self._info[self._known(file)]

    def path(self, file: str) -> Path:
        return self.root / "audio" / self._known(file)

    def load(self, file: str) -> tuple[np.ndarray, int]:
        """(samples,) float32 mono at the dataset rate, and that rate."""
        return read_audio(self.path(file), self.sample_rate)

    def files_in(self, split: str) -> list[str]:
        """Files of one split, in dataset order."""
        if split not in set(self.splits.values()):
            have = ", ".join(sorted(set(self.splits.values()))) or "none: there is no splits.csv"
            raise DatasetError(f"{self.root}: no files in split '{split}' (splits: {have})")
        return [f for f in self.files if self.splits.get(f) == split]

    def clips(
        self,
        clip_s: float = 10.0,
        hop_s: float | None = None,
        frame_rate_hz: float = 50.0,
        split: str | None = None,
        files: Sequence[str] | None = None,
    ) -> Iterator[Clip]:
        """Fixed-length clips with frame targets, file by file (each file decoded once).

        Clips start every `hop_s` (default `clip_s`) until one reaches the end of the file;
        the last is zero-padded, and a file shorter than a clip gives one padded clip.
        `files` (dataset-relative paths) restricts the clips to those files, in that order.
        """
        if not clip_s > 0 or (hop_s is not None and not hop_s > 0) or not frame_rate_hz > 0:
            raise UserError(f"clips: clip_s, hop_s and frame_rate_hz must be > 0, got "
                            f"{clip_s}, {hop_s}, {frame_rate_hz}")
        sr = self.sample_rate
        clip_n = round(clip_s * sr)
        hop_n = max(1, round((hop_s or clip_s) * sr))
        n_frames = round(clip_s * frame_rate_hz)
        if files is None:
            files = self.files if split is None else self.files_in(split)
        for file in files:
            audio, _ = self.load(file)
            events, meta = self.events(file), self.metadata(file)
            n_clips = 1 + max(0, -(-(len(audio) - clip_n) // hop_n))  # ceil division
            for k in range(n_clips):
                start = k * hop_n
                piece = np.zeros(clip_n, dtype=np.float32)
                chunk = audio[start : start + clip_n]
                piece[: len(chunk)] = chunk
                offset_s = start / sr
                targets = events_to_frames(events, self.labels, n_frames, frame_rate_hz, offset_s)
                yield Clip(file, offset_s, piece, sr, targets, meta)

    # --- helpers ---------------------------------------------------------------------------

    def _known(self, file: str) -> str:
        if file not in self._info:
            raise DatasetError(f"{self.root}: '{file}' is not one of the dataset's audio files")
        return file

    def _common_rate(self) -> int:
        rates: dict[int, str] = {}
        for file, info in self._info.items():
            rates.setdefault(info.sample_rate, file)
        if len(rates) > 1:
            examples = ", ".join(f"{sr} Hz ({f})" for sr, f in sorted(rates.items()))
            raise DatasetError(f"{self.root / 'audio'}: files have different sample rates "
                               f"[{examples}]; give a target sample rate to resample to")
        return next(iter(rates))


def _check_labels(labels: list[str], where: str) -> list[str]:
    seen: set[str] = set()
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise DatasetError(f"{where}: empty label")
        if label in seen:
            raise DatasetError(f"{where}: label '{label}' appears twice")
        seen.add(label)
    return labels


def read_labels(path: str | Path) -> list[str]:
    """labels.txt: one label per line, in model output order; blank lines ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    labels, first = [], {}
    for i, line in enumerate(lines, start=1):
        label = line.strip()
        if not label:
            continue
        if label in first:
            raise DatasetError(f"{location(path, i)}: label '{label}' repeats line {first[label]}")
        first[label] = i
        labels.append(label)
    if not labels:
        raise DatasetError(f"{path}: no labels (one label per line)")
    return labels


def write_labels(path: str | Path, labels: Sequence[str]) -> None:
    Path(path).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")


def read_splits(
    path: str | Path,
    files: Mapping[str, object] | None = None,
    dropped: Sequence[str] | set[str] = (),
    problems: list[str] | None = None,
) -> dict[str, str]:
    """splits.csv -> {file: split}; an empty split cell leaves the file in no split."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}

    def parse(cells: dict[str, str], where: str) -> tuple[str, str] | None:
        file, split = parse_file(cells["file"], where), cells["split"]
        if not check_recording(file, where, files, dropped, first):
            return None
        if split and not SPLIT_NAME.fullmatch(split):
            hint = (f"; did you mean '{split.lower()}'?"
                    if SPLIT_NAME.fullmatch(split.lower()) else "")
            raise DatasetError(f"{where}: split '{split}' is not a lowercase name "
                               f"([a-z0-9_]+, e.g. {', '.join(KNOWN_SPLITS)}){hint}")
        return file, split

    for line, (file, split) in read_rows(Path(path), ("file", "split"), (), parse, problems):
        first[file] = line
        if split:
            out[file] = split
    return out


def write_splits(path: str | Path, splits: Mapping[str, str]) -> None:
    write_table(path, ["file", "split"], splits.items())
