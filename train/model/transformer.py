"""Context network: conv positional embedding + pre-norm transformer blocks.

Every block reports two things:
- its output (the residual stream): averaged over all layers for the classification head,
  as in animal2vec;
- its FFN output *before* the residual add: the data2vec teacher targets. data2vec's
  ablation found this the best target; with pre-norm blocks it matters more, because the
  residual stream accumulates every earlier layer, so top-k block outputs are nearly the same
  vector (and close to the input features), while each FFN output is that layer's own
  contribution. Each target layer is instance-normalised anyway (`train/losses.py`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class ConvPositionalEmbedding(nn.Module):
    """Relative position from a wide grouped conv over time (wav2vec2); returned, not added."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (batch, frames, dim) -> (batch, frames, dim)
        return F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, dim = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, frames, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, frames, dim))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class Block(nn.Module):
    """Pre-norm block; returns (output, FFN output before the residual add)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, attn_dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attn_dropout)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.drop(self.attn(self.norm1(x), keep))
        ffn = self.ffn(self.norm2(x))
        return x + self.drop(ffn), ffn


class ContextOutput(NamedTuple):
    x: torch.Tensor  # (batch, frames, dim) final output, layer-normed
    layers: list[torch.Tensor]  # per block: output (residual stream)
    ffn: list[torch.Tensor]  # per block: FFN output before the residual (data2vec targets)


def attention_keep_mask(padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(batch, frames) True = padding  ->  (batch, 1, 1, frames) True = may attend."""
    return None if padding_mask is None else ~padding_mask[:, None, None, :]


class ContextTransformer(nn.Module):
    """(batch, frames, dim) -> ContextOutput. Layerdrop skips whole blocks while training."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, attn_dropout: float = 0.0, layerdrop: float = 0.0,
                 pos_conv_kernel: int = 65, pos_conv_groups: int = 16):
        super().__init__()
        self.layerdrop = layerdrop
        self.pos_embedding = ConvPositionalEmbedding(dim, pos_conv_kernel, pos_conv_groups)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, dropout, attn_dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> ContextOutput:
        if padding_mask is not None:  # padded frames must not leak in through the conv
            x = x.masked_fill(padding_mask[..., None], 0.0)
        x = x + self.pos_embedding(x)
        keep = attention_keep_mask(padding_mask)
        layers, ffns = [], []
        for block in self.blocks:
            if self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop:
                ffn = torch.zeros_like(x)  # skipped: the stream passes through unchanged
            else:
                x, ffn = block(x, keep)
            layers.append(x)
            ffns.append(ffn)
        return ContextOutput(self.norm(x), layers, ffns)
