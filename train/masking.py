"""Span masking for data2vec pretraining and finetuning (fairseq `compute_mask_indices` style).

Parameterisation (the one fairseq, data2vec and animal2vec use):
    a clip of T frames gets n = floor(mask_prob * T / M + u), u ~ U[0, 1), spans of M frames
    (so E[n] = mask_prob * T / M), at least `min_masks`, starting at n *distinct* positions
    drawn uniformly from the T - M + 1 possible starts. Spans may overlap.
So `mask_prob` is the masked fraction before overlaps and may exceed 1. With q = mask_prob / M
starts per frame, a frame away from the edges is masked unless none of the M starts that
cover it was drawn:
    coverage ~= 1 - (1 - q) ** M        (exact: `expected_coverage`)
    mask_prob = 0.8, M = 5:  1 - 0.84 ** 5 = 0.58  (the pretraining default; 0.59 on 100 frames)
    mask_prob = 0.65, M = 10: 1 - 0.935 ** 10 = 0.49  (data2vec audio)
    mask_prob = 1.6, M = 2:  1 - 0.2 ** 2 = 0.96   (animal2vec, ~96% masked)
    mask_prob = 0.15, M = 2:                ~0.14  (i.i.d. starts with p = 0.15 would give
                                                   1 - 0.85 ** 2 = 0.28; neither is ~96%)
At high coverage neighbouring spans merge, so the *runs* of masked frames `mask_statistics`
reports are longer than M; at low coverage their mode is M.

Why not animal2vec's ~96% here: the student sees a masked frame only as the mask token plus
the positional conv over its neighbours (no absolute positions). A masked frame with no
visible frame within the conv's reach (pos_conv_kernel // 2 frames) gets the same input as
every other such frame of the clip, so the student must predict the same thing for all of
them. animal2vec runs at 200 fps on
10 s clips with a data2vec2-style student; at 50 fps on 2 s clips with the tiny preset's
15-frame conv, (1.6, 2) leaves ~3.8 visible frames per 100-frame clip and 64% of masked
frames out of reach of all of them. `masking_regime_stats` measures this; pretraining logs it.
(0.8, 5) masks ~59% of a 100-frame clip with 7% of masked frames out of reach (reach 7);
the base preset's 65-frame conv (reach 32) leaves none out of reach.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def compute_span_mask(batch: int, frames: int, mask_prob: float, mask_length: int,
                      min_masks: int = 1, generator: torch.Generator | None = None,
                      padding_mask: torch.Tensor | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """(batch, frames) bool, True = masked. Padded frames (padding_mask True) are never masked
    and spans only start inside each clip's valid length. Random numbers come from
    `generator` on the CPU, so a seeded generator gives the same mask on any device."""
    M = int(mask_length)
    if padding_mask is not None:
        lengths = (~padding_mask).sum(1).cpu()
    else:
        lengths = torch.full((batch,), frames, dtype=torch.long)
    starts_total = max(frames - M + 1, 1)
    starts_valid = torch.where(lengths > 0, (lengths - M + 1).clamp(min=1), 0)  # (batch,)

    u = torch.rand(batch, generator=generator)
    n = torch.floor(mask_prob * lengths / M + u).long()
    n = torch.minimum(n.clamp(min=min_masks), starts_valid)  # (batch,)

    # n distinct starts per row: the n lowest random scores among the valid positions.
    scores = torch.rand(batch, starts_total, generator=generator)
    positions = torch.arange(starts_total)[None, :]
    scores = scores.masked_fill(positions >= starts_valid[:, None], 2.0)  # never chosen
    rank = scores.argsort(1).argsort(1)
    starts = rank < n[:, None]  # (batch, starts_total)

    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for offset in range(M):  # dilate each start into a span of M frames
        width = min(starts_total, frames - offset)
        if width > 0:
            mask[:, offset:offset + width] |= starts[:, :width]
    mask &= torch.arange(frames)[None, :] < lengths[:, None]
    return mask.to(device) if device is not None else mask


def expected_coverage(frames: int, mask_prob: float, mask_length: int, min_masks: int = 1) -> float:
    """Exact expected masked fraction of an unpadded clip under `compute_span_mask`."""
    M = int(mask_length)
    starts = max(frames - M + 1, 1)
    x = mask_prob * frames / M
    n_low, frac = math.floor(x), x - math.floor(x)
    total = 0.0
    for n, weight in ((n_low, 1.0 - frac), (n_low + 1, frac)):
        n = min(max(n, min_masks), starts)
        for t in range(frames):
            # how many start positions cover frame t
            c = min(t, starts - 1) - max(0, t - M + 1) + 1
            p_none = 1.0
            for i in range(max(c, 0)):  # P(no covering start among n distinct draws)
                p_none *= max(starts - n - i, 0) / (starts - i)
            total += weight * (1.0 - p_none)
    return total / frames


def approximate_coverage(mask_prob: float, mask_length: int) -> float:
    """Long-clip limit 1 - (1 - mask_prob / M) ** M (for configs and docs)."""
    return 1.0 - (1.0 - min(mask_prob / mask_length, 1.0)) ** mask_length


def mask_statistics(mask: torch.Tensor, padding_mask: torch.Tensor | None = None) -> dict[str, float]:
    """Coverage of non-padded frames and the lengths of contiguous masked runs, for logging."""
    mask = mask.bool()
    valid = torch.ones_like(mask) if padding_mask is None else ~padding_mask.bool()
    mask = mask & valid
    coverage = mask.sum().item() / max(valid.sum().item(), 1)
    edges = F.pad(mask.to(torch.int8), (1, 1)).diff(dim=1)  # +1 at a run start, -1 after its end
    lengths = (edges == -1).nonzero()[:, 1] - (edges == 1).nonzero()[:, 1]
    if lengths.numel() == 0:
        return {"coverage": coverage, "span_length_mode": 0.0, "span_length_mean": 0.0, "n_spans": 0.0}
    return {
        "coverage": coverage,
        "span_length_mode": float(torch.bincount(lengths).argmax()),
        "span_length_mean": lengths.float().mean().item(),
        "n_spans": float(lengths.numel()),
    }


def unreachable_fraction(mask: torch.Tensor, reach: int,
                         padding_mask: torch.Tensor | None = None) -> float:
    """Fraction of masked frames with no visible (unmasked, non-padded) frame within `reach`
    frames on either side: those the positional conv cannot place (reach = kernel // 2)."""
    mask = mask.bool()
    valid = torch.ones_like(mask) if padding_mask is None else ~padding_mask.bool()
    mask = mask & valid
    visible = (valid & ~mask).float()[:, None, :]  # (batch, 1, frames)
    near = F.max_pool1d(visible, 2 * reach + 1, stride=1, padding=reach)[:, 0] > 0
    return (mask & ~near).sum().item() / max(mask.sum().item(), 1)


def masking_regime_stats(mask: torch.Tensor, reach: int,
                         padding_mask: torch.Tensor | None = None) -> dict[str, float]:
    """`mask_statistics` plus what the student can still see: visible frames per clip and
    the fraction of masked frames out of the positional conv's reach (see the module doc)."""
    stats = mask_statistics(mask, padding_mask)
    valid = torch.ones_like(mask, dtype=torch.bool) if padding_mask is None else ~padding_mask.bool()
    visible = valid & ~mask.bool()
    stats["visible_per_clip"] = visible.sum(1).float().mean().item()
    stats["unreachable_fraction"] = unreachable_fraction(mask, reach, padding_mask)
    return stats
