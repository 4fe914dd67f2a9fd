"""Focal loss and the data2vec regression loss/targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import (
    data2vec_loss,
    data2vec_targets,
    frame_std,
    instance_norm_over_time,
    sigmoid_focal_loss,
)


# ---------------------------------------------------------------- focal loss
def test_focal_loss_is_bce_without_focusing_and_alpha():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 30, 4) * 3, (torch.rand(2, 30, 4) > 0.7).float()
    for reduction in ("mean", "sum", "none"):
        ours = sigmoid_focal_loss(logits, targets, gamma=0.0, alpha=None, reduction=reduction)
        ref = F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_focal_loss_matches_a_hand_computation():
    logits = torch.tensor([2.0, -1.0, 0.5])
    targets = torch.tensor([1.0, 1.0, 0.0])
    gamma, alpha = 2.0, 0.25
    expected = []
    for z, y in zip(logits.tolist(), targets.tolist(), strict=True):
        p = 1 / (1 + math.exp(-z))
        p_t = p if y == 1 else 1 - p
        a_t = alpha if y == 1 else 1 - alpha
        expected.append(-a_t * (1 - p_t) ** gamma * math.log(p_t))
    ours = sigmoid_focal_loss(logits, targets, gamma, alpha, reduction="none")
    assert ours.tolist() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_focal_loss(logits, targets, gamma, alpha).item() == pytest.approx(
        sum(expected) / 3, rel=1e-5)


def test_focal_loss_down_weights_easy_examples():
    easy, hard = torch.tensor([4.0]), torch.tensor([-1.0])
    y = torch.tensor([1.0])
    ratio_focal = (sigmoid_focal_loss(hard, y, 2.0, None) / sigmoid_focal_loss(easy, y, 2.0, None))
    ratio_bce = (sigmoid_focal_loss(hard, y, 0.0, None) / sigmoid_focal_loss(easy, y, 0.0, None))
    assert ratio_focal > 10 * ratio_bce


def test_focal_loss_weights_exclude_padded_frames_from_the_mean():
    torch.manual_seed(1)
    logits, targets = torch.randn(1, 10, 3), (torch.rand(1, 10, 3) > 0.5).float()
    keep = torch.zeros(1, 10, 1)
    keep[:, :6] = 1
    padded = logits.clone()
    padded[:, 6:] = 100.0  # garbage in padding must not matter
    ours = sigmoid_focal_loss(padded, targets, weights=keep)
    assert ours.item() == pytest.approx(sigmoid_focal_loss(logits[:, :6], targets[:, :6]).item(), rel=1e-6)
    assert sigmoid_focal_loss(logits, targets, weights=torch.zeros(1, 10, 1)).item() == 0.0


def test_focal_loss_positives_reduction_normalises_by_the_positive_count():
    torch.manual_seed(2)
    logits = torch.randn(2, 50, 4)
    targets = torch.zeros(2, 50, 4)
    targets[0, 10:13, 1] = 1  # 3 positives among 400 frame-labels
    total = sigmoid_focal_loss(logits, targets, reduction="sum")
    ours = sigmoid_focal_loss(logits, targets, reduction="positives")
    assert ours.item() == pytest.approx(total.item() / 3, rel=1e-6)
    # Padding counts neither in the sum nor among the positives; no positives: divide by 1.
    keep = torch.ones(2, 50, 1)
    keep[0, 11:] = 0
    assert sigmoid_focal_loss(logits, targets, weights=keep, reduction="positives").item() == \
        pytest.approx(sigmoid_focal_loss(logits, targets, weights=keep, reduction="sum").item())
    empty = torch.zeros_like(targets)
    assert sigmoid_focal_loss(logits, empty, reduction="positives").item() == pytest.approx(
        sigmoid_focal_loss(logits, empty, reduction="sum").item())


# ---------------------------------------------------------------- data2vec
def _layers(n=4, batch=2, frames=12, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, frames, dim, generator=g) * (i + 1) + i for i in range(n)]


def test_instance_norm_over_time_matches_torch_and_ignores_padding():
    x = _layers(1)[0]
    ref = F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(instance_norm_over_time(x), ref, atol=1e-5)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[0, 7:] = True
    x_padded = x.clone()
    x_padded[0, 7:] = 1e3
    out = instance_norm_over_time(x_padded, padding)
    alone = F.instance_norm(x[:1, :7].transpose(1, 2)).transpose(1, 2)
    assert torch.allclose(out[0, :7], alone[0], atol=1e-5)
    assert torch.all(out[0, 7:] == 0)
    assert torch.allclose(out[1], ref[1], atol=1e-5)


def test_data2vec_targets_use_only_the_top_k_layers():
    layers = _layers(4)
    target = data2vec_targets(layers, top_k=2)
    expected = (instance_norm_over_time(layers[2]) + instance_norm_over_time(layers[3])) / 2
    assert torch.allclose(target, expected, atol=1e-6)
    changed_low = [layers[0] * 7 + 3, layers[1].flip(1), layers[2], layers[3]]
    assert torch.equal(data2vec_targets(changed_low, top_k=2), target)
    changed_top = [layers[0], layers[1], layers[2].flip(1), layers[3]]
    assert not torch.allclose(data2vec_targets(changed_top, top_k=2), target)
    with pytest.raises(ValueError, match="top_k"):
        data2vec_targets(layers, top_k=5)


def test_data2vec_target_final_norms():
    layers = _layers(3)
    raw = data2vec_targets(layers, 3, instance_norm=False)
    assert torch.allclose(raw, torch.stack(layers).mean(0))
    inst = data2vec_targets(layers, 3, final_norm="instance")
    assert torch.allclose(inst.mean(1), torch.zeros(2, 8), atol=1e-5)
    ln = data2vec_targets(layers, 3, final_norm="layer")
    assert torch.allclose(ln.mean(-1), torch.zeros(2, 12), atol=1e-5)


def test_data2vec_loss_counts_only_masked_frames():
    layers = _layers(3)
    pred = torch.randn(2, 12, 8, requires_grad=True)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 2:5] = mask[1, 8:] = True
    loss = data2vec_loss(pred, layers, mask, top_k=2)
    target = data2vec_targets(layers, 2)
    assert loss.item() == pytest.approx(((pred - target)[mask] ** 2).mean().item(), rel=1e-6)
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0) and pred.grad[mask].abs().sum() > 0
    smooth = data2vec_loss(pred, layers, mask, top_k=2, loss="smooth_l1", beta=0.5)
    assert smooth.item() == pytest.approx(
        F.smooth_l1_loss(pred[mask], target[mask], beta=0.5).item(), rel=1e-6)


def test_data2vec_loss_with_nothing_masked_is_zero_with_a_graph():
    pred = torch.randn(1, 6, 8, requires_grad=True)
    loss = data2vec_loss(pred, _layers(2, batch=1, frames=6), torch.zeros(1, 6, dtype=torch.bool), 2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(pred.grad == 0)


def test_data2vec_loss_ignores_masked_padding():
    layers = _layers(2)
    pred = torch.randn(2, 12, 8)
    mask = torch.ones(2, 12, dtype=torch.bool)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 6:] = True
    loss = data2vec_loss(pred, layers, mask, 2, padding_mask=padding)
    target = data2vec_targets(layers, 2, padding_mask=padding)
    keep = mask & ~padding
    assert loss.item() == pytest.approx(((pred - target)[keep] ** 2).mean().item(), rel=1e-6)


def test_frame_std_detects_collapse():
    assert frame_std(torch.ones(2, 10, 4)) == 0.0
    assert frame_std(torch.randn(2, 100, 4)) > 0.5
