"""The animal2vec-style teacher: sinc -> conv encoder -> (mask) -> positional -> transformer
-> heads, in plain PyTorch.

Pretraining (data2vec; the teacher is an EMA of `model.context` fed the student's own
unmasked features, as data2vec audio and animal2vec do, so the conv front end runs once):

    out = model(audio, mask=mask, lengths=lengths)
    targets = teacher(out.features, padding_mask=out.padding_mask).ffn   # EMATeacher(model.context)
    loss = data2vec_loss(model.regression_head(out.final), targets, mask, top_k)

Finetuning:

    out = model(audio, mask=mask, lengths=lengths)
    loss = sigmoid_focal_loss(out.frame_logits, labels, weights=~out.padding_mask[..., None])
    meta_total, meta_losses = model.metadata(out.pooled, targets, valid, step)

Export: `model.export_module()` is `audio (batch, samples) -> frame logits (batch, frames,
classes)` without the metadata and pretraining heads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.contract.errors import UserError
from train.config import MetadataHeadConfig, ModelConfig
from train.model.encoder import ConvFeatureEncoder
from train.model.heads import ClassificationHead, LayerAverage, RegressionHead, masked_mean
from train.model.metadata import MetadataHeads
from train.model.sinc import SincFilterbank
from train.model.transformer import ContextTransformer


@dataclass
class Output:
    frame_logits: torch.Tensor | None  # (batch, frames, classes); None without a classifier
    embedding: torch.Tensor  # (batch, frames, dim) layer average, normed: the head input
    pooled: torch.Tensor  # (batch, dim) embedding averaged over non-padded frames
    final: torch.Tensor  # (batch, frames, dim) last layer, normed: data2vec student output
    layer_outputs: list[torch.Tensor]  # per block (batch, frames, dim), residual stream
    ffn_outputs: list[torch.Tensor]  # per block (batch, frames, dim), FFN before residual
    features: torch.Tensor  # (batch, frames, dim) encoder features BEFORE masking
    padding_mask: torch.Tensor | None  # (batch, frames) True = padding


def apply_mask_embedding(features: torch.Tensor, mask: torch.Tensor,
                         embedding: torch.Tensor) -> torch.Tensor:
    """Replace masked frames by the learned embedding: (batch, frames, dim)."""
    return torch.where(mask[..., None], embedding.to(features.dtype), features)


def init_weights(module: nn.Module) -> None:
    """BERT/data2vec init for linear layers; convs and norms keep PyTorch defaults."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Animal2Vec(nn.Module):
    def __init__(self, config: ModelConfig, n_classes: int | None = None,
                 metadata_heads: Sequence[MetadataHeadConfig] = ()):
        super().__init__()
        if n_classes is not None:
            config = replace(config, n_classes=n_classes)
        self.config, c = config, config
        self.metadata_configs = tuple(metadata_heads)
        self.frontend = SincFilterbank(c.sinc_filters, c.sinc_kernel, c.sample_rate,
                                       c.sinc_stride, c.sinc_min_low_hz, c.sinc_min_band_hz)
        # The log envelopes sit around -7 nepers with ~1 of variation over time; without
        # centring, the bias-free convs + per-frame LayerNorm see mostly that constant and the
        # features barely change over time. BatchNorm's running statistics centre them the
        # same way for any window length (and fold into the convs at export).
        self.frontend_norm = nn.BatchNorm1d(c.sinc_filters)
        self.encoder = ConvFeatureEncoder(c.sinc_filters, c.conv_layers, c.dim, c.conv_norm,
                                          c.dropout)
        self.mask_embedding = nn.Parameter(torch.empty(c.dim).uniform_())
        self.context = ContextTransformer(c.dim, c.depth, c.heads, c.mlp_ratio, c.dropout,
                                          c.attn_dropout, c.layerdrop, c.pos_conv_kernel,
                                          c.pos_conv_groups)
        self.layer_average = LayerAverage(c.dim)
        self.classifier = (ClassificationHead(c.dim, c.n_classes, c.head_dropout)
                           if c.n_classes else None)
        self.regression_head: RegressionHead | None = RegressionHead(c.dim)
        active = [h for h in self.metadata_configs if h.mode != "off"]
        self.metadata = MetadataHeads(c.dim, active) if active else None
        self.features_frozen = False
        # Gradient multiplier into the sinc + conv front end (wav2vec2's feature_grad_mult):
        # a training setting, not part of the architecture; pretraining sets it, 1 otherwise.
        self.feature_grad_mult = 1.0
        for part in (self.context, self.layer_average, self.classifier, self.regression_head,
                     self.metadata):
            if part is not None:
                part.apply(init_weights)
        if self.classifier is not None:
            self.classifier.reset_parameters()

    # -- geometry
    def n_frames(self, n_samples: int) -> int:
        return self.config.n_frames(n_samples)

    def padding_mask(self, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """Per-clip lengths in samples -> (batch, frames) True where the frame is padding."""
        valid = torch.div(lengths, self.config.total_stride, rounding_mode="floor")
        return torch.arange(frames, device=lengths.device)[None, :] >= valid[:, None]

    def train(self, mode: bool = True) -> Animal2Vec:
        super().train(mode)
        if self.features_frozen:  # a frozen front end keeps its normalisation statistics too
            self.frontend_norm.eval()
        return self

    # -- forward
    def features(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, dim); frames = samples // total_stride."""
        if audio.dim() != 2:
            raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
        if self.features_frozen and torch.is_grad_enabled():
            with torch.no_grad():
                return self.features(audio, lengths)
        x = F.pad(audio, self.config.frame_padding)  # centre frames on their time span
        return self.encoder(self.frontend_norm(self.envelopes(x, lengths)), self.feature_grad_mult)

    def envelopes(self, padded_audio: torch.Tensor, lengths: torch.Tensor | None = None
                  ) -> torch.Tensor:
        """Sinc log envelopes (batch, bands, steps), centred per clip and band when the
        config says so (`ModelConfig.frontend_centring`): the mean spans each clip's own
        steps (`lengths` in samples for a padded batch), so a clip gives the same envelopes
        alone and padded."""
        env = self.frontend(padded_audio)
        if not self.config.frontend_centring:
            return env
        if lengths is None:
            return env - env.mean(-1, keepdim=True)
        c = self.config
        left, right = c.frame_padding
        steps = torch.div(lengths + left + right - c.sinc_kernel, c.sinc_stride,
                          rounding_mode="floor") + 1
        keep = torch.arange(env.shape[-1], device=env.device)[None, :] < steps[:, None]
        keep = keep.to(env.dtype)[:, None, :]
        mean = (env * keep).sum(-1, keepdim=True) / keep.sum(-1, keepdim=True).clamp(min=1)
        return env - mean

    def forward(self, audio: torch.Tensor, mask: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None) -> Output:
        """audio (batch, samples); mask (batch, frames) True = replace by the mask embedding;
        lengths (batch,) valid samples per clip when the batch is padded."""
        return self.forward_features(self.features(audio, lengths), mask, lengths)

    def forward_features(self, features: torch.Tensor, mask: torch.Tensor | None = None,
                         lengths: torch.Tensor | None = None) -> Output:
        """`forward` from precomputed `self.features(audio)` (batch, frames, dim): pretraining
        runs the front end once per clip and repeats the features under several masks."""
        padding = None if lengths is None else self.padding_mask(lengths, features.shape[1])
        x = features if mask is None else apply_mask_embedding(features, mask, self.mask_embedding)
        ctx = self.context(x, padding)
        embedding = self.layer_average(ctx.layers)  # (batch, frames, dim)
        logits = self.classifier(embedding) if self.classifier is not None else None
        return Output(logits, embedding, masked_mean(embedding, padding), ctx.x, ctx.layers,
                      ctx.ffn, features, padding)

    # -- training helpers
    def set_trainable(self, features: bool = True, context: bool = True) -> None:
        """Freeze/unfreeze the front end (sinc + convs) and the context network; heads stay
        trainable. A frozen front end also runs without autograd (saves memory)."""
        for p in (*self.frontend.parameters(), *self.frontend_norm.parameters(),
                  *self.encoder.parameters()):
            p.requires_grad_(features)
        for p in (self.mask_embedding, *self.context.parameters(), *self.layer_average.parameters()):
            p.requires_grad_(context)
        self.features_frozen = not features
        self.train(self.training)

    BACKBONE = ("frontend.", "frontend_norm.", "encoder.", "mask_embedding", "context.")

    def load_backbone(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load the pretrained front end + context network (pretraining -> finetuning); the
        heads keep their fresh initialisation. Shape or key mismatches are user errors."""
        ours = {k for k in self.state_dict() if k.startswith(self.BACKBONE)}
        theirs = {k: v for k, v in state.items() if k.startswith(self.BACKBONE)}
        missing, extra = sorted(ours - set(theirs)), sorted(set(theirs) - ours)
        if missing or extra:
            which = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
            raise UserError(f"{source}: not a checkpoint of this model shape ({which}, "
                            f"{len(missing) + len(extra)} mismatched weights; was it built "
                            "with another preset?)")
        try:
            self.load_state_dict(theirs, strict=False)
        except RuntimeError as err:  # size mismatch
            raise UserError(f"{source}: weights do not fit this model ({err})") from None

    def reset_classifier(self, n_classes: int) -> None:
        """New frame classifier (e.g. pretrained model -> finetuning on a label list)."""
        self.config = replace(self.config, n_classes=n_classes)
        self.classifier = ClassificationHead(self.config.dim, n_classes, self.config.head_dropout)
        self.classifier.apply(init_weights)
        self.classifier.to(self.mask_embedding.device)

    # -- inference and checkpoints
    def deployable(self) -> Animal2Vec:
        """An eval-mode copy without metadata and pretraining heads (never needed to infer)."""
        model = copy.deepcopy(self)
        model.metadata, model.regression_head, model.metadata_configs = None, None, ()
        return model.eval()

    def export_module(self) -> nn.Module:
        """`audio (batch, samples) -> frame logits (batch, frames, classes)`, for torch.export."""
        if self.classifier is None:
            raise UserError("this model has no frame classifier (pretraining only): finetune "
                            "it on labels before exporting")
        return FrameLogits(self.deployable())

    def spec(self) -> dict[str, Any]:
        """Plain-dict description that `Animal2Vec.from_spec` rebuilds (store it in checkpoints)."""
        return {"model": self.config.to_dict(),
                "metadata_heads": [h.to_dict() for h in self.metadata_configs]}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Animal2Vec:
        heads = [MetadataHeadConfig.from_dict(h, f"metadata_heads[{i}]")
                 for i, h in enumerate(spec.get("metadata_heads", ()))]
        # Checkpoints from before `frontend_centring` existed were trained without it.
        model = {"frontend_centring": False, **spec["model"]}
        return cls(ModelConfig.from_dict(model, "model"), metadata_heads=heads)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class FrameLogits(nn.Module):
    """Export wrapper: a single tensor out, static shapes in."""

    def __init__(self, model: Animal2Vec):
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(audio).frame_logits


def layerwise_param_groups(model: Animal2Vec, lr: float, weight_decay: float,
                           layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups with lr * layer_decay ** (depth + 1 - layer): front end = layer 0, block i =
    layer i + 1, norms and heads on top. No weight decay on 1-d params (biases, norms, band
    edges, mask embedding), the engine's rule."""
    depth = len(model.context.blocks)

    def layer_of(name: str) -> int:
        if name.startswith("context.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("frontend.", "frontend_norm.", "encoder.", "mask_embedding", "context.pos_embedding")):
            return 0
        return depth + 1

    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer, decay = layer_of(name), p.ndim >= 2
        group = groups.setdefault((layer, decay), {
            "params": [], "lr": lr * layer_decay ** (depth + 1 - layer),
            "weight_decay": weight_decay if decay else 0.0})
        group["params"].append(p)
    return list(groups.values())
