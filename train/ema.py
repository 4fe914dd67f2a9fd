"""EMA teacher for data2vec: a frozen copy whose weights trail the student's,
teacher = decay * teacher + (1 - decay) * student, with decay annealed towards 1.

Only the context network (positional conv + transformer) is EMA'd, as in data2vec audio
and animal2vec (`ema_transformer_only` / `ema_local_encoder: false`): the teacher reads the
student's own unmasked conv features, so the heads are never copied and the front end runs
once per step. The teacher is a plain object, not a submodule, so it is never handed to the
optimizer or DDP; `state_dict` / `load_state_dict` make resume exact.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


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


class EMATeacher:
    """Frozen deep copy of `student`, updated in place with `update(student, decay)`."""

    def __init__(self, student: nn.Module):
        self.module = copy.deepcopy(student).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        if decay >= 1.0:  # annealed to the end: the teacher is frozen
            return
        for t, s in zip(self.module.parameters(), student.parameters(), strict=True):
            t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            t.copy_(s)

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
