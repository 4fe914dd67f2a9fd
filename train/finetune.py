"""Finetuning the teacher for frame-level multi-label event detection.

Per step: augment the waveforms (gain, shift, noise, background; `augment`); optionally mix
two clips (labels = union of both clips' events); mask frames as regularisation; focal loss
on frame logits; plus the MetaPerch metadata heads on the pooled embedding (standard heads
teach where/when, adversarial ones unlearn e.g. the recorder). For the first
`freeze_encoder_steps` of a run from a pretrained model only the heads learn; the sinc + conv front end stays frozen only with `train_feature_encoder=false` (animal2vec's
choice; at CPU scale it stops learning). `metadata_missing_frac` hides that share of the
files' metadata from the heads. The best model on `val` (frame macro AP) is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_runtime.contract.errors import UserError
from train.augment import AugmentConfig, augment_batch
from train.checkpoint import load_model, save_model
from train.config import FinetuneConfig, ModelConfig
from train.data.dataset import Dataset
from train.data.torch_data import ClipDataset, collate, fit_metadata_heads, select_files
from train.engine import (
    Engine,
    GeneratorState,
    ResumableBatches,
    RunOptions,
    Runtime,
    seed_everything,
)
from train.evaluate import evaluate_model
from train.losses import sigmoid_focal_loss
from train.masking import compute_span_mask
from train.model.animal2vec import Animal2Vec, layerwise_param_groups

log = logging.getLogger(__name__)

# Missing keys allowed when starting from a pretrained model: the new heads.
NEW_HEAD_PREFIXES = ("classifier.", "metadata.")


def build_model(model_config: ModelConfig, labels: list[str], heads, init: Path | None
                ) -> Animal2Vec:
    """A classifier for `labels`, from scratch or from a pretrained (or finetuned) model."""
    if init is None:
        return Animal2Vec(model_config, n_classes=len(labels), metadata_heads=heads)
    pretrained, record = load_model(init)
    model = Animal2Vec(pretrained.config, n_classes=len(labels), metadata_heads=heads)
    state = {k: v for k, v in pretrained.state_dict().items()
             if not k.startswith(NEW_HEAD_PREFIXES)}
    if record.get("labels") == labels:  # continuing a finetuned model: keep its classifier
        state.update({k: v for k, v in pretrained.state_dict().items() if k.startswith("classifier.")})
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(NEW_HEAD_PREFIXES)] + list(unexpected)
    if bad:
        raise UserError(f"{init}: weights do not fit the model ({bad[:4]} ...)")
    log.info("initialised from %s (%s stage, %d new head tensors)", init, record["stage"],
             len(missing))
    return model


def mixup(batch: dict[str, Any], prob: float, generator: torch.Generator) -> dict[str, Any]:
    """Mix each clip with another one of the batch; the labels become the union of both.

    Metadata of a mixed clip is ambiguous (two places, two times), so its metadata targets
    are marked missing.
    """
    if prob <= 0 or float(torch.rand((), generator=generator)) >= prob:
        return batch
    n = batch["audio"].shape[0]
    perm = torch.randperm(n, generator=generator)
    lam = 0.5 + 0.5 * torch.rand(n, 1, generator=generator)  # the first clip dominates
    mixed = dict(batch)
    mixed["audio"] = lam * batch["audio"] + (1 - lam) * batch["audio"][perm]
    mixed["targets"] = torch.maximum(batch["targets"], batch["targets"][perm])
    mixed["valid"] = {k: v & (perm == torch.arange(n)) for k, v in batch["valid"].items()}
    return mixed


# The students' waveform augmentations; mixup is the teacher's own (`mixup`, which also
# hides a mixed clip's metadata) and there is no log-mel to SpecAugment.
TEACHER_AUGMENT = AugmentConfig(mixup_p=0.0, spec_p=0.0)
BACKGROUND_CLIPS = 256  # at most this many unlabelled clips stay in memory for mixing
BACKGROUND_FILES = 64  # ... drawn from at most this many files


def background_pool(dataset: Dataset, clip_s: float, frame_rate_hz: float, seed: int
                    ) -> torch.Tensor | None:
    """Up to BACKGROUND_CLIPS clips (clips, samples) of the unlabelled `pretrain` split, a
    seeded choice; None when the dataset has no such split."""
    if "pretrain" not in set(dataset.splits.values()):
        return None
    files = dataset.files_in("pretrain")
    generator = torch.Generator().manual_seed(seed)
    # Decode only a seeded sample of files: a large pool need not pass through memory.
    pick = torch.randperm(len(files), generator=generator)[:BACKGROUND_FILES].tolist()
    clips = ClipDataset(dataset, [files[i] for i in sorted(pick)], clip_s, frame_rate_hz,
                        labelled=False)
    order = torch.randperm(len(clips), generator=generator)
    return torch.stack([torch.from_numpy(clips.clips[i].audio)
                        for i in order[:BACKGROUND_CLIPS].tolist()])


class FinetuneObjective(nn.Module):
    """Focal loss + metadata losses for one batch, as one module so DDP sees every parameter."""

    def __init__(self, model: Animal2Vec, config: FinetuneConfig):
        super().__init__()
        self.model, self.config = model, config

    def forward(self, audio: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None,
                meta: dict[str, torch.Tensor], valid: dict[str, torch.Tensor], step: int,
                encoder_frozen: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m, c = self.model, self.config
        if encoder_frozen:  # warm-up: the context network is a fixed feature extractor
            with torch.no_grad():
                out = m(audio, mask=mask)
            embedding, pooled = out.embedding.detach(), out.pooled.detach()
        else:
            out = m(audio, mask=mask)
            embedding, pooled = out.embedding, out.pooled
        logits = m.classifier(embedding)  # (batch, frames, classes)
        focal = sigmoid_focal_loss(logits, targets, c.focal_gamma, c.focal_alpha,
                                   reduction="positives")
        losses = {"focal": focal}
        total = focal
        if m.metadata is not None:
            meta_total, meta_losses = m.metadata(pooled, meta, valid, step)
            total = total + meta_total
            losses.update({f"meta_{k}": v for k, v in meta_losses.items()})
        return total, losses


def tune_saved_decoder(path: Path, dataset: Dataset, val_files: list[str], clip_s: float,
                       batch_size: int, device: torch.device) -> None:
    """Choose the best model's per-label event decoder on `val` (for event F1, as students
    do) and store it with the model, so the teacher's event metrics are decoded as fairly
    as the students' and its card says which labels it cannot detect."""
    from export.decoder_search import tune_decoder
    from train.evaluate import predict_files

    model, record = load_model(path, device)
    probs, _ = predict_files(lambda a: model(a).frame_logits, dataset, val_files, clip_s,
                             model.config.frame_rate_hz, batch_size, device)
    tuned = tune_decoder(probs, {f: dataset.events(f) for f in probs}, record["labels"],
                         model.config.frame_rate_hz)
    extra = {**record.get("extra", {}), "thresholds": list(tuned.thresholds),
             "decoder_search": tuned.to_dict()}
    save_model(path, model, record["labels"], record["stage"], extra=extra)
    for u in tuned.undetectable:
        log.warning("teacher: label '%s' cannot be detected on val (%s)", u.label, u.reason)


def finetune(options: RunOptions, model_config: ModelConfig, config: FinetuneConfig,
             runtime: Runtime, init: Path | None = None, val_split: str | None = "val",
             eval_every: int = 0, batch_size_eval: int = 16) -> Path:
    """Run (or resume) finetuning; returns the path of the best model (`model.pt`)."""
    seed_everything(options.seed)
    sample_rate = model_config.sample_rate
    if init is not None:  # the architecture comes from the pretrained model
        model_config = load_model(init)[0].config
    dataset = Dataset(options.data, sample_rate=model_config.sample_rate or sample_rate)
    files = [f for split in options.splits for f in select_files(dataset, split)]
    heads = fit_metadata_heads(config.metadata_heads, dataset, files)
    fr = model_config.frame_rate_hz
    clips = ClipDataset(dataset, files, options.clip_s, fr, heads,
                        metadata_missing_frac=config.metadata_missing_frac,
                        metadata_missing_seed=options.seed)
    labels = dataset.labels
    if not labels:
        raise UserError(f"{options.data}: no labels to finetune on (annotations.csv is empty "
                        "and there is no labels.txt)")
    val_files = dataset.files_in(val_split) if val_split else []
    log.info("finetuning on %d clips (%d files), %d labels; validating on %d files",
             len(clips), len(files), len(labels), len(val_files))

    model = build_model(model_config, labels, heads, init)
    # A pretrained front end is frozen for good (unless asked) before the optimizer sees the
    # parameters; a model trained from scratch must of course learn its front end.
    model.set_trainable(features=config.train_feature_encoder or init is None, context=True)
    groups = layerwise_param_groups(model, config.lr, config.weight_decay, config.layer_lr_decay)
    gen = GeneratorState(options.seed + 2)
    batches = ResumableBatches(clips, config.batch_size, options.seed, collate, runtime.rank,
                               runtime.world_size)
    background = background_pool(dataset, options.clip_s, fr, options.seed) if config.augment else None
    best = {"macro_ap": -math.inf}

    class Best:  # resumable record of the best validation score
        def state_dict(self) -> dict[str, float]:
            return dict(best)

        def load_state_dict(self, state: dict[str, float]) -> None:
            best.update(state)

    engine = Engine(FinetuneObjective(model, config), config, runtime, options,
                    extra_state={"batches": batches, "rng": gen, "best": Best()},
                    param_groups=groups)
    run_config = {"stage": "finetune", "spec": model.spec(), "labels": labels,
                  "finetune": config.to_dict(), "seed": options.seed,
                  "splits": list(options.splits), "init": str(init) if init else None}
    engine.resume()
    path = options.out / "model.pt"

    def step_fn(batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if config.augment:
            moved = augment_batch(batch["audio"], batch["targets"], TEACHER_AUGMENT,
                                  gen.generator,
                                  background=background, hop_length=model.config.total_stride)
            batch = {**batch, "audio": moved.audio, "targets": moved.labels}
        batch = mixup(batch, config.mixup_prob, gen.generator)
        dev = runtime.device
        audio = batch["audio"].to(dev, non_blocking=True)
        targets = batch["targets"].to(dev, non_blocking=True)
        mask = None
        if config.mask_prob > 0:
            mask = compute_span_mask(audio.shape[0], model.n_frames(audio.shape[1]),
                                     config.mask_prob, config.mask_length, 1, gen.generator,
                                     device=dev)
        loss, parts = engine.wrapped(audio, targets, mask, batch["meta"], batch["valid"], step,
                                     init is not None and step < config.freeze_encoder_steps)
        return loss, {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}}

    def validate(step: int) -> dict[str, float]:
        model.eval()
        report, _, _ = evaluate_model(lambda a: model(a).frame_logits, dataset, val_files,
                                      options.clip_s, fr, batch_size_eval, runtime.device)
        score = report["frame_ap"]["macro"]
        if runtime.is_main and score > best["macro_ap"]:
            best.update(macro_ap=score, step=step)
            _save(step, report)
        return {"macro_ap": score, "event_f1": report["event"]["micro"]["f1"]}

    def _save(step: int, report: dict[str, Any] | None) -> None:
        save_model(path, model, labels, "finetune", extra={
            "step": step, "val": report, "finetune": config.to_dict(),
            "metadata_heads": [dataclasses.asdict(h) for h in heads],
            "init": str(init) if init else None})

    logs = engine.run(batches, step_fn, run_config, evaluate=validate if val_files else None,
                      eval_every=eval_every or max(1, config.steps // 5))
    engine.save(run_config)
    if engine.step >= config.steps:
        if val_files and engine.step % (eval_every or max(1, config.steps // 5)):
            validate(engine.step)  # the final weights get their chance too
        if not val_files and runtime.is_main:
            _save(engine.step, None)
        if val_files and runtime.is_main:
            tune_saved_decoder(path, dataset, val_files, options.clip_s, batch_size_eval,
                               runtime.device)
        log.info("finetuned model written to %s (best val macro AP %.3f, last loss %.4f)", path,
                 best["macro_ap"], logs.get("loss", math.nan))
    return path
