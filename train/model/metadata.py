"""MetaPerch-style auxiliary heads on the pooled clip embedding, with gradient reversal.

A "standard" head teaches the embedding to encode context that helps (where, when); an
"adversarial" head sits behind `grad_reverse`, so while the head learns to predict, say, the
recorder, the encoder receives the negated gradient and unlearns it (DANN). Heads are never
needed at inference: `Animal2Vec.deployable()` drops them.

Targets per field (one tensor each, first axis = batch) and what invalid rows may hold:
    location    (batch, 2) lat, lon in degrees        -> unit vector on the sphere
    circular    (batch,)   phase in [0, 1)            -> (cos 2 pi phase, sin 2 pi phase)
    class       (batch,)   int64 index in vocabulary
    regression  (batch,)   raw value, standardised with target_mean / target_std
Missing metadata: `valid[name]` (batch,) bool. Invalid rows are replaced by a harmless value
*before* the loss (a NaN would otherwise poison the gradient through 0 * NaN), then weighted
by 0, so they add exactly zero loss and zero gradient; a field with no valid row gives 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.contract.errors import UserError
from train.config import MetadataHeadConfig
from train.distributed import global_denominator
from train.model.gradients import grad_reverse


# ---------------------------------------------------------------- gradient reversal
def grl_lambda(step: int, max_lambda: float = 1.0, warmup_steps: int = 0) -> float:
    """DANN ramp: max_lambda * (2 / (1 + exp(-10 p)) - 1), p = step / warmup_steps in [0, 1]."""
    if warmup_steps <= 0:
        return max_lambda
    p = min(max(step / warmup_steps, 0.0), 1.0)
    return max_lambda * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


# ---------------------------------------------------------------- target encodings
def location_to_unit_vector(lat_lon_deg: torch.Tensor) -> torch.Tensor:
    """(..., 2) latitude, longitude in degrees -> (..., 3) point on the unit sphere."""
    lat, lon = torch.deg2rad(lat_lon_deg).unbind(-1)
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], dim=-1)


def phase_to_circle(phase: torch.Tensor) -> torch.Tensor:
    """(...) fraction of a cycle (time of day, day of year) -> (..., 2) (cos, sin)."""
    angle = 2 * math.pi * phase
    return torch.stack([angle.cos(), angle.sin()], dim=-1)


def cosine_distance(pred: torch.Tensor, target_unit: torch.Tensor) -> torch.Tensor:
    """1 - cos(pred, target) per row; target already unit length."""
    return 1.0 - (F.normalize(pred, dim=-1, eps=1e-6) * target_unit).sum(-1)


# ---------------------------------------------------------------- one head
OUT_DIMS = {"location": 3, "circular": 2, "regression": 1}


class MetadataHead(nn.Module):
    """Small MLP on the pooled embedding plus the per-sample loss for its kind."""

    def __init__(self, dim: int, config: MetadataHeadConfig):
        super().__init__()
        self.config = config
        if config.kind == "class" and not config.vocabulary:
            raise UserError(f"metadata head '{config.name}' (class) needs its vocabulary: "
                            "fill MetadataHeadConfig.vocabulary from the data first")
        out = len(config.vocabulary) if config.kind == "class" else OUT_DIMS[config.kind]
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled)

    def per_sample_loss(self, pred: torch.Tensor, target: torch.Tensor,
                        valid: torch.Tensor) -> torch.Tensor:
        """(batch,) loss; rows where `valid` is False are computed on a safe dummy target."""
        kind, cfg = self.config.kind, self.config
        if kind == "class":
            target = torch.where(valid, target.long(), torch.zeros_like(target, dtype=torch.long))
            return F.cross_entropy(pred.float(), target, reduction="none")
        target = torch.where(valid.view(-1, *[1] * (target.dim() - 1)), target.float(),
                             torch.zeros_like(target, dtype=torch.float32))
        if kind == "location":
            return cosine_distance(pred.float(), location_to_unit_vector(target))
        if kind == "circular":
            return cosine_distance(pred.float(), phase_to_circle(target))
        standard = (target - cfg.target_mean) / cfg.target_std
        return (pred.float().squeeze(-1) - standard).square()


def infer_valid(kind: str, target: torch.Tensor) -> torch.Tensor:
    """Default validity when none is given: finite values (and index >= 0 for classes)."""
    if kind == "class":
        return target >= 0
    finite = torch.isfinite(target)
    return finite.all(-1) if kind == "location" else finite


# ---------------------------------------------------------------- all heads
class MetadataHeads(nn.Module):
    """The heads that are not "off"; forward returns (weighted total, {name: loss})."""

    def __init__(self, dim: int, configs: Sequence[MetadataHeadConfig]):
        super().__init__()
        self.heads = nn.ModuleDict({c.name: MetadataHead(dim, c) for c in configs if c.mode != "off"})

    def lambdas(self, step: int) -> dict[str, float]:
        return {name: grl_lambda(step, h.config.grl_max_lambda, h.config.grl_warmup_steps)
                for name, h in self.heads.items() if h.config.mode == "adversarial"}

    def forward(self, pooled: torch.Tensor, targets: Mapping[str, torch.Tensor],
                valid: Mapping[str, torch.Tensor] | None = None, step: int = 0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # pooled: (batch, dim); targets/valid: per field, first axis batch
        total = pooled.new_zeros((), dtype=torch.float32)
        losses: dict[str, torch.Tensor] = {}
        lambdas = self.lambdas(step)
        for name, head in self.heads.items():
            if name not in targets:  # this batch carries no such field at all
                losses[name] = total.new_zeros(())
                continue
            target = targets[name].to(pooled.device)
            ok = (valid[name] if valid is not None and name in valid
                  else infer_valid(head.config.kind, target)).to(pooled.device).bool()
            x = grad_reverse(pooled, lambdas[name]) if name in lambdas else pooled
            per_sample = head.per_sample_loss(head(x), target, ok)  # (batch,)
            weight = ok.to(per_sample.dtype)
            # Over the valid rows of the global batch under DDP (as one process would).
            losses[name] = (per_sample * weight).sum() / global_denominator(weight.sum(), 1.0)
            total = total + head.config.weight * losses[name]
        return total, losses
