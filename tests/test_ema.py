"""EMA teacher: the decay schedule, how far it lets the teacher move, copied keys, distance."""

from __future__ import annotations

import math

import pytest
import torch

from train.config import ModelConfig, PretrainConfig
from train.ema import COPY_PREFIXES, EMATeacher, ema_decay_schedule, summed_update_weight
from train.model.transformer import ContextTransformer


def _context(seed: int = 0) -> ContextTransformer:
    torch.manual_seed(seed)
    c = ModelConfig.tiny()
    return ContextTransformer(c.dim, c.depth, c.heads, pos_conv_kernel=c.pos_conv_kernel,
                              pos_conv_groups=c.pos_conv_groups)


def _schedule(config: PretrainConfig, step: int) -> float:
    return ema_decay_schedule(step, config.ema_decay, config.ema_end_decay, config.ema_anneal(),
                              config.ema_schedule)


def test_default_schedule_anneals_over_30_percent_and_never_reaches_one():
    config = PretrainConfig(steps=1500)
    assert config.ema_anneal() == 450  # ema_anneal_frac of the run
    assert _schedule(config, 0) == 0.999
    assert _schedule(config, 225) == pytest.approx(0.99945)
    assert _schedule(config, 450) == _schedule(config, 1500) == 0.9999
    assert max(_schedule(config, s) for s in range(1501)) < 1.0
    # An explicit number of steps wins over the fraction; 0 means "use the fraction".
    assert PretrainConfig(steps=1500, ema_anneal_steps=100).ema_anneal() == 100
    assert PretrainConfig(steps=1500, ema_anneal_steps=0).ema_anneal() == 450
    assert PretrainConfig(steps=1500, ema_anneal_frac=1.0).ema_anneal() == 1500


def test_summed_update_weight_old_schedule_froze_the_teacher_new_one_moves_it():
    # Issue 10: 0.999 -> 1.0 over the whole 1,500-step run summed to ~0.75 time constants.
    assert summed_update_weight(1500, 0.999, 1.0, 1500) == pytest.approx(0.75, abs=0.01)
    # The defaults over the default run length: well above 1 (data2vec audio sums to ~54).
    config = PretrainConfig()
    assert summed_update_weight(config.steps, config.ema_decay, config.ema_end_decay,
                                config.ema_anneal()) > 10
    assert summed_update_weight(400_000, 0.999, 0.9999, 30_000) == pytest.approx(53.5, abs=0.1)
    # The short-run recipe (the tiny CLI schedule, the CPU benchmark) over 1,500 steps.
    short = PretrainConfig(steps=1500, ema_decay=0.99, ema_end_decay=0.995)
    assert summed_update_weight(1500, short.ema_decay, short.ema_end_decay,
                                short.ema_anneal()) > 5


def test_animal2vec_schedule_stays_reachable():
    config = PretrainConfig.from_dict({"ema_decay": 0.9997, "ema_end_decay": 1.0,
                                       "ema_anneal_steps": 300_000, "steps": 384_000})
    assert _schedule(config, 300_000) == 1.0
    assert _schedule(config, 150_000) == pytest.approx(0.99985)


def test_cosine_schedule():
    assert ema_decay_schedule(250, 0.9, 1.0, 1000, "cosine") == pytest.approx(
        0.9 + 0.1 * 0.5 * (1 - math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="linear or cosine"):
        ema_decay_schedule(1, 0.9, 1.0, 10, "step")


def test_positional_conv_is_copied_the_rest_averaged():
    student = _context()
    teacher = EMATeacher(student, copy_prefixes=COPY_PREFIXES)
    before = {k: v.clone() for k, v in teacher.module.named_parameters()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, decay=0.9)
    names = dict(student.named_parameters())
    for name, t in teacher.module.named_parameters():
        if name.startswith("pos_embedding."):
            assert torch.equal(t, names[name])
        else:
            assert torch.allclose(t, 0.9 * before[name] + 0.1 * names[name], atol=1e-6)
    # decay 1 freezes the averaged part only; the copied conv still follows the student
    with torch.no_grad():
        student.pos_embedding.conv.weight.mul_(2.0)
        student.blocks[0].ffn[0].weight.mul_(2.0)
    frozen = teacher.module.blocks[0].ffn[0].weight.clone()
    teacher.update(student, decay=1.0)
    assert torch.equal(teacher.module.pos_embedding.conv.weight, student.pos_embedding.conv.weight)
    assert torch.equal(teacher.module.blocks[0].ffn[0].weight, frozen)


def test_distance_is_the_l2_norm_over_the_averaged_parameters():
    student = _context()
    teacher = EMATeacher(student, copy_prefixes=COPY_PREFIXES)
    assert teacher.distance(student) == 0.0
    with torch.no_grad():
        student.pos_embedding.conv.weight.add_(5.0)  # copied: not part of the distance
        student.blocks[1].attn.proj.bias.add_(0.5)  # 64 entries, each 0.5 away
    assert teacher.distance(student) == pytest.approx(math.sqrt(64 * 0.25), rel=1e-6)
    teacher.update(student, decay=0.0)
    assert teacher.distance(student) == pytest.approx(0.0, abs=1e-6)
