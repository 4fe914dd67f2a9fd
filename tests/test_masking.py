"""Span masking: coverage against the exact expectation, span lengths, padding, determinism."""

from __future__ import annotations

import pytest
import torch

from train.config import FinetuneConfig, ModelConfig, PretrainConfig
from train.masking import (
    approximate_coverage,
    compute_span_mask,
    expected_coverage,
    mask_statistics,
    masking_regime_stats,
    unreachable_fraction,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("mask_prob", "mask_length"), [(1.6, 2), (0.8, 2), (0.65, 10), (0.15, 2)])
def test_empirical_coverage_matches_the_exact_expectation(mask_prob, mask_length):
    frames = 250  # 5 s at 50 fps
    mask = compute_span_mask(400, frames, mask_prob, mask_length, generator=_gen())
    stats = mask_statistics(mask)
    expected = expected_coverage(frames, mask_prob, mask_length)
    assert stats["coverage"] == pytest.approx(expected, abs=0.005)
    assert expected == pytest.approx(approximate_coverage(mask_prob, mask_length), abs=0.02)


def test_pretraining_default_suits_50_fps_two_second_clips():
    pre, fine = PretrainConfig(), FinetuneConfig()
    frames, reach = 100, ModelConfig.tiny().pos_conv_kernel // 2  # 2 s at 50 fps; reach 7
    assert 0.5 <= expected_coverage(frames, pre.mask_prob, pre.mask_length) <= 0.65
    assert 5 <= pre.mask_length <= 10
    mask = compute_span_mask(2000, frames, pre.mask_prob, pre.mask_length, generator=_gen(3))
    stats = masking_regime_stats(mask, reach)
    assert 0.5 <= stats["coverage"] <= 0.65
    assert stats["unreachable_fraction"] < 0.1  # measured 0.074
    assert stats["visible_per_clip"] > 35
    # The base preset's 65-frame positional conv reaches every masked frame.
    base_reach = ModelConfig.base().pos_conv_kernel // 2
    assert masking_regime_stats(mask, base_reach)["unreachable_fraction"] < 0.001
    # Finetuning masks nothing by default (it stopped the tiny teacher learning, see config);
    # animal2vec's finetuning value, if asked for, masks about 64%.
    assert fine.mask_prob == 0.0
    assert expected_coverage(500, 0.8, fine.mask_length) == pytest.approx(0.64, abs=0.01)


def test_animal2vec_setting_leaves_most_masked_frames_out_of_reach_at_50_fps():
    # Issue 10: (1.6, 2) on 100-frame clips keeps ~3.8 frames visible, and ~64% of the
    # masked frames have no visible frame within the tiny preset's 7-frame reach.
    assert expected_coverage(500, 1.6, 2) == pytest.approx(0.96, abs=0.005)
    mask = compute_span_mask(2000, 100, 1.6, 2, generator=_gen(3))
    stats = masking_regime_stats(mask, 7)
    assert stats["coverage"] == pytest.approx(0.96, abs=0.01)
    assert stats["visible_per_clip"] < 5
    assert stats["unreachable_fraction"] > 0.5


def test_unreachable_fraction_on_a_hand_made_mask():
    # 20 frames, visible at 0 and 19 only: with reach 3, frames 4..15 (12 of 18 masked)
    # have no visible frame within 3 frames.
    mask = torch.ones(1, 20, dtype=torch.bool)
    mask[0, 0] = mask[0, 19] = False
    assert unreachable_fraction(mask, 3) == pytest.approx(12 / 18)
    assert unreachable_fraction(mask, 10) == 0.0
    assert unreachable_fraction(torch.zeros(1, 20, dtype=torch.bool), 3) == 0.0
    # Padding is neither masked nor visible: frames 10..19 padded leaves 1..9 masked,
    # of which 4..9 are more than 3 frames from frame 0.
    padding = torch.arange(20)[None, :] >= 10
    assert unreachable_fraction(mask, 3, padding) == pytest.approx(6 / 9)
    stats = masking_regime_stats(mask, 3, padding)
    assert stats["visible_per_clip"] == 1.0 and stats["coverage"] == pytest.approx(0.9)


@pytest.mark.parametrize("mask_length", [2, 3, 5])
def test_span_length_mode_is_mask_length_at_low_coverage(mask_length):
    mask = compute_span_mask(64, 400, 0.05, mask_length, generator=_gen(1))
    stats = mask_statistics(mask)
    assert stats["span_length_mode"] == mask_length
    assert stats["span_length_mean"] >= mask_length  # merged spans only lengthen runs


def test_number_of_spans_and_min_masks():
    # mask_prob * frames / M = 0.5 spans on average, but at least one span per clip
    mask = compute_span_mask(50, 100, 0.01, 4, min_masks=1, generator=_gen(2))
    assert torch.all(mask.sum(1) >= 4)
    assert not compute_span_mask(8, 100, 0.0, 4, min_masks=0).any()
    # distinct starts: with mask_prob = M every start position is taken -> all masked
    assert compute_span_mask(4, 30, 2.0, 2, generator=_gen()).all()


def test_padding_is_never_masked():
    lengths = torch.tensor([100, 37, 1, 0])
    padding = torch.arange(100)[None, :] >= lengths[:, None]
    mask = compute_span_mask(4, 100, 1.6, 2, padding_mask=padding, generator=_gen(4))
    assert not (mask & padding).any()
    assert mask[1].sum() > 25  # a short clip is still masked at the same rate
    assert mask[2].sum() == 1 and mask[3].sum() == 0
    stats = mask_statistics(mask, padding)
    assert stats["coverage"] == pytest.approx(mask.sum().item() / lengths.sum().item())


def test_seeded_generator_gives_the_same_mask():
    a = compute_span_mask(4, 120, 1.6, 2, generator=_gen(7))
    b = compute_span_mask(4, 120, 1.6, 2, generator=_gen(7))
    c = compute_span_mask(4, 120, 1.6, 2, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_mask_statistics_on_a_hand_made_mask():
    mask = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 0],
                         [0, 1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    stats = mask_statistics(mask)
    assert stats["coverage"] == 9 / 16
    assert stats["n_spans"] == 4
    assert stats["span_length_mode"] == 2
    assert stats["span_length_mean"] == pytest.approx(9 / 4)
    empty = mask_statistics(torch.zeros(2, 5, dtype=torch.bool))
    assert empty["coverage"] == 0.0 and empty["span_length_mode"] == 0.0
