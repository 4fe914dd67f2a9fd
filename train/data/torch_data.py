"""From a validated `Dataset` to torch batches: fixed-length clips with frame targets and the
metadata targets of the MetaPerch heads (with explicit validity, since any cell may be missing).

Clips are decoded once and kept in memory as float32: the synthetic benchmark and typical
finetuning sets (hours of audio) fit; pretraining pools larger than RAM want a streaming
reader in their place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Sequence
from datetime import datetime

import numpy as np
import torch

from edge_runtime.contract.errors import UserError
from train.config import MetadataHeadConfig
from train.data.dataset import Clip, Dataset
from train.data.metadata import Metadata

# Metadata head name -> the data-contract field(s) it reads.
CLASS_FIELDS = ("recorder_id", "site", "habitat", "individual")
HEAD_FIELDS = {"location": "location", "time_of_day": "circular", "day_of_year": "circular",
               "elevation_m": "regression", **dict.fromkeys(CLASS_FIELDS, "class")}
# Metadata head name -> the `Metadata` attributes it reads. Both time heads read recorded_at:
# hiding that field hides both, as a recorder without a clock would.
HEAD_SOURCES = {"location": ("lat", "lon"), "time_of_day": ("recorded_at",),
                "day_of_year": ("recorded_at",), "elevation_m": ("elevation_m",),
                **{name: (name,) for name in CLASS_FIELDS}}


def _time_of_day(t: datetime | None) -> float:
    # Local wall-clock time at the recorder: what animals follow (dawn chorus), not UTC.
    return math.nan if t is None else (t.hour * 3600 + t.minute * 60 + t.second) / 86400.0


def _day_of_year(t: datetime | None) -> float:
    if t is None:
        return math.nan
    days = 366 if (t.year % 4 == 0 and (t.year % 100 != 0 or t.year % 400 == 0)) else 365
    return (t.timetuple().tm_yday - 1) / days


def metadata_value(meta: Metadata, head: MetadataHeadConfig) -> tuple[np.ndarray | float | int, bool]:
    """(target, valid) of one head for one recording; missing cells give valid=False."""
    name = head.name
    if name == "location":
        ok = meta.lat is not None and meta.lon is not None
        return np.array([meta.lat or 0.0, meta.lon or 0.0], np.float32), ok
    if name == "time_of_day":
        value = _time_of_day(meta.recorded_at)
    elif name == "day_of_year":
        value = _day_of_year(meta.recorded_at)
    elif name == "elevation_m":
        value = math.nan if meta.elevation_m is None else float(meta.elevation_m)
    elif name in CLASS_FIELDS:
        cell = getattr(meta, name)
        # An unseen recorder in val/shift is not an error: it simply has no target.
        index = head.vocabulary.index(cell) if cell in head.vocabulary else -1
        return index, index >= 0
    else:
        raise UserError(f"metadata head '{name}' reads no known field; use one of "
                        f"{', '.join(HEAD_FIELDS)}")
    return value, not math.isnan(value)


def fit_metadata_heads(heads: Sequence[MetadataHeadConfig], dataset: Dataset,
                       files: Sequence[str]) -> tuple[MetadataHeadConfig, ...]:
    """Fill class vocabularies and regression statistics from the training files."""
    fitted = []
    for head in heads:
        if head.name not in HEAD_FIELDS:
            metadata_value(Metadata(file=""), head)  # raises the helpful error
        if HEAD_FIELDS[head.name] != head.kind:
            raise UserError(f"metadata head '{head.name}' must be of kind "
                            f"'{HEAD_FIELDS[head.name]}', not '{head.kind}'")
        metas = [dataset.metadata(f) for f in files]
        if head.kind == "class":
            vocab = sorted({getattr(m, head.name) for m in metas} - {None})
            if not vocab:
                raise UserError(f"metadata head '{head.name}': no training file has a "
                                f"{head.name}; turn the head off")
            head = dataclasses.replace(head, vocabulary=tuple(vocab))
        elif head.kind == "regression":
            values = [m.elevation_m for m in metas if m.elevation_m is not None]
            if values:
                head = dataclasses.replace(head, target_mean=float(np.mean(values)),
                                           target_std=float(np.std(values)) or 1.0)
        fitted.append(head)
    return tuple(fitted)


def hidden_metadata(files: Iterable[str], fields: Iterable[str], frac: float,
                    seed: int) -> dict[str, frozenset[str]]:
    """field -> the files whose `field` is to be treated as missing (a benchmark knob).

    Exactly round(frac * files) files per field: those ranked first by a hash of (seed, field,
    file), so the choice is deterministic, independent of the order of `files`, and
    independent across fields.
    """
    if not 0.0 <= frac <= 1.0:
        raise UserError(f"metadata missing fraction must be in [0, 1], got {frac}")
    unique = sorted(set(files))
    count = round(frac * len(unique))

    def rank(field: str, file: str) -> bytes:
        return hashlib.blake2b(f"{seed}\0{field}\0{file}".encode(), digest_size=8).digest()

    return {field: frozenset(sorted(unique, key=lambda f: rank(field, f))[:count])
            for field in sorted(set(fields))}


class ClipDataset(torch.utils.data.Dataset):
    """Fixed-length clips of the given files; items are dicts of tensors (see `collate`).

    metadata_missing_frac: hide each metadata field of that fraction of the files (chosen by
    `hidden_metadata` with metadata_missing_seed, independently per field), as if the cell
    were empty: for benchmarks at 0/50/90 % missing metadata. Real missing cells stay missing.
    """

    def __init__(self, dataset: Dataset, files: Sequence[str], clip_s: float,
                 frame_rate_hz: float, heads: Sequence[MetadataHeadConfig] = (),
                 hop_s: float | None = None, labelled: bool = True,
                 metadata_missing_frac: float = 0.0, metadata_missing_seed: int = 0):
        self.labels = dataset.labels
        self.heads = tuple(heads)
        self.labelled = labelled
        fields = {",".join(HEAD_SOURCES.get(h.name, ())) for h in self.heads} - {""}
        self.hidden = hidden_metadata(files, fields, metadata_missing_frac, metadata_missing_seed)
        self.clips: list[Clip] = list(dataset.clips(clip_s, hop_s, frame_rate_hz, files=files))
        if not self.clips:
            raise UserError(f"{dataset.root}: no clips in the selected files")

    def _metadata(self, clip: Clip, head: MetadataHeadConfig) -> Metadata:
        """The clip's metadata as `head` sees it: its fields emptied if hidden for this file."""
        attrs = HEAD_SOURCES.get(head.name, ())
        if clip.file not in self.hidden.get(",".join(attrs), ()):
            return clip.metadata
        return dataclasses.replace(clip.metadata, **dict.fromkeys(attrs))

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        item = {"audio": torch.from_numpy(clip.audio), "meta": {}, "valid": {}}
        if self.labelled:
            item["targets"] = torch.from_numpy(clip.targets)
        for head in self.heads:
            value, ok = metadata_value(self._metadata(clip, head), head)
            item["meta"][head.name] = torch.as_tensor(value)
            item["valid"][head.name] = torch.tensor(ok)
        return item


def collate(items: list[dict]) -> dict:
    """Stack a list of `ClipDataset` items: audio (batch, samples), targets (batch, frames, C)."""
    batch = {"audio": torch.stack([i["audio"] for i in items])}
    if "targets" in items[0]:
        batch["targets"] = torch.stack([i["targets"] for i in items])
    for key in ("meta", "valid"):
        batch[key] = {name: torch.stack([i[key][name] for i in items]) for name in items[0][key]}
    return batch


def read_subset(dataset: Dataset, name: str) -> list[str]:
    """Files listed in `subsets/<name>.txt` (e.g. train_1pct from `meerkit synth`)."""
    path = dataset.root / "subsets" / f"{name}.txt"
    if not path.is_file():
        raise UserError(f"{path}: no such subset file (one dataset-relative path per line)")
    files = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    unknown = [f for f in files if f not in dataset.files]
    if unknown:
        raise UserError(f"{path}: lists files that are not in the dataset: {unknown[:3]}")
    return files


def select_files(dataset: Dataset, selection: str) -> list[str]:
    """A split name (`train`) or a subset (`subset:train_1pct`) -> list of files."""
    if selection.startswith("subset:"):
        return read_subset(dataset, selection.split(":", 1)[1])
    return dataset.files_in(selection)
