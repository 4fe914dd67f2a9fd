"""Linear probe: how much frame-label information a model's *frozen* features carry.

The gate before any "pretraining helps" claim (DESIGN.md): features of a pretrained model
must probe better than those of a random-init model of the same shape, measured the same way.
Finetuning cannot tell us this, since it retrains the front end either way.

Recipe (fixed, so numbers compare across runs): embed every clip of the train and eval files
with the model in eval mode; per frame take the plain mean of all transformer blocks' outputs
(`layer="average"`, not the learned `LayerAverage` head, which pretraining never trains) or
one layer (0 = the conv encoder's output, k = block k, -1 = the last block); standardise each
dim with the train frames' mean and std; fit one logistic regression per class (a linear
layer + sigmoid BCE, zero init, Adam, a fixed number of epochs over shuffled frames); score
frame AP on each eval split with train/evaluate.py's `score_files`. Deterministic for a seed.

A random-init baseline gets its front-end BatchNorm fitted on training clips first
(`random_init_model`): label-free, and what pretraining does too, so the baseline is not
handicapped by raw log envelopes around -7.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edge_runtime.contract.errors import UserError
from train.config import ModelConfig
from train.data.dataset import Dataset
from train.data.torch_data import ClipDataset, collate
from train.evaluate import score_files, stitch_by_file
from train.model.animal2vec import Animal2Vec

log = logging.getLogger(__name__)

# audio (batch, samples) -> frame features (batch, frames, dim)
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def layer_features(model: Animal2Vec, layer: str | int = "average") -> FeatureFn:
    """The frozen feature function the probe reads from `model` (see the module docstring)."""
    depth = len(model.context.blocks)
    if layer != "average" and not (isinstance(layer, int) and -depth <= layer <= depth):
        raise UserError(f"probe layer {layer!r}: use 'average', 0 (conv encoder) or a block "
                        f"1..{depth} (negative counts from the last)")

    def embed(audio: torch.Tensor) -> torch.Tensor:
        out = model(audio)
        if layer == "average":
            return torch.stack(out.layer_outputs).mean(0)
        if layer == 0:
            return out.features
        return out.layer_outputs[layer - 1 if layer > 0 else layer]

    return embed


@torch.no_grad()
def embed_clips(features: FeatureFn, clips: ClipDataset, batch_size: int = 16,
                device: str | torch.device = "cpu") -> np.ndarray:
    """(clips, frames, dim) float32 features of every clip."""
    out = []
    for start in range(0, len(clips), batch_size):
        batch = collate([clips[i] for i in range(start, min(start + batch_size, len(clips)))])
        out.append(features(batch["audio"].to(device)).float().cpu().numpy())
    return np.concatenate(out)


def fit_linear_probe(x: np.ndarray, y: np.ndarray, epochs: int = 20, lr: float = 1e-2,
                     weight_decay: float = 1e-4, batch_frames: int = 1024, seed: int = 0
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """Logistic regression per class on (frames, dim) -> (frames, classes) targets in [0, 1].

    Returns a function from features to probabilities. Standardisation statistics come from
    `x`; dims constant on the train frames get std 1 (they carry nothing, and no NaN).
    """
    x64 = x.astype(np.float64)
    mean, std = x64.mean(0), x64.std(0)
    std = np.where(std > 1e-6, std, 1.0)
    xs = torch.from_numpy(((x64 - mean) / std).astype(np.float32))
    ys = torch.from_numpy((y >= 0.5).astype(np.float32))
    # Zero weights, bias at each class's prior (the loss is then all about ranking): no
    # random init, so only `seed`'s shuffling varies, and the caller's RNG is left alone.
    prior = ys.mean(0).clamp(1e-4, 1 - 1e-4)
    weight = torch.zeros(xs.shape[1], ys.shape[1], requires_grad=True)
    bias = torch.log(prior / (1 - prior)).requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(xs.shape[0], generator=generator)
        for start in range(0, xs.shape[0], batch_frames):
            idx = order[start:start + batch_frames]
            loss = F.binary_cross_entropy_with_logits(xs[idx] @ weight + bias, ys[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def predict(features: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(((features.astype(np.float64) - mean) / std).astype(np.float32))
        return torch.sigmoid(z @ weight + bias).numpy()

    return predict


def probe(model: Animal2Vec | FeatureFn, dataset: Dataset, train_files: Sequence[str],
          eval_files: Mapping[str, Sequence[str]] | Sequence[str], clip_s: float, *,
          layer: str | int = "average", frame_rate_hz: float | None = None, epochs: int = 20,
          lr: float = 1e-2, weight_decay: float = 1e-4, batch_frames: int = 1024,
          seed: int = 0, batch_size: int = 16, device: str | torch.device = "cpu",
          keep_tracks: bool = False) -> dict[str, Any]:
    """Fit a linear frame classifier on frozen features of `train_files`, report frame AP.

    model: an `Animal2Vec` (read at `layer`), or any audio -> (batch, frames, dim) function
    (then `frame_rate_hz` is required). eval_files: {"val": [...], "test": [...]} or one list
    (reported as "eval"). Returns {"layer", "train_files", "train_frames", "dim", "settings",
    "splits": {name: {"files", "frames", "frame_ap": {"macro", "micro", "per_class"}}}}.
    keep_tracks: each split also gets "tracks": (probabilities, targets), {file: (frames, C)}
    arrays, what a paired bootstrap over files resamples (not JSON: pop it before writing).
    """
    if isinstance(model, Animal2Vec):
        model.eval()
        frame_rate_hz = model.config.frame_rate_hz
        features = layer_features(model, layer)
    elif frame_rate_hz is None:
        raise ValueError("frame_rate_hz is required when probing a feature function")
    else:
        features = model
    if not dataset.labels:
        raise UserError(f"{dataset.root}: no labels to probe (annotations.csv is empty)")
    if not train_files:
        raise UserError("probe: no training files")
    splits = dict(eval_files) if isinstance(eval_files, Mapping) else {"eval": eval_files}

    train = ClipDataset(dataset, train_files, clip_s, frame_rate_hz)
    x = embed_clips(features, train, batch_size, device)  # (clips, frames, dim)
    y = np.stack([c.targets for c in train.clips])  # (clips, frames, classes)
    predict = fit_linear_probe(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]), epochs,
                               lr, weight_decay, batch_frames, seed)
    report: dict[str, Any] = {
        "layer": layer, "train_files": len(train_files), "train_frames": int(x.shape[0] * x.shape[1]),
        "dim": int(x.shape[-1]), "labels": list(dataset.labels),
        "settings": {"clip_s": clip_s, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                     "batch_frames": batch_frames, "seed": seed},
        "splits": {},
    }
    for name, files in splits.items():
        if not files:
            raise UserError(f"probe: no files to evaluate in '{name}'")
        clips = ClipDataset(dataset, files, clip_s, frame_rate_hz)
        z = embed_clips(features, clips, batch_size, device)
        per_clip = predict(z.reshape(-1, z.shape[-1])).reshape(*z.shape[:2], -1)
        probs = stitch_by_file(clips, per_clip, dataset, frame_rate_hz)
        targets = stitch_by_file(clips, np.stack([c.targets for c in clips.clips]), dataset,
                                 frame_rate_hz)
        scores = score_files(dataset, probs, targets, frame_rate_hz)
        report["splits"][name] = {"files": scores["files"], "frames": scores["frames"],
                                  "frame_ap": scores["frame_ap"]}
        if keep_tracks:
            report["splits"][name]["tracks"] = (probs, targets)
        log.info("probe %s: frame macro AP %.3f on %d files", name,
                 scores["frame_ap"]["macro"], len(files))
    return report


def random_init_model(config: ModelConfig, dataset: Dataset, files: Sequence[str], clip_s: float,
                      seed: int = 0, device: str | torch.device = "cpu") -> Animal2Vec:
    """The baseline: a model of `config` with seeded random weights, its front-end BatchNorm
    fitted on clips of `files` (label-free; see the module docstring)."""
    from train.pretrain import fit_frontend_norm

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
        torch.manual_seed(seed)
        model = Animal2Vec(config).to(device)
    fit_frontend_norm(model, ClipDataset(dataset, files, clip_s, config.frame_rate_hz,
                                         labelled=False), seed=seed)
    return model.eval()
