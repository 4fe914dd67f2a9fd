"""Heads on the context network: frame classification (finetuning), data2vec regression
(pretraining), and the clip pooling the metadata heads read from."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# Initial P(call) per frame and class. Calls are rare (a few % of frames), so a head that
# starts at p = 0.5 gets a huge, uniform "everything is background" gradient in its first
# steps, and the fastest way down is for the encoder to stop varying over time: measured on
# the tiny teacher, features' std over time fell from 0.42 to 0.04 in 20 steps and it never
# learned (train AP 0.40 on 32 clips). Starting at the prior (RetinaNet's focal-loss init)
# removes that gradient: the same run reaches train AP 1.0.
CLASS_PRIOR = 0.01


def init_prior_bias(bias: torch.Tensor, prior: float = CLASS_PRIOR) -> None:
    """Set a multi-label head's bias so that sigmoid(logit) starts at `prior`."""
    with torch.no_grad():
        bias.fill_(-math.log((1 - prior) / prior))


class LayerAverage(nn.Module):
    """Mean of all transformer layers' outputs, layer-normed (animal2vec's head input)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        # list of (batch, frames, dim) -> (batch, frames, dim); a running sum, not a stack,
        # so large models do not materialise depth x activations at once
        return self.norm(sum(layers) / len(layers))


class ClassificationHead(nn.Module):
    """Frame-level multi-label logits; sigmoid belongs to the loss / inference."""

    def __init__(self, dim: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, n_classes)

    def reset_parameters(self) -> None:
        """BERT init for the weights, the class prior for the bias (see CLASS_PRIOR)."""
        nn.init.normal_(self.linear.weight, std=0.02)
        init_prior_bias(self.linear.bias)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(embedding))  # (batch, frames, classes)


class RegressionHead(nn.Linear):
    """data2vec student head: final output (batch, frames, dim) -> predicted teacher target."""

    def __init__(self, dim: int):
        super().__init__(dim, dim)


def masked_mean(x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over frames ignoring padding: (batch, frames, dim) -> (batch, dim)."""
    if padding_mask is None:
        return x.mean(1)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (batch, frames, 1)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
