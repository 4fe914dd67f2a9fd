"""Knowledge distillation: the finetuned teacher teaches a small student.

Data: fixed windows (the student's deployment window, 50 % overlap) of unlabelled audio
(`pretrain` split) and labelled audio (`train`). The teacher runs once per file, stitched
over its own windows exactly as at deployment, and its frame logits are cached on disk
(`np.save`, keyed by teacher sha256 + file + clip parameters), so a second run with another
student architecture or step count skips the teacher.

Loss per window:
    T^2 * BCE(student / T, sigmoid(teacher / T))           every window (soft targets)
  + focal(student, labels)                                  labelled windows only
The teacher's frames are interpolated to the student's frame times, so a student with a
different hop (frame rate) learns from the same teacher. After training, per-label decision
thresholds are chosen on `val` (maximising frame F1) and stored in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime.errors import UserError
from edge_runtime.windows import WindowGeometry

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class DistillConfig:
    arch: str = "pico"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    temperature: float = 2.0
    kd_weight: float = 1.0
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    # No alpha: with rare positives, alpha = 0.25 (the teacher's setting) plus soft targets
    # left students with nearly flat logits, whose int8 decisions then flip on tiny noise.
    focal_alpha: float | None = None
    window_s: float = 2.0  # student deployment window and streaming hop
    hop_s: float = 1.0
    teacher_window_s: float = 2.0  # how the teacher is stitched over files (hop: half)
    labelled_splits: tuple[str, ...] = ("train",)
    unlabelled_splits: tuple[str, ...] = ("pretrain",)
    val_split: str = "val"
    eval_every: int = 0  # 0: five times per run
    seed: int = 0
    n_mels: int = 64
    hop_length: int = 0  # samples; 0 = 20 ms (the teacher's 50 fps at 16 kHz)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise UserError("distill: steps, batch size, lr and temperature must be > 0")
        if not 0 < self.hop_s <= self.window_s:
            raise UserError(f"distill: need 0 < hop_s ({self.hop_s}) <= window_s ({self.window_s})")


# ---------------------------------------------------------------- teacher outputs (cached)
def cache_key(teacher_sha256: str, dataset, file: str, window_s: float, hop_s: float) -> str:
    stat = dataset.path(file).stat()
    key = {"v": CACHE_VERSION, "teacher": teacher_sha256, "file": file, "size": stat.st_size,
           "mtime_ns": stat.st_mtime_ns, "sample_rate": dataset.sample_rate,
           "window_s": window_s, "hop_s": hop_s}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def teacher_tracks(teacher, teacher_sha256: str, dataset, files: list[str], window_s: float,
                   cache_dir: Path, progress: bool = True) -> dict[str, np.ndarray]:
    """Teacher frame logits (frames, C) per file at the teacher's frame rate, from the cache
    when present."""
    from tqdm import tqdm

    from edge_runtime.windows import track
    from export.backends import torch_window_fn

    cfg = teacher.config
    hop_s = window_s / 2
    window, hop = round(window_s * cfg.sample_rate), round(hop_s * cfg.sample_rate)
    if window % cfg.total_stride or hop % cfg.total_stride:
        raise UserError(f"teacher window {window_s:g} s: window and half-window must be whole "
                        f"teacher frames ({cfg.total_stride} samples)")
    geo = WindowGeometry(window, hop, window // cfg.total_stride, hop // cfg.total_stride,
                         cfg.sample_rate)
    run = torch_window_fn(teacher.export_module().eval())
    cache_dir.mkdir(parents=True, exist_ok=True)
    out, computed = {}, 0
    for file in tqdm(files, desc="teacher", disable=not progress, leave=False):
        path = cache_dir / f"{cache_key(teacher_sha256, dataset, file, window_s, hop_s)}.npy"
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


# ---------------------------------------------------------------- loss
def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                      weights: torch.Tensor) -> torch.Tensor:
    """T^2-scaled BCE between softened sigmoid outputs (multi-label KD); logits (B, F, C),
    weights (B, F, 1) mark the frames that exist (not the padding after a file's end)."""
    t = temperature
    soft = torch.sigmoid(teacher / t)
    loss = F.binary_cross_entropy_with_logits(student / t, soft, reduction="none")
    loss = loss * weights
    return loss.sum() / (weights.sum() * loss.shape[-1]).clamp(min=1.0) * t * t


# ---------------------------------------------------------------- thresholds
def choose_thresholds(probs: np.ndarray, targets: np.ndarray,
                      grid: np.ndarray | None = None) -> list[float]:
    """Per class, the threshold on a grid that maximises frame F1 (0.5 without positives)."""
    grid = np.round(np.linspace(0.02, 0.98, 49), 2) if grid is None else grid
    out = []
    for c in range(probs.shape[1]):
        y = targets[:, c] >= 0.5
        if not y.any():
            out.append(0.5)
            continue
        decided = probs[:, c][:, None] >= grid[None, :]  # (frames, thresholds)
        tp = (decided & y[:, None]).sum(0)
        f1 = 2 * tp / (decided.sum(0) + y.sum())
        out.append(float(grid[int(np.argmax(f1))]))
    return out


# ---------------------------------------------------------------- data
@dataclass
class Windows:
    """Training windows in memory: features (N, F, M), teacher logits (N, F, C), labels
    (N, F, C), labelled (N,), valid frames (N, F)."""

    features: torch.Tensor
    teacher: torch.Tensor
    labels: torch.Tensor
    labelled: torch.Tensor
    valid: torch.Tensor


def build_windows(dataset, labelled_files: list[str], unlabelled_files: list[str],
                  tracks: dict[str, np.ndarray], teacher_rate: float, window_s: float,
                  frame_rate: float, frontend, progress: bool) -> Windows:
    """Every file cut into windows (50 % overlap), with unnormalised log-mel features and the
    teacher's logits at the student's frame times."""
    from tqdm import tqdm

    from edge_runtime.frontend import logmel

    feats, teach, labels, labelled, valid = [], [], [], [], []
    files = [(f, True) for f in labelled_files] + [(f, False) for f in unlabelled_files]
    n_frames = round(window_s * frame_rate)
    centres = (np.arange(n_frames) + 0.5) / frame_rate
    for file, has_labels in tqdm(files, desc="windows", disable=not progress, leave=False):
        duration = dataset.info(file).duration_s
        for clip in dataset.clips(window_s, window_s / 2, frame_rate, files=[file]):
            times = clip.offset_s + centres
            teach.append(resample_frames(tracks[file], teacher_rate, times))
            labels.append(clip.targets)
            labelled.append(has_labels)
            valid.append(times < duration)
            feats.append(logmel(clip.audio[None], frontend, dataset.sample_rate)[0])
    return Windows(torch.from_numpy(np.stack(feats)), torch.from_numpy(np.stack(teach)),
                   torch.from_numpy(np.stack(labels)), torch.tensor(labelled),
                   torch.from_numpy(np.stack(valid)))


# ---------------------------------------------------------------- the run
def distill(teacher_path: Path, data: Path, out: Path, config: DistillConfig,
            cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Train a student from the teacher; writes `out` (student checkpoint) and returns it."""
    from tqdm import tqdm

    from export.backends import geometry_for, sigmoid, torch_student_window_fn, track_files
    from export.source import load_source
    from export.student import (
        Student,
        StudentSpec,
        arch,
        default_frontend,
        save_student,
    )
    from train.checkpoint import load_model, weights_sha256
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files
    from train.engine import cosine_with_warmup, seed_everything
    from train.evaluate import score_files

    seed_everything(config.seed)
    student_config = arch(config.arch)
    teacher, record = load_model(teacher_path)
    if teacher.classifier is None:
        raise UserError(f"{teacher_path}: a pretrained model has no classifier; finetune it first")
    labels = list(record["labels"])
    sr = teacher.config.sample_rate
    dataset = Dataset(data, sample_rate=sr)
    if dataset.labels != labels:
        raise UserError(f"{data}: label set {dataset.labels} differs from the teacher's {labels} "
                        f"({teacher_path})")
    labelled = [f for s in config.labelled_splits for f in select_files(dataset, s)]
    unlabelled = [f for s in config.unlabelled_splits
                  if s in set(dataset.splits.values()) for f in select_files(dataset, s)]
    if not labelled and not unlabelled:
        raise UserError(f"{data}: no files in {config.labelled_splits + config.unlabelled_splits}")
    val_files = (dataset.files_in(config.val_split)
                 if config.val_split in set(dataset.splits.values()) else [])
    teacher_sha = weights_sha256(teacher)
    cache_dir = cache_dir or Path(out).parent / "teacher_cache"

    tracks = teacher_tracks(teacher, teacher_sha, dataset, labelled + unlabelled,
                            config.teacher_window_s, cache_dir, progress)
    base = default_frontend(sr)
    hop_length = config.hop_length or base.hop_length
    frontend = dataclasses.replace(base, n_mels=config.n_mels, hop_length=hop_length)
    frame_rate = sr / hop_length
    if any(abs(round(s * frame_rate) - s * frame_rate) > 1e-6
           for s in (config.window_s, config.hop_s)):
        raise UserError(f"distill: window ({config.window_s:g} s) and hop ({config.hop_s:g} s) "
                        f"must be whole student frames ({hop_length} samples)")
    windows = build_windows(dataset, labelled, unlabelled, tracks, teacher.config.frame_rate_hz,
                            config.window_s, frame_rate, frontend, progress)
    # Input normalisation: one scalar mean/std over the training features (frames that exist).
    real = windows.features[windows.valid]
    mean, std = float(real.mean()), float(real.std()) or 1.0
    frontend = dataclasses.replace(frontend, mean=round(mean, 6), std=round(std, 6))
    windows.features = (windows.features - frontend.mean) / frontend.std
    del teacher  # the student trains from cached outputs only

    model = Student(student_config, frontend.n_mels, len(labels))
    log.info("distilling %s student (%d parameters) on %d windows (%d labelled) for %d steps",
             config.arch, model.num_parameters(), len(windows.features),
             int(windows.labelled.sum()), config.steps)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(
        s, min(config.warmup_steps, max(1, config.steps // 10)), config.steps))
    generator = torch.Generator().manual_seed(config.seed)

    spec = StudentSpec(config.arch, student_config, frontend, sr, config.window_s, config.hop_s,
                       tuple(labels), tuple([0.5] * len(labels)))

    def validate() -> tuple[float, list[float], dict[str, Any]]:
        model.eval()
        geo = geometry_for(sr, config.window_s, config.hop_s, frame_rate)
        run = torch_student_window_fn(model, spec)
        logits = track_files(run, geo, dataset, val_files)
        probs = {f: sigmoid(v) for f, v in logits.items()}
        targets = {f: _targets(dataset, f, len(p), frame_rate) for f, p in probs.items()}
        thresholds = choose_thresholds(np.concatenate(list(probs.values())),
                                       np.concatenate(list(targets.values())))
        from edge_runtime.events import DecoderConfig

        report = score_files(dataset, probs, targets, frame_rate, DecoderConfig(thresholds))
        model.train()
        macro = report["frame_ap"]["macro"]
        return (-math.inf if math.isnan(macro) else macro), thresholds, report

    eval_every = config.eval_every or max(1, config.steps // 5)
    best: dict[str, Any] = {"score": -math.inf, "state": None, "thresholds": None,
                            "report": None, "step": 0}
    model.train()
    bar = tqdm(range(1, config.steps + 1), desc=f"distill {config.arch}", disable=not progress)
    for step in bar:
        idx = torch.randint(len(windows.features), (config.batch_size,), generator=generator)
        x, t, y = windows.features[idx], windows.teacher[idx], windows.labels[idx]
        valid = windows.valid[idx][..., None].float()  # (B, F, 1)
        logits = model(x)
        kd = distillation_loss(logits, t, config.temperature, valid)
        hard = windows.labelled[idx][:, None, None].float() * valid
        focal = logits.sum() * 0.0
        if hard.sum() > 0:
            from train.losses import sigmoid_focal_loss

            focal = sigmoid_focal_loss(logits, y, config.focal_gamma, config.focal_alpha,
                                       weights=hard)
        loss = config.kd_weight * kd + config.focal_weight * focal
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(kd=f"{kd.item():.4f}", focal=f"{focal.item():.4f}")
        if val_files and (step % eval_every == 0 or step == config.steps):
            score, thresholds, report = validate()
            log.info("step %d: val frame macro AP %.3f", step, score)
            if score > best["score"]:
                best.update(score=score, thresholds=thresholds, report=report, step=step,
                            state={k: v.clone() for k, v in model.state_dict().items()})
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        spec = dataclasses.replace(spec, thresholds=tuple(best["thresholds"]))
    else:
        log.warning("no '%s' split: thresholds stay at 0.5 and the last weights are kept",
                    config.val_split)
    model.eval()
    lineage = {"teacher": str(Path(teacher_path).resolve()), "teacher_sha256": teacher_sha,
               "teacher_name": "meerkit-animal2vec", "data": str(Path(data).resolve())}
    save_student(Path(out), model, spec, lineage, extra={
        "distill": {k: list(v) if isinstance(v, tuple) else v
                    for k, v in dataclasses.asdict(config).items()},
        "best_step": best["step"], "val": best["report"]})
    load_source(out)  # fails loudly now rather than at export if anything is off
    return Path(out)


def _targets(dataset, file: str, n_frames: int, frame_rate: float) -> np.ndarray:
    from edge_runtime.events import events_to_frames

    return events_to_frames(dataset.events(file), dataset.labels, n_frames, frame_rate)
