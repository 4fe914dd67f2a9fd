"""data2vec pretraining of the animal2vec teacher on unlabelled audio.

Per step: the front end runs once per clip; its features are repeated `clone_batch` times and
~59% of each copy's frames are masked in 5-frame spans; the EMA teacher (a trailing copy of
the context network, positional conv copied) reads the *unmasked* features; the student
regresses the instance-normalised average of the teacher's top-k FFN outputs at the masked
frames; then the teacher takes an EMA step towards the student. data2vec's health signals
go to the engine's logs (TensorBoard): target_var / pred_var (with its stop-the-run guards),
variance_explained, teacher_distance, feature_std, and the masking regime. Read top to bottom.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.contract.errors import UserError
from train.checkpoint import save_model
from train.config import ModelConfig, PretrainConfig
from train.data.dataset import Dataset
from train.data.torch_data import ClipDataset, collate, select_files
from train.ema import COPY_PREFIXES, EMATeacher, ema_decay_schedule, summed_update_weight
from train.engine import (
    Engine,
    GeneratorState,
    ResumableBatches,
    RunOptions,
    Runtime,
    adamw_groups,
    seed_everything,
)
from train.losses import data2vec_targets, masked_regression_loss, regression_stats
from train.masking import compute_span_mask, masking_regime_stats
from train.model.animal2vec import Animal2Vec

log = logging.getLogger(__name__)

# The sinc filterbank, its BatchNorm and the conv encoder (up to the projection's LayerNorm).
FRONTEND_PREFIXES = ("frontend.", "frontend_norm.", "encoder.convs.")


class Data2VecStudent(nn.Module):
    """The student side of one step, as one module so DDP sees every parameter it uses.

    The front end runs once per clip; its features are repeated `clone_batch` times, each
    copy under its own mask (data2vec 2.0's clone batches: more masked predictions per
    second of audio for the price of one front-end pass). Returns the prediction (batch *
    clone_batch, frames, dim), the context output, and the unrepeated features (batch,
    frames, dim) the teacher reads.
    """

    def __init__(self, model: Animal2Vec, clone_batch: int = 1, frozen_norm: bool = False):
        super().__init__()
        self.model, self.clone_batch, self.frozen_norm = model, clone_batch, frozen_norm

    def train(self, mode: bool = True) -> Data2VecStudent:
        super().train(mode)
        if self.frozen_norm:  # fitted statistics stay fixed (see `fit_frontend_norm`)
            self.model.frontend_norm.eval()
        return self

    def forward(self, audio: torch.Tensor, mask: torch.Tensor):
        features = self.model.features(audio)  # (batch, frames, dim)
        out = self.model.forward_features(features.repeat(self.clone_batch, 1, 1), mask)
        return self.model.regression_head(out.final), out, features


class CollapseError(UserError):
    """data2vec's variance guard tripped: targets or predictions stopped varying over time."""

    exit_code = 3


def check_variance(step: int, stats: dict[str, float], config: PretrainConfig) -> None:
    """Stop the run (data2vec does the same) once past the warm-up, with the step and value."""
    if step < config.variance_warmup():
        return
    for key, floor, what in (("target_var", config.min_target_var, "teacher targets"),
                             ("pred_var", config.min_pred_var, "student predictions")):
        if stats[key] < floor:
            raise CollapseError(
                f"pretraining collapsed at step {step + 1}: {key} {stats[key]:.4g} < "
                f"min_{key} {floor:g} (the {what} no longer vary over time). Try a lower lr "
                f"or a longer warm-up, or --set min_{key}=0 to run on regardless")


def feature_std_over_time(features: torch.Tensor) -> float:
    """Std over frames of each clip and dim of the front-end output, averaged: the issue's
    collapse measure (0.39 at init fell to 0.06-0.13 within 25-75 steps without protection)."""
    f = features.detach().float()
    return f.std(1).mean().item() if f.shape[1] > 1 else 0.0


@torch.no_grad()
def fit_frontend_norm(model: Animal2Vec, clips: torch.utils.data.Dataset, n_clips: int = 64,
                      batch_size: int = 16, seed: int = 0) -> None:
    """Set the front-end BatchNorm's running statistics to those of `n_clips` clips (a
    seeded choice; global RNG untouched, so runs stay reproducible)."""
    norm, device = model.frontend_norm, model.mask_embedding.device
    order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(seed))
    order = order[:n_clips].tolist()
    was_training, momentum = norm.training, norm.momentum
    norm.reset_running_stats()
    norm.momentum = None  # cumulative average over the fitting batches
    norm.train()
    for start in range(0, len(order), batch_size):
        audio = collate([clips[i] for i in order[start:start + batch_size]])["audio"]
        x = F.pad(audio.to(device), model.config.frame_padding)
        norm(model.envelopes(x))
    norm.momentum = momentum
    norm.train(was_training)


def load_clips(data: Path, splits: tuple[str, ...], clip_s: float, sample_rate: int,
               frame_rate_hz: float, labelled: bool, heads=(), hop_s: float | None = None
               ) -> tuple[Dataset, ClipDataset, list[str]]:
    dataset = Dataset(data, sample_rate=sample_rate)
    files = [f for split in splits for f in select_files(dataset, split)]
    return dataset, ClipDataset(dataset, files, clip_s, frame_rate_hz, heads, hop_s,
                                labelled=labelled), files


def pretrain(options: RunOptions, model_config: ModelConfig, config: PretrainConfig,
             runtime: Runtime) -> Path:
    """Run (or resume) data2vec pretraining; returns the path of the pretrained model."""
    seed_everything(options.seed)
    _, clips, files = load_clips(options.data, options.splits, options.clip_s,
                                 model_config.sample_rate, model_config.frame_rate_hz,
                                 labelled=False)
    log.info("pretraining on %d clips from %d files (%s)", len(clips), len(files),
             ", ".join(options.splits))
    anneal = config.ema_anneal()
    moves = summed_update_weight(config.steps, config.ema_decay, config.ema_end_decay, anneal,
                                 config.ema_schedule)
    if moves < 1.0:
        log.warning("the EMA teacher moves through only %.2f time constants in %d steps "
                    "(sum of 1 - decay): it will stay close to its initial weights. For short "
                    "runs lower ema_decay / ema_end_decay (e.g. --set ema_decay=0.99 --set "
                    "ema_end_decay=0.995)", moves, config.steps)

    model = Animal2Vec(model_config)
    model.feature_grad_mult = config.feature_grad_mult
    # The student starts predicting 0 (the targets' mean). With the usual random head its
    # first, uninformed predictions vary at random; the fastest way to cut that error is
    # to make the features stop varying over time, and the front end did: std 0.40 -> 0.14
    # within 10 steps, with a teacher reading the student's features or a frozen copy of
    # them alike, feature_grad_mult 0.1 or 1. With a zero head, the first gradients only
    # grow the head towards whatever in the features predicts the targets: std 0.40 -> 0.50
    # over 25 steps, variance explained rising (tiny preset, lr 1e-3, synth small).
    nn.init.zeros_(model.regression_head.weight)
    frozen_norm = config.frontend_norm == "frozen"
    if frozen_norm:
        model.frontend_norm.requires_grad_(False)
    teacher = EMATeacher(model.context, copy_prefixes=COPY_PREFIXES)
    masks = GeneratorState(options.seed + 1)
    batches = ResumableBatches(clips, config.batch_size, options.seed, collate,
                               runtime.rank, runtime.world_size)
    engine = Engine(Data2VecStudent(model, config.clone_batch, frozen_norm), config, runtime,
                    options, extra_state={"teacher": teacher, "batches": batches,
                                          "masks": masks},
                    param_groups=pretrain_param_groups(model, config))
    teacher.to(runtime.device)
    run_config = {"stage": "pretrain", "spec": model.spec(), "pretrain": config.to_dict(),
                  "seed": options.seed, "splits": list(options.splits)}
    if not engine.resume() and frozen_norm:
        fit_frontend_norm(model, clips, seed=options.seed)
    top_k = config.top_k(model_config.depth)
    reach = model_config.pos_conv_kernel // 2

    def step_fn(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        audio = batch["audio"].to(runtime.device, non_blocking=True)  # (batch, samples)
        n, clones = audio.shape[0], config.clone_batch
        mask = compute_span_mask(n * clones, model.n_frames(audio.shape[1]), config.mask_prob,
                                 config.mask_length, config.min_masks, masks.generator,
                                 device=runtime.device)  # (batch * clones, frames)
        pred, _, features = engine.wrapped(audio, mask)
        with torch.no_grad():  # the teacher reads each clip's unmasked features once
            target = data2vec_targets(teacher(features.detach()).ffn, top_k,
                                      config.instance_norm_targets, config.final_target_norm)
            target = target.repeat(clones, 1, 1)  # (batch * clones, frames, dim)
        loss = masked_regression_loss(pred, target, mask, config.loss, config.loss_beta)
        stats = regression_stats(pred, target, mask)
        if runtime.distributed:  # every rank must take the same decision in check_variance
            values = torch.tensor([stats["target_var"], stats["pred_var"]], device=runtime.device)
            torch.distributed.all_reduce(values)
            stats["target_var"], stats["pred_var"] = (values / runtime.world_size).tolist()
        check_variance(step, stats, config)
        regime = masking_regime_stats(mask, reach)
        return loss, {"loss": loss.item(), **stats,
                      "feature_std": feature_std_over_time(features),
                      "mask_coverage": regime["coverage"],
                      "mask_unreachable": regime["unreachable_fraction"],
                      "mask_visible_per_clip": regime["visible_per_clip"]}

    def after_step(step: int) -> dict[str, float]:
        decay = ema_decay_schedule(step, config.ema_decay, config.ema_end_decay, anneal,
                                   config.ema_schedule)
        teacher.update(model.context, decay)
        return {"ema_decay": decay, "teacher_distance": teacher.distance(model.context)}

    logs = engine.run(batches, step_fn, run_config, after_step)
    engine.save(run_config)
    path = options.out / "model.pt"
    if engine.step >= config.steps and runtime.is_main:
        save_model(path, model, labels=[], stage="pretrain", extra={"final_logs": logs,
                   "pretrain": config.to_dict(), "steps": engine.step})
        log.info("pretrained model written to %s (loss %.4f)", path, logs.get("loss", float("nan")))
    return path


def pretrain_param_groups(model: Animal2Vec, config: PretrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the sinc + conv front end at lr * frontend_lr_mult (see PretrainConfig),
    no weight decay on 1-d parameters (the engine's rule)."""

    def front_or_not(name: str) -> tuple[bool, float]:
        front = name.startswith(FRONTEND_PREFIXES)
        return front, config.frontend_lr_mult if front else 1.0

    return adamw_groups(model, config.lr, config.weight_decay, front_or_not)
