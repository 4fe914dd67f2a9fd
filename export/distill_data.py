"""What a student trains on: the teacher's frame tracks over whole files (cached on disk, keyed
by teacher sha256 + file + clip parameters) and the files cut into training windows held in
memory with labels and the teacher's logits at the student's frame times (several teachers:
their ensemble)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CACHE_VERSION = 1


# ---------------------------------------------------------------- teacher outputs (cached)
def cache_key(teacher_sha256: str, dataset, file: str, window_s: float, hop_s: float) -> str:
    stat = dataset.path(file).stat()
    key = {"v": CACHE_VERSION, "teacher": teacher_sha256, "file": file, "size": stat.st_size,
           "mtime_ns": stat.st_mtime_ns, "sample_rate": dataset.sample_rate,
           "window_s": window_s, "hop_s": hop_s}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def teacher_tracks(source, dataset, files: list[str], cache_dir: Path, progress: bool = True
                   ) -> dict[str, np.ndarray]:
    """Frame logits (frames, C) per file at the teacher's frame rate, from the cache when
    present. `source` (export.source.Source): a finetuned teacher stitched from windows of
    its card's geometry, or a student checkpoint (a member of an ensemble) in its own
    deployment geometry."""
    from tqdm import tqdm

    from edge_runtime.contract.windows import track
    from export.backends import geometry

    card = source.card
    geo = geometry(card)
    run = source.window_fn()
    cache_dir.mkdir(parents=True, exist_ok=True)
    out, computed = {}, 0
    for file in tqdm(files, desc="teacher", disable=not progress, leave=False):
        key = cache_key(card.sha256, dataset, file, card.window_s, card.hop_s)
        path = cache_dir / f"{key}.npy"
        if path.is_file():
            out[file] = np.load(path)
            continue
        audio, _ = dataset.load(file)
        logits = track(audio, geo, run).astype(np.float32)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, logits)
        tmp.replace(path)
        out[file] = logits
        computed += 1
    log.info("teacher outputs: %d computed, %d from cache %s", computed, len(files) - computed,
             cache_dir)
    return out


def resample_frames(values: np.ndarray, rate_from: float, times_s: np.ndarray) -> np.ndarray:
    """Linear interpolation of a frame track (frames, C) at `rate_from` fps to the given
    times (frame centres); frame k of the track sits at (k + 0.5) / rate_from. Times beyond
    the ends take the edge values."""
    position = np.clip(times_s * rate_from - 0.5, 0, len(values) - 1)
    lo = np.floor(position).astype(int)
    hi = np.minimum(lo + 1, len(values) - 1)
    w = (position - lo)[:, None].astype(np.float32)
    return (1 - w) * values[lo] + w * values[hi]


# ---------------------------------------------------------------- data
@dataclass
class Windows:
    """Training windows in memory: raw audio (N, samples), cached teacher logits at the
    student's frame times (N, F, C) (None without a teacher), labels (N, F, C), labelled (N,),
    valid frames (N, F)."""

    audio: torch.Tensor
    teacher: torch.Tensor | None
    labels: torch.Tensor
    labelled: torch.Tensor
    valid: torch.Tensor


def ensemble_logits(logits: Sequence[np.ndarray]) -> np.ndarray:
    """One teacher's logits unchanged; several teachers' as the logit of their mean
    probability (an ensemble averages what its members believe, not their raw scores)."""
    from export.backends import sigmoid

    if len(logits) == 1:
        return logits[0]
    p = np.clip(np.mean([sigmoid(x) for x in logits], axis=0, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p)).astype(np.float32)


def build_windows(dataset, labelled_files: list[str], unlabelled_files: list[str],
                  teachers: Sequence[tuple[Mapping[str, np.ndarray], float]], window_s: float,
                  frame_rate: float, progress: bool) -> Windows:
    """Every file cut into windows (50 % overlap) with labels and, given teachers' tracks
    (each with its frame rate), their (ensemble) logits at the student's frame times."""
    from tqdm import tqdm

    audio, teach, labels, labelled, valid = [], [], [], [], []
    files = [(f, True) for f in labelled_files] + [(f, False) for f in unlabelled_files]
    n_frames = round(window_s * frame_rate)
    centres = (np.arange(n_frames) + 0.5) / frame_rate
    for file, has_labels in tqdm(files, desc="windows", disable=not progress, leave=False):
        duration = dataset.info(file).duration_s
        for clip in dataset.clips(window_s, window_s / 2, frame_rate, files=[file]):
            times = clip.offset_s + centres
            if teachers:
                teach.append(ensemble_logits([resample_frames(tracks[file], rate, times)
                                              for tracks, rate in teachers]))
            audio.append(clip.audio.astype(np.float32))
            labels.append(clip.targets)
            labelled.append(has_labels)
            valid.append(times < duration)
    return Windows(torch.from_numpy(np.stack(audio)),
                   torch.from_numpy(np.stack(teach)) if teachers else None,
                   torch.from_numpy(np.stack(labels)).float(), torch.tensor(labelled),
                   torch.from_numpy(np.stack(valid)))
