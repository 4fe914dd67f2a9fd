"""Heads on the context network: frame classification (finetuning), data2vec regression
(pretraining), and the clip pooling the metadata heads read from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


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
