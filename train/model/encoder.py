"""Strided conv feature encoder (wav2vec2/animal2vec): sinc envelopes -> frame features.

Each layer is conv1d (no bias) -> norm -> GELU. Norm "layer" is a LayerNorm over channels at
every frame: its statistics never span time, so a 1 s window at the edge gives the same
features as the same second inside a long clip (the default). Norm "group" is wav2vec2's
GroupNorm(channels, channels) on the first layer only (per-clip statistics).
The frame rate and receptive field follow from (kernel, stride): see
`ModelConfig.frame_rate_hz`, `.receptive_field_s` and `.n_frames`.

`grad_scale` multiplies the gradient flowing back into the conv stack (and through it into
the sinc filterbank) by a constant and leaves the forward pass alone: wav2vec2/data2vec's
`feature_grad_mult` (wav2vec2 base 0.1, data2vec audio 1.0), applied where they apply it,
after the convs and before the projection. Under Adam it barely changes the updates (see
`PretrainConfig.feature_grad_mult`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from train.model.gradients import scale_gradient


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (batch, channels, frames)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def conv_block(in_ch: int, out_ch: int, kernel: int, stride: int, norm: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv1d(in_ch, out_ch, kernel, stride=stride, bias=False)]
    if norm is not None:
        layers.append(norm)
    layers.append(nn.GELU())
    return nn.Sequential(*layers)


class ConvFeatureEncoder(nn.Module):
    """(batch, in_channels, samples') -> (batch, frames, dim): conv stack, then projection."""

    def __init__(self, in_channels: int, layers: Sequence[tuple[int, int, int]], dim: int,
                 norm: str = "layer", dropout: float = 0.0):
        super().__init__()
        blocks = []
        for i, (channels, kernel, stride) in enumerate(layers):
            if norm == "layer":
                layer_norm: nn.Module | None = ChannelLayerNorm(channels)
            else:  # "group": wav2vec2 normalises the first layer only
                layer_norm = nn.GroupNorm(channels, channels) if i == 0 else None
            blocks.append(conv_block(in_channels, channels, kernel, stride, layer_norm))
            in_channels = channels
        self.convs = nn.Sequential(*blocks)
        self.project = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, dim),
                                     nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
        x = scale_gradient(self.convs(x), grad_scale)  # (batch, channels, frames)
        return self.project(x.transpose(1, 2))  # (batch, frames, dim)
