"""Student training: the finetuned teacher teaches a small student, and labels teach it too.

Data (export/distill_data.py): fixed windows (the student's deployment window, 50 % overlap)
of labelled audio (`train`) and unlabelled audio (`pretrain`), kept as raw audio in memory
so every step can augment them (train/augment.py: gain, time shift, noise, background clips
from the unlabelled pool, mixup, SpecAugment masks on the log-mel).

Targets per step:
  * the teacher's probabilities: by default its cached track on the clean file (np.save,
    keyed by teacher sha256 + file + clip parameters), shifted and mixed exactly like the
    audio, so the soft targets follow gain, shift and mixup, and under added noise stay the
    clean answer; with `teacher_on_augmented` the teacher runs on the augmented audio itself
    (its targets then match what the student hears, at several times the CPU cost);
  * the labels, shifted and mixed like the audio, on windows whose every source is labelled.

Loss per window:
    kd_weight * T^2 * BCE(student / T, sigmoid(teacher / T))        windows without labels
  + focal_weight * focal(student, labels), normalised by positives  labelled windows
(`kd_loss="focal"`: the teacher term is focal(student, sigmoid(teacher / T)) too, normalised
by the teacher's positive mass: soft pseudo-labels.)
By default (`kd_on_labelled=False`) the teacher term covers only windows without the label
term; each batch holds `batch_size` labelled windows plus `unlabelled_per_labelled` times as
many unlabelled ones.
The label term is the teacher's own focal loss (RetinaNet normalisation): averaged over every
frame x class it is ~30x smaller than the KD term and the labels stop mattering.
`teacher=None` trains the label-only baseline with the same recipe; several teachers teach as
an ensemble (their probabilities averaged).

After training, the best step on `val` (frame macro AP) is kept and its per-label event
decoder (threshold, hysteresis, minimum duration, merge gap) is tuned on `val` for *event* F1
(export/decoder_search.py); labels it cannot detect are marked so in the card.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime.contract.errors import UserError
from train.augment import AugmentConfig

log = logging.getLogger(__name__)


KD_LOSSES = ("bce", "focal")


@dataclass(frozen=True)
class DistillConfig:
    arch: str = "tcn_small"
    steps: int = 3000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    temperature: float = 2.0
    kd_weight: float = 1.0
    # The teacher term's loss: "bce", Hinton-style T^2 * BCE against sigmoid(teacher / T),
    # averaged over frames; "focal", the label term's own focal loss against the teacher's
    # probabilities sigmoid(teacher / T) (soft pseudo-labels), normalised by their positive
    # mass, so an unlabelled window teaches like a labelled one (self-training). Session 7:
    # with "bce" a teacher 0.09 AP above the label-only student still left its student 0.016
    # below it; the BCE average is dominated by the ~95 % of background frames, where it
    # asks the student to copy the teacher's small probabilities exactly.
    kd_loss: str = "bce"
    # False: the teacher term only where the label term is absent (unlabelled windows, and
    # mixes with an unlabelled partner), so a teacher weaker than the labels cannot pull the
    # student away from them where labels exist (session 5: a tiny teacher at test AP 0.596
    # pulled its student to 0.549, below the 0.670 of labels alone); the teacher then adds
    # what it knows about the unlabelled pool (noisy-student / pseudo-labelling style).
    kd_on_labelled: bool = False
    # Unlabelled windows per labelled one in a batch; None: as the pools compare, at most 1
    # (synth `default`: 1; the demo's small pretrain pool: ~0.2, so its student costs ~1.2x).
    unlabelled_per_labelled: float | None = None
    focal_weight: float = 1.0
    focal_gamma: float = 2.0
    # No alpha: with rare positives, alpha = 0.25 (the teacher's setting) plus soft targets
    # left students with nearly flat logits, whose int8 decisions then flip on tiny noise.
    focal_alpha: float | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Off by default: on CPU the teacher's forward pass per step costs more than the
    # student's whole step. Cached tracks on the clean audio are shifted and mixed exactly like
    # the audio; under added noise they are the clean target (noisy-student style).
    teacher_on_augmented: bool = False
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
    # A student checkpoint to start from (its weights and input normalisation) instead of a
    # random initialisation: a warm start, e.g. a label-only student that the teacher then
    # teaches further. Its architecture, labels and front end must match this run's.
    init: str | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.temperature <= 0:
            raise UserError("distill: steps, batch size, lr and temperature must be > 0")
        if not 0 < self.hop_s <= self.window_s:
            raise UserError(f"distill: need 0 < hop_s ({self.hop_s}) <= window_s ({self.window_s})")
        if self.unlabelled_per_labelled is not None and self.unlabelled_per_labelled < 0:
            raise UserError("distill: unlabelled_per_labelled must be >= 0")
        if self.kd_loss not in KD_LOSSES:
            raise UserError(f"distill: kd_loss {self.kd_loss!r} is not one of "
                            f"{', '.join(KD_LOSSES)}")
        if self.kd_weight < 0 or self.focal_weight < 0 or self.kd_weight + self.focal_weight == 0:
            raise UserError("distill: kd_weight and focal_weight must be >= 0, not both 0")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------- loss
def distillation_loss(student: torch.Tensor, teacher_probs: torch.Tensor, temperature: float,
                      weights: torch.Tensor) -> torch.Tensor:
    """T^2-scaled BCE between the student's softened outputs and the teacher's softened
    probabilities (multi-label KD); logits (B, F, C), teacher_probs = sigmoid(teacher / T)
    (B, F, C), weights (B, F, 1) mark the frames that exist (not the padding after a file's
    end)."""
    t = temperature
    loss = F.binary_cross_entropy_with_logits(student / t, teacher_probs, reduction="none")
    loss = loss * weights
    return loss.sum() / (weights.sum() * loss.shape[-1]).clamp(min=1.0) * t * t


def teacher_loss(student: torch.Tensor, teacher_probs: torch.Tensor, weights: torch.Tensor,
                 config: DistillConfig) -> torch.Tensor:
    """The teacher term (`config.kd_loss`) over the frames `weights` marks."""
    if config.kd_loss == "focal":
        return label_loss(student, teacher_probs, weights, config)
    return distillation_loss(student, teacher_probs, config.temperature, weights)


def teacher_weights(valid: torch.Tensor, labelled: torch.Tensor, config: DistillConfig
                    ) -> torch.Tensor:
    """Frames the teacher term covers: every existing frame, or with `kd_on_labelled=False`
    only those the label term does not (`labelled`: the label term's weights, (B, F, 1))."""
    return valid if config.kd_on_labelled else valid * (1 - labelled)


def batch_sizes(n_labelled: int, n_unlabelled: int, config: DistillConfig, teaching: bool
                ) -> tuple[int, int]:
    """(labelled, unlabelled) windows per batch: `batch_size` labelled ones, as the label-only
    baseline draws them, plus unlabelled ones for the teacher term (`unlabelled_per_labelled`,
    or as the pools compare, at most one each); without labels, the teacher alone."""
    if not teaching or not n_unlabelled:
        return config.batch_size, 0
    if not n_labelled:
        return 0, config.batch_size
    ratio = config.unlabelled_per_labelled
    if ratio is None:
        ratio = min(1.0, n_unlabelled / n_labelled)
    return config.batch_size, max(1, round(ratio * config.batch_size)) if ratio > 0 else 0


def label_loss(student: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
               config: DistillConfig) -> torch.Tensor:
    """The teacher's focal loss, normalised by the positives of the weighted frames."""
    from train.losses import sigmoid_focal_loss

    if weights.sum() == 0:
        return student.sum() * 0.0
    return sigmoid_focal_loss(student, labels, config.focal_gamma, config.focal_alpha,
                              weights=weights, reduction="positives")


# ---------------------------------------------------------------- the run
def _load_teachers(paths: Sequence[Path], data: Path, window_s: float) -> tuple[list[Any], Any]:
    """The teachers as export sources (one, or the members of an ensemble: finetuned
    `model.pt` teachers, or student checkpoints, which teach in their own deployment
    geometry) and the dataset at their sample rate; refuses a pretrained-only model and
    members that disagree on labels or sample rate with each other or with the data."""
    from export.source import load_source
    from train.data.dataset import Dataset

    sources: list[Any] = []
    for path in paths:
        source = load_source(path) if _is_student(path) else load_source(path, window_s)
        first = sources[0] if sources else source
        if source.labels != first.labels or source.card.sample_rate != first.card.sample_rate:
            raise UserError(f"{path}: labels or sample rate differ from {paths[0]}'s; an "
                            "ensemble's teachers must share both")
        sources.append(source)
    dataset = Dataset(data, sample_rate=sources[0].card.sample_rate)
    if dataset.labels != sources[0].labels:
        raise UserError(f"{data}: label set {dataset.labels} differs from the teacher's "
                        f"{sources[0].labels} ({paths[0]})")
    return sources, dataset


def _is_student(path: Path) -> bool:
    from export.student import is_student_record
    from train.engine import load_checkpoint

    return is_student_record(load_checkpoint(path))


def distill(teacher_path: Path | Sequence[Path] | None, data: Path, out: Path,
            config: DistillConfig, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Train a student (from the teacher and labels, or from labels alone when
    `teacher_path` is None); writes `out` (student checkpoint) and returns it. Several
    teacher paths distil their ensemble: the members' probabilities are averaged frame by
    frame (each at its own frame rate, resampled to the student's)."""
    from tqdm import tqdm

    from export.backends import geometry_for, sigmoid, torch_student_window_fn, track_files
    from export.decoder_search import tune_decoder
    from export.distill_data import build_windows, teacher_tracks
    from export.source import load_source
    from export.student import LogMel, Student, StudentSpec, arch, default_frontend, save_student
    from train.augment import augment_batch, mask_features
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files
    from train.engine import cosine_with_warmup, seed_everything
    from train.evaluate import score_files

    seed_everything(config.seed)
    student_config = arch(config.arch)
    teacher_paths = ([] if teacher_path is None else [Path(teacher_path)]
                     if isinstance(teacher_path, str | Path) else [Path(p) for p in teacher_path])
    teachers: list[Any] = []
    if teacher_paths:
        teachers, dataset = _load_teachers(teacher_paths, data, config.teacher_window_s)
        labels, sr = list(dataset.labels), dataset.sample_rate
    else:
        dataset = Dataset(data)
        labels, sr = list(dataset.labels), dataset.sample_rate
        if not labels:
            raise UserError(f"{data}: no labels to train a student on")
    labelled = [f for s in config.labelled_splits for f in select_files(dataset, s)]
    unlabelled = [] if not teachers else [
        f for s in config.unlabelled_splits if s in set(dataset.splits.values())
        for f in select_files(dataset, s)]
    if not labelled and not unlabelled:
        raise UserError(f"{data}: no files in {config.labelled_splits + config.unlabelled_splits}")
    val_files = (dataset.files_in(config.val_split)
                 if config.val_split in set(dataset.splits.values()) else [])

    base = default_frontend(sr)
    hop_length = config.hop_length or base.hop_length
    frontend = dataclasses.replace(base, n_mels=config.n_mels, hop_length=hop_length)
    frame_rate = sr / hop_length
    if any(abs(round(s * frame_rate) - s * frame_rate) > 1e-6
           for s in (config.window_s, config.hop_s)):
        raise UserError(f"distill: window ({config.window_s:g} s) and hop ({config.hop_s:g} s) "
                        f"must be whole student frames ({hop_length} samples)")
    # checked now, before the teacher's tracks and the windows take minutes
    start = _warm_start(Path(config.init), config, frontend, labels, sr) if config.init else None
    shas = [t.card.sha256 for t in teachers]
    teacher_fns: list[torch.nn.Module] = []
    cached: list[tuple[dict[str, np.ndarray], float]] = []
    if config.teacher_on_augmented:
        teacher_fns = [t.audio_model.eval() for t in teachers]
    else:
        cache_dir = cache_dir or Path(out).parent / "teacher_cache"
        cached = [(teacher_tracks(t, dataset, labelled + unlabelled, cache_dir, progress),
                   t.card.frame_rate_hz) for t in teachers]
    windows = build_windows(dataset, labelled, unlabelled, cached, config.window_s, frame_rate,
                            progress)
    background = windows.audio[~windows.labelled] if bool((~windows.labelled).any()) else None

    # Input normalisation: one scalar mean/std over training features (frames that exist).
    logmel = LogMel(frontend, sr)
    with torch.no_grad():
        sample = windows.audio[torch.randperm(len(windows.audio),
                                              generator=torch.Generator().manual_seed(0))[:512]]
        feats = torch.cat([logmel(chunk) for chunk in sample.split(64)])
    mean, std = float(feats.mean()), float(feats.std()) or 1.0
    frontend = dataclasses.replace(frontend, mean=round(mean, 6), std=round(std, 6))
    logmel = LogMel(frontend, sr)

    model = Student(student_config, frontend.n_mels, len(labels))
    if start is not None:  # its weights were trained on inputs scaled by its normalisation
        model.load_state_dict(start["state"])
        frontend = dataclasses.replace(frontend, mean=start["mean"], std=start["std"])
        logmel = LogMel(frontend, sr)
    log.info("training %s student (%d parameters) on %d windows (%d labelled) for %d steps, "
             "%s", config.arch, model.num_parameters(), len(windows.audio),
             int(windows.labelled.sum()), config.steps,
             "labels only" if not teachers else f"{len(teachers)} teacher(s) + labels")
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(
        s, min(config.warmup_steps, max(1, config.steps // 10)), config.steps))
    generator = torch.Generator().manual_seed(config.seed)
    spec = StudentSpec(config.arch, student_config, frontend, sr, config.window_s, config.hop_s,
                       tuple(labels), tuple([0.5] * len(labels)))
    kd_weight = config.kd_weight if teachers else 0.0

    def val_probs() -> dict[str, np.ndarray]:
        model.eval()
        geo = geometry_for(sr, config.window_s, config.hop_s, frame_rate)
        logits = track_files(torch_student_window_fn(model, spec), geo, dataset, val_files)
        model.train()
        return {f: sigmoid(v) for f, v in logits.items()}

    eval_every = config.eval_every or max(1, config.steps // 5)
    best: dict[str, Any] = {"score": -math.inf, "state": None, "probs": None, "step": 0}
    model.train()
    t = config.temperature
    bar = tqdm(range(1, config.steps + 1), desc=f"student {config.arch}", disable=not progress)
    n_frames = windows.labels.shape[1]

    def augmented(idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(features, labels, frames that exist, label-term weights, teacher targets or None)
        of the windows `idx`, augmented; mixup partners come from the same draw."""
        batch = augment_batch(windows.audio[idx], windows.labels[idx], config.augment,
                              generator, background=background, hop_length=hop_length)
        valid = batch.shift(windows.valid[idx].float())[..., None]  # (B, F, 1)
        own = windows.labelled[idx]
        labelled_mix = own & own[batch.mix_perm]  # a partner without labels hides its calls
        hard = valid * labelled_mix[:, None, None].float()
        features = mask_features(logmel(batch.audio), config.augment, generator)
        soft = None
        if kd_weight > 0:
            with torch.no_grad():
                if teacher_fns:  # an ensemble's probabilities are averaged
                    soft = torch.stack([torch.sigmoid(_to_frames(fn(batch.audio).float(),
                                                                 n_frames) / t)
                                        for fn in teacher_fns]).mean(0)
                else:
                    soft = batch.soft(torch.sigmoid(windows.teacher[idx] / t))
        return features, batch.labels, valid, hard, soft

    # Stratified batches: `batch_size` labelled windows, exactly as the label-only baseline
    # draws them, plus unlabelled ones for the teacher term. Drawn from one pool, ~60 % of a
    # batch was unlabelled, so a distilled student saw its labels ~2.6x less often than the
    # baseline it is compared with, at the same step count.
    pools = [torch.nonzero(windows.labelled).squeeze(1), torch.nonzero(~windows.labelled).squeeze(1)]
    sizes = batch_sizes(len(pools[0]), len(pools[1]), config, teaching=kd_weight > 0)
    for step in bar:
        parts = [augmented(pool[torch.randint(len(pool), (size,), generator=generator)])
                 for pool, size in zip(pools, sizes, strict=True) if size]
        features, labels_, valid, hard = (torch.cat([p[k] for p in parts]) for k in range(4))
        logits = model(features)
        kd = logits.new_zeros(())  # no teacher term (a label-only baseline)
        if kd_weight > 0:
            soft = torch.cat([p[4] for p in parts])
            kd = teacher_loss(logits, soft, teacher_weights(valid, hard, config), config)
        focal = label_loss(logits, labels_, hard, config)
        loss = kd_weight * kd + config.focal_weight * focal
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(kd=f"{kd.item():.4f}", focal=f"{focal.item():.4f}")
        if val_files and (step % eval_every == 0 or step == config.steps):
            probs = val_probs()
            targets = {f: _targets(dataset, f, len(p), frame_rate) for f, p in probs.items()}
            from edge_runtime.contract.metrics import frame_average_precision

            macro = frame_average_precision(np.concatenate(list(targets.values())),
                                            np.concatenate(list(probs.values())))["macro"]
            score = -math.inf if math.isnan(macro) else macro
            log.info("step %d: val frame macro AP %.3f", step, macro)
            if score > best["score"]:
                best.update(score=score, probs=probs, step=step,
                            state={k: v.clone() for k, v in model.state_dict().items()})
    report, tuned = None, None
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        probs = best["probs"]
        tuned = tune_decoder(probs, {f: dataset.events(f) for f in probs}, labels, frame_rate)
        targets = {f: _targets(dataset, f, len(p), frame_rate) for f, p in probs.items()}
        report = score_files(dataset, probs, targets, frame_rate, tuned.decoder_config())
        spec = dataclasses.replace(spec, thresholds=tuned.thresholds, decoder=tuned.decoders,
                                   undetectable_labels=tuned.undetectable)
        for u in tuned.undetectable:
            log.warning("label '%s' cannot be detected on %s (%s); the runtime will not emit "
                        "it unless asked", u.label, config.val_split, u.reason)
    else:
        log.warning("no '%s' split: thresholds stay at 0.5 and the last weights are kept",
                    config.val_split)
    model.eval()
    lineage: dict[str, Any] = {"teacher": None, "teacher_sha256": None,
                               "teacher_name": "none (labels only)"}
    if teachers:  # the first member stands for an ensemble where one teacher is expected
        lineage = {"teacher": str(teacher_paths[0].resolve()), "teacher_sha256": shas[0],
                   "teacher_name": teachers[0].card.name if len(teachers) == 1 else
                   f"ensemble of {len(teachers)}: "
                   + " + ".join(t.card.name for t in teachers)}
        if len(teachers) > 1:
            lineage["teachers"] = [{"path": str(p.resolve()), "sha256": sha}
                                   for p, sha in zip(teacher_paths, shas, strict=True)]
    lineage["data"] = str(Path(data).resolve())
    save_student(Path(out), model, spec, lineage, extra={
        "distill": config.to_dict(), "best_step": best["step"], "val": report,
        "decoder_search": tuned.to_dict() if tuned is not None else None})
    load_source(out)  # fails loudly now rather than at export if anything is off
    return Path(out)


def _warm_start(path: Path, config: DistillConfig, frontend: Any, labels: Sequence[str],
                sample_rate: int) -> dict[str, Any]:
    """The weights ("state") and input normalisation ("mean", "std") of the student to start
    from; refuses a checkpoint that is no student or differs in architecture, labels,
    sample rate or front end (normalisation aside: this run's is not known yet)."""
    from export.student import load_student

    if not path.is_file():
        raise UserError(f"{path}: --init checkpoint not found")
    _, spec, record = load_student(path)
    theirs = dataclasses.replace(spec.frontend, mean=frontend.mean, std=frontend.std)
    problems = [what for what, same in (
        (f"architecture {spec.arch!r} (this run: {config.arch!r})", spec.arch == config.arch),
        (f"labels {list(spec.labels)} (data: {list(labels)})", list(spec.labels) == list(labels)),
        (f"sample rate {spec.sample_rate} Hz (data: {sample_rate} Hz)",
         spec.sample_rate == sample_rate),
        (f"front end {spec.frontend} (this run: {frontend})", theirs == frontend),
    ) if not same]
    if problems:
        raise UserError(f"{path}: cannot start from this student: its " + "; its ".join(problems))
    log.info("starting from %s (best step %s of its run)", path, record["extra"].get("best_step"))
    return {"state": record["state"], "mean": spec.frontend.mean, "std": spec.frontend.std}


def _to_frames(track: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, F_teacher, C) -> (B, frames, C) over the same window, frame k centred at
    (k + 0.5) / rate on both sides (linear, as distill_data.resample_frames)."""
    if track.shape[1] == frames:
        return track
    return F.interpolate(track.transpose(1, 2), size=frames, mode="linear",
                         align_corners=False).transpose(1, 2)


def _targets(dataset, file: str, n_frames: int, frame_rate: float) -> np.ndarray:
    from edge_runtime.contract.events import events_to_frames

    return events_to_frames(dataset.events(file), dataset.labels, n_frames, frame_rate)
