"""What makes N processes x B clips train like one process with N*B clips.

DDP averages gradients over ranks, so it is exact only for losses that are a mean over equal
shares of the global batch. Three things break that, and each has its fix here:

- losses normalised by a count that varies per rank (positive frame-labels, valid metadata):
  `global_denominator` gives every rank the global count (over the world size);
- BatchNorm statistics: `convert_sync_batchnorm` normalises over the global batch (torch's
  SyncBatchNorm on GPU; `SyncBatchNorm` here on CPU/gloo, where torch's refuses to run);
- logged values: `mean_over_ranks` so a step's logged loss is the global batch's.

Every function is the identity outside a multi-process group, so single-process code pays
nothing. Each one is a collective: all ranks must call it the same number of times.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks with a gradient: each rank's input feeds every rank's loss, so its
    gradient is the sum of all ranks' upstream gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of `x` over ranks (identity in a single process)."""
    return _AllReduceSum.apply(x) if world_size() > 1 else x


def global_denominator(count: torch.Tensor, minimum: float = 0.0) -> torch.Tensor:
    """The divisor for a per-rank `sum / count` loss so that DDP's gradient average equals
    the global batch's `sum / count`: max(global count, minimum) / world size.

    Only while training (`torch.is_grad_enabled()`), so an evaluation on one rank never waits
    for the others; in a single process it is max(count, minimum).
    """
    n = world_size()
    count = count.detach().float()
    if n > 1 and torch.is_grad_enabled():
        count = count.clone()
        dist.all_reduce(count)
        return count.clamp(min=minimum) / n
    return count.clamp(min=minimum)


def mean_over_ranks(logs: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a step's logged scalars over ranks (keys must be the same on every rank)."""
    n = world_size()
    if n == 1 or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, (values / n).tolist(), strict=True))


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, on any device and backend.

    Two passes (mean, then variance about it) as plain BatchNorm does, for the same rounding;
    the sums go through `all_reduce_sum`, so the gradient flows through the global statistics
    exactly as it would in one process. Eval mode is plain BatchNorm on the running stats.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input, got {x.dim()}-d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce_sum(x.new_tensor([x.numel() // x.shape[1]]))
        mean = all_reduce_sum(x.sum(dims)) / count  # (channels,)
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.square().sum(dims)) / count  # biased, as BN normalises
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(unbiased.detach(), momentum)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm in `module` (in place, keeping the same Parameter objects, so
    an optimizer built earlier still updates them) by a synchronised one."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, SyncBatchNorm | nn.SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            module.add_module(name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module
