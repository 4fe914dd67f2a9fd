"""Training losses of the teacher: focal loss for frame labels, data2vec regression for
pretraining. (Metadata losses live with their heads in train/model/metadata.py; the
student's distillation loss lives in export/distill.py.)"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from train.distributed import global_denominator


# ---------------------------------------------------------------- focal loss
def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0,
                       alpha: float | None = 0.25, weights: torch.Tensor | None = None,
                       reduction: str = "mean") -> torch.Tensor:
    """Multi-label focal loss (Lin et al.): BCE * (1 - p_t) ** gamma, times alpha_t if alpha.

    targets may be soft (mixup). weights broadcast against logits (e.g. (batch, frames, 1)
    padding mask, or per-class weights); "mean" divides by the total weight, so padded
    frames do not dilute the loss; "positives" divides the sum by the (weighted) number of
    positive targets, at least 1, as RetinaNet does: with calls on ~3% of frame-labels the
    "mean" is ~30x smaller, and any other loss added to it (metadata heads) drowns it.
    gamma = 0 and alpha = None give plain BCE-with-logits.
    """
    logits, targets = logits.float(), targets.float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma if gamma else bce
    if alpha is not None:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if weights is not None:
        weights = weights.to(loss.dtype).expand_as(loss)
        loss = loss * weights
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        denom = weights.sum() if weights is not None else torch.tensor(float(loss.numel()))
        return loss.sum() / denom.clamp(min=1e-8)
    if reduction == "positives":
        positives = targets * weights if weights is not None else targets
        # The whole global batch's count under DDP, so N ranks x B clips train like 1 x N*B.
        return loss.sum() / global_denominator(positives.sum(), minimum=1.0)
    raise ValueError(f"unknown reduction {reduction!r}: use mean, positives, sum or none")


# ---------------------------------------------------------------- data2vec
def instance_norm_over_time(x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                            eps: float = 1e-5) -> torch.Tensor:
    """Normalise each (clip, channel) over its non-padded frames: (batch, frames, dim).
    Without padding this is F.instance_norm on (batch, dim, frames)."""
    x = x.float()
    if padding_mask is None:
        return F.instance_norm(x.transpose(1, 2), eps=eps).transpose(1, 2)
    keep = (~padding_mask).unsqueeze(-1).to(x.dtype)  # (batch, frames, 1)
    count = keep.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * keep).sum(1, keepdim=True) / count
    var = ((x - mean).square() * keep).sum(1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * keep


@torch.no_grad()
def data2vec_targets(teacher_layers: Sequence[torch.Tensor], top_k: int,
                     instance_norm: bool = True, final_norm: str = "none",
                     padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average of the top-k teacher layers, each instance-normed over time: (batch, frames, dim).

    final_norm: "none" | "instance" (over time again) | "layer" (over dim per frame).
    """
    if not 1 <= top_k <= len(teacher_layers):
        raise ValueError(f"top_k={top_k} but the teacher has {len(teacher_layers)} layers")
    layers = [t.float() for t in teacher_layers[-top_k:]]
    if instance_norm:
        layers = [instance_norm_over_time(t, padding_mask) for t in layers]
    y = torch.stack(layers).mean(0)
    if final_norm == "instance":
        y = instance_norm_over_time(y, padding_mask)
    elif final_norm == "layer":
        y = F.layer_norm(y, y.shape[-1:])
    elif final_norm != "none":
        raise ValueError(f"unknown final_norm {final_norm!r}: use none, instance or layer")
    return y


def data2vec_loss(student_pred: torch.Tensor, teacher_layers: Sequence[torch.Tensor],
                  mask: torch.Tensor, top_k: int, loss: str = "mse", beta: float = 0.25,
                  instance_norm: bool = True, final_norm: str = "none",
                  padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Regress the student's prediction at masked frames onto the teacher targets.

    student_pred (batch, frames, dim); teacher_layers per layer (batch, frames, dim) (detached
    here); mask (batch, frames) True = masked. Mean over masked frames and dims; 0 (with a
    graph) when nothing is masked.
    """
    target = data2vec_targets(teacher_layers, top_k, instance_norm, final_norm, padding_mask)
    return masked_regression_loss(student_pred, target, mask, loss, beta, padding_mask)


def masked_regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                           loss: str = "mse", beta: float = 0.25,
                           padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`data2vec_loss` from ready targets (batch, frames, dim): mean over masked frames and dims."""
    if padding_mask is not None:
        mask = mask & ~padding_mask
    p, t = pred[mask].float(), target[mask].float()  # (masked frames, dim)
    if p.numel() == 0:
        return pred.sum() * 0.0
    if loss == "mse":
        return F.mse_loss(p, t)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(p, t, beta=beta)
    raise ValueError(f"unknown data2vec loss {loss!r}: use mse or smooth_l1")


def per_dim_std(x: torch.Tensor) -> torch.Tensor:
    """(frames, dim) -> scalar: each dim's std over frames, averaged over dims.

    data2vec's `compute_var`, which it logs as `target_var` / `pred_var` and stops the run on
    (below 0.1 / 0.01): a collapsing teacher or student shows up as this going to 0.
    """
    x = x.detach().float()
    if x.shape[0] < 2:
        return x.new_zeros(())
    return torch.sqrt(x.var(0) + 1e-6).mean()


@torch.no_grad()
def regression_stats(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                     padding_mask: torch.Tensor | None = None) -> dict[str, float]:
    """At masked frames: target_var and pred_var (`per_dim_std`), and the fraction of the
    targets' variance the prediction explains, 1 - mse / var(target) (0 = no better than
    predicting each dim's mean; the old runs sat at ~0.02)."""
    if padding_mask is not None:
        mask = mask & ~padding_mask
    p, t = pred[mask].detach().float(), target[mask].detach().float()  # (masked frames, dim)
    if t.shape[0] < 2:
        return {"target_var": 0.0, "pred_var": 0.0, "variance_explained": 0.0}
    var = t.var(0, unbiased=False).mean()
    explained = 1.0 - (p - t).square().mean() / var.clamp(min=1e-8)
    return {"target_var": per_dim_std(t).item(), "pred_var": per_dim_std(p).item(),
            "variance_explained": explained.item()}


def frame_std(x: torch.Tensor) -> float:
    """Mean per-dim std across frames: data2vec logs it for student and teacher, since a
    collapsing teacher shows up as this going to 0."""
    x = x.detach().float().reshape(-1, x.shape[-1])
    return x.std(0).mean().item() if x.shape[0] > 1 else 0.0
