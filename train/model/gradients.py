"""Gradient surgery with an identity forward pass: scaling (the front end's `feature_grad_mult`
in pretraining) and reversal (the adversarial metadata heads' gradient reversal layer)."""

from __future__ import annotations

import torch


class GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (negative: reversal)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` unchanged, its gradient times `scale`. No graph node when there is no gradient to
    scale (scale 1, inference, export), so traced and exported graphs never contain it."""
    if scale == 1.0 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return GradScale.apply(x, scale)


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Gradient reversal (DANN): `x` unchanged, its gradient times -lambda_."""
    return GradScale.apply(x, -lambda_)
