"""data2vec pretraining of the animal2vec teacher on unlabelled audio.

Per step: mask ~96% of the student's frames in short spans; the EMA teacher (a trailing copy
of the context network) reads the *unmasked* conv features; the student regresses the
instance-normalised average of the teacher's top-k layer outputs at the masked frames; then
the teacher takes an EMA step towards the student. Read top to bottom.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.checkpoint import save_model
from train.config import ModelConfig, PretrainConfig
from train.data.dataset import Dataset
from train.data.torch_data import ClipDataset, collate, select_files
from train.ema import EMATeacher, ema_decay_schedule
from train.engine import (
    Engine,
    LoopSettings,
    ResumableBatches,
    Runtime,
    load_checkpoint,
    seed_everything,
)
from train.losses import data2vec_loss, frame_std
from train.masking import compute_span_mask, mask_statistics
from train.model.animal2vec import Animal2Vec

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """Where and how a training run happens (shared by pretraining and finetuning)."""

    data: Path
    out: Path
    splits: tuple[str, ...]
    clip_s: float = 10.0
    seed: int = 0
    resume: bool = False
    stop_at: int | None = None  # stop (and checkpoint) after this many steps; resume later
    log_every: int = 10
    checkpoint_every: int = 500
    progress: bool = True


class GeneratorState:
    """A torch.Generator as a resumable object (masks are drawn from it)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["state"])


class Data2VecStudent(nn.Module):
    """The student side of one step, as one module so DDP sees every parameter it uses."""

    def __init__(self, model: Animal2Vec):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, mask: torch.Tensor):
        out = self.model(audio, mask=mask)
        return self.model.regression_head(out.final), out  # (batch, frames, dim)


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

    model = Animal2Vec(model_config)
    teacher = EMATeacher(model.context)
    masks = GeneratorState(options.seed + 1)
    batches = ResumableBatches(clips, config.batch_size, options.seed, collate,
                               runtime.rank, runtime.world_size)
    settings = LoopSettings(config.steps, config.lr, config.warmup_steps, config.weight_decay,
                            config.grad_clip, config.grad_accum, config.amp,
                            options.log_every, options.checkpoint_every)
    engine = Engine(Data2VecStudent(model), settings, runtime, options.out,
                    extra_state={"teacher": teacher, "batches": batches, "masks": masks})
    teacher.to(runtime.device)
    run_config = {"stage": "pretrain", "spec": model.spec(), "pretrain": config.to_dict(),
                  "seed": options.seed, "splits": list(options.splits)}
    if options.resume and (options.out / "last.pt").is_file():
        engine.load_state_dict(load_checkpoint(options.out / "last.pt"))
        log.info("resumed from %s at step %d", options.out / "last.pt", engine.step)
    top_k = config.top_k(model_config.depth)

    def step_fn(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        audio = batch["audio"].to(runtime.device, non_blocking=True)  # (batch, samples)
        audio = audio.repeat(config.clone_batch, 1)  # clone batch: several masks per clip
        frames = model.n_frames(audio.shape[1])
        mask = compute_span_mask(audio.shape[0], frames, config.mask_prob, config.mask_length,
                                 config.min_masks, masks.generator, device=runtime.device)
        pred, out = engine.wrapped(audio, mask)
        n = audio.shape[0] // config.clone_batch
        with torch.no_grad():  # the clones share features: run the teacher once per clip
            target_layers = teacher(out.features[:n].detach()).ffn
            target_layers = [t.repeat(config.clone_batch, 1, 1) for t in target_layers]
        loss = data2vec_loss(pred, target_layers, mask, top_k, config.loss, config.loss_beta,
                             config.instance_norm_targets, config.final_target_norm)
        stats = mask_statistics(mask)
        return loss, {"loss": loss.item(), "mask_coverage": stats["coverage"],
                      "mask_span_mode": stats["span_length_mode"],
                      "student_std": frame_std(pred), "teacher_std": frame_std(target_layers[-1])}

    def after_step(step: int) -> dict[str, float]:
        decay = ema_decay_schedule(step, config.ema_decay, config.ema_end_decay,
                                   config.ema_anneal_steps, config.ema_schedule)
        teacher.update(model.context, decay)
        return {"ema_decay": decay}

    logs = engine.run(batches, step_fn, run_config, after_step, until=options.stop_at,
                      progress=options.progress)
    engine.save(run_config)
    path = options.out / "model.pt"
    if engine.step >= config.steps and runtime.is_main:
        save_model(path, model, labels=[], stage="pretrain", extra={"final_logs": logs,
                   "pretrain": config.to_dict(), "steps": engine.step})
        log.info("pretrained model written to %s (loss %.4f)", path, logs.get("loss", float("nan")))
    return path
