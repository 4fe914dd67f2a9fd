"""EMA teacher for data2vec: a frozen copy whose weights trail the student's,
teacher = decay * teacher + (1 - decay) * student, with decay annealed from `start` to `end`.

Only the context network (positional conv + transformer) is EMA'd, as in data2vec audio
and animal2vec (`ema_transformer_only` / `ema_local_encoder: false`): the teacher reads the
student's own unmasked conv features, so the heads are never copied and the front end runs
once per step. Within it, the positional conv is *copied* from the student every step
(data2vec's `ema_skip_keys`): it encodes where a frame sits relative to the student's current
features, and an averaged, lagging copy of it would not match them.
The teacher is a plain object, not a submodule, so it is never handed to the optimizer or
DDP; `state_dict` / `load_state_dict` make resume exact.

How far the teacher can follow is set by the summed update weight sum_t (1 - decay_t): the
number of "time constants" it moves through. data2vec audio (0.999 -> 0.9999 over 30k of
400k steps) sums to ~54, animal2vec (0.9997 -> 1 over 300k of 384k) to ~45. The old default
here (0.999 -> 1.0 over the whole run) summed to 0.75 over 1,500 steps: the teacher stayed
near its random init while the student moved 10x further. `summed_update_weight` computes
it for a config, and pretraining warns when it is small.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# Parameters copied from the student instead of averaged (names inside the context network).
COPY_PREFIXES = ("pos_embedding.",)


def ema_decay_schedule(step: int, start: float, end: float, anneal_steps: int,
                       kind: str = "linear") -> float:
    """Decay at `step`: from `start` to `end` over `anneal_steps` (linear or cosine), then `end`."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return end
    progress = max(step, 0) / anneal_steps
    if kind == "cosine":
        progress = 0.5 * (1 - math.cos(math.pi * progress))
    elif kind != "linear":
        raise ValueError(f"unknown EMA schedule {kind!r}: use linear or cosine")
    return start + (end - start) * progress


def summed_update_weight(steps: int, start: float, end: float, anneal_steps: int,
                         kind: str = "linear") -> float:
    """sum over the run of (1 - decay): how many EMA time constants the teacher moves through.

    Well above 1: the teacher tracks the student with a lag. Below ~1: it barely leaves its
    initial weights. The engine calls the schedule with steps 1..`steps` (after each step).
    """
    return sum(1.0 - ema_decay_schedule(s, start, end, anneal_steps, kind)
               for s in range(1, steps + 1))


class EMATeacher:
    """Frozen deep copy of `student`, updated in place with `update(student, decay)`.

    Parameters whose names start with one of `copy_prefixes` are copied, not averaged.
    """

    def __init__(self, student: nn.Module, copy_prefixes: Iterable[str] = ()):
        self.module = copy.deepcopy(student).requires_grad_(False).eval()
        self.copy_prefixes = tuple(copy_prefixes)

    def _copied(self, name: str) -> bool:
        return name.startswith(self.copy_prefixes) if self.copy_prefixes else False

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        pairs = zip(self.module.named_parameters(), student.parameters(), strict=True)
        for (name, t), s in pairs:
            if self._copied(name):
                t.copy_(s.detach())
            elif decay < 1.0:  # decay 1: the averaged part is frozen
                t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    @torch.no_grad()
    def distance(self, student: nn.Module) -> float:
        """L2 distance between teacher and student over the EMA'd (not copied) parameters."""
        squares = [(t.float() - s.detach().float()).square().sum()
                   for (name, t), s in zip(self.module.named_parameters(), student.parameters(),
                                           strict=True)
                   if not self._copied(name)]
        return math.sqrt(torch.stack(squares).sum().item()) if squares else 0.0

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Eval mode on every call: no dropout or layerdrop in the targets.
        return self.module.eval()(*args, **kwargs)

    def to(self, device: torch.device | str) -> EMATeacher:
        self.module.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
