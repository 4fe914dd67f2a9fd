"""Where every run of `train_table.py` lives (folders named by their settings), its config,
and the shell command that rebuilds it. Nothing here trains, so tests check the commands."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.train_claims import HEADS, PRETRAINED_CANDIDATES

SEED = "$s"  # the loop variable of the printed commands
_SEED_TOKEN = "SEEDTOKEN"


def _shell(argv: Sequence[str]) -> str:
    """shlex.join, but `$s` stays unquoted so that the shell expands it (single quotes
    would not); the paths this script makes need no other quoting."""
    return shlex.join([a.replace(SEED, _SEED_TOKEN) for a in argv]).replace(_SEED_TOKEN, SEED)


def selection(budget: str) -> str:
    return budget if budget == "train" else f"subset:{budget}"


@dataclass(frozen=True)
class Plan:
    """Where every run lives (folders named by their settings), its config, and the command
    that rebuilds it."""

    work: Path
    preset: str
    clip_s: float
    batch_size: int
    pretrain_steps: int
    finetune_steps: int
    distill_steps: int
    arch: str = "tcn_small"
    model: str = "tiny"  # the teacher's train/config.py model preset
    whine_pulse_s: float = 0.0  # synth: the imprint's whine pulsed (SynthConfig.whine_pulse_s)

    @property
    def _synth(self) -> str:
        """The data's name: the preset, and `_pulse0.5` for a pulsed imprint."""
        return self.preset + (f"_pulse{self.whine_pulse_s:g}" if self.whine_pulse_s else "")

    @property
    def data(self) -> Path:
        return self.work / f"synth_{self._synth}"

    def synth_config(self):
        from train.data.synth import SynthConfig

        pulse = {"whine_pulse_s": self.whine_pulse_s} if self.whine_pulse_s else {}
        return SynthConfig.preset(self.preset, **pulse)

    def synth_command(self) -> str:
        pulse = ["--whine-pulse-s", f"{self.whine_pulse_s:g}"] if self.whine_pulse_s else []
        return _shell(["meerkit", "synth", str(self.data), "--preset", self.preset, "--seed",
                       "0", *pulse])

    @property
    def _runs(self) -> str:
        """Folder prefix of the teacher-side runs; `tiny` keeps the names of older runs."""
        return self._synth if self.model == "tiny" else f"{self._synth}_{self.model}"

    def model_config(self):
        from train.config import model_preset

        return model_preset(self.model)

    # -- paths
    def _pre_root(self, seed: int | str) -> Path:
        return self.work / f"{self._runs}_pre{self.pretrain_steps}" / f"seed{seed}"

    def pretrained(self, seed: int | str) -> Path:
        return self._pre_root(seed) / "pretrain" / "model.pt"

    def probe(self, kind: str, seed: int | str) -> Path:
        return self._pre_root(seed) / f"probe_{kind}.npz"

    def teacher(self, budget: str, seed: int | str, recipe: str | None = None,
                heads: str = "none", frac: float = 0.0) -> Path:
        """A finetuned teacher: from scratch (recipe None) or from pretraining with `recipe`."""
        if recipe is None:
            run = f"{budget}_{heads}" + (f"_missing{frac:g}" if frac else "")
            root = self.work / f"{self._runs}_ft{self.finetune_steps}" / run
        else:
            root = (self.work / f"{self._runs}_pre{self.pretrain_steps}_ft"
                    f"{self.finetune_steps}" / f"{budget}_{recipe}")
        return root / f"seed{seed}" / "model.pt"

    def student(self, budget: str, seed: int | str) -> Path:
        return (self.work / f"{self._synth}_labels_only_{self.arch}_d{self.distill_steps}" /
                budget / f"seed{seed}" / "student.pt")

    @staticmethod
    def tracks(model: Path, split: str) -> Path:
        return model.with_name(f"{model.stem}_tracks_{split}.npz")

    # -- configs
    def pretrain_config(self):
        from train.config import PretrainConfig

        return PretrainConfig(steps=self.pretrain_steps,
                              warmup_steps=max(1, self.pretrain_steps // 10),
                              batch_size=self.batch_size, lr=1e-3, amp="fp32", ema_decay=0.99,
                              ema_end_decay=0.995)

    def finetune_config(self, recipe: str | None = None, heads: str = "none",
                        frac: float = 0.0):
        from train.cli import metadata_heads
        from train.config import FinetuneConfig

        common = dict(steps=self.finetune_steps, warmup_steps=max(1, self.finetune_steps // 10),
                      batch_size=self.batch_size, lr=1e-3, amp="fp32",
                      metadata_heads=metadata_heads(list(HEADS[heads])),
                      metadata_missing_frac=frac)
        if recipe is None:
            return FinetuneConfig(**common, freeze_encoder_steps=0)
        return FinetuneConfig.from_pretrained(**common,
                                              **PRETRAINED_CANDIDATES[recipe])

    def distill_config(self, budget: str, seed: int):
        from export.distill import DistillConfig

        return DistillConfig(arch=self.arch, steps=self.distill_steps, seed=seed,
                             labelled_splits=(selection(budget),))

    # -- commands (one run; `seed` may be SEED, "$s")
    def _train_flags(self, steps: int, seed: int | str) -> list[str]:
        return ["--preset", self.model, "--steps", str(steps), "--batch-size", str(self.batch_size),
                "--lr", "0.001", "--amp", "fp32", "--clip-s", f"{self.clip_s:g}", "--seed",
                str(seed), "--device", "cpu", "--set", f"warmup_steps={max(1, steps // 10)}"]

    def pretrain_command(self, seed: int | str) -> str:
        return _shell(["meerkit", "train", "pretrain", "--data", str(self.data), "--out",
                           str(self.pretrained(seed).parent), "--splits", "pretrain,train",
                           *self._train_flags(self.pretrain_steps, seed),
                           "--set", "ema_decay=0.99", "--set", "ema_end_decay=0.995"])

    def probe_command(self, kind: str, seed: int | str) -> str:
        source = (["--model", str(self.pretrained(seed))] if kind == "pretrained"
                  else ["--random-init", "--preset", self.model])
        return _shell(["meerkit", "train", "probe", "--data", str(self.data), *source,
                           "--splits", "train", "--eval-splits", "test", "--clip-s",
                           f"{self.clip_s:g}", "--seed", str(seed), "--device", "cpu",
                           "--out", str(self.probe(kind, seed).with_suffix(".json"))])

    def finetune_command(self, budget: str, seed: int | str, recipe: str | None = None,
                         heads: str = "none", frac: float = 0.0) -> str:

        argv = ["meerkit", "train", "finetune", "--data", str(self.data), "--out",
                str(self.teacher(budget, seed, recipe, heads, frac).parent), "--splits",
                selection(budget), *self._train_flags(self.finetune_steps, seed)]
        if recipe is None:
            argv += ["--set", "freeze_encoder_steps=0"]
        else:
            argv += ["--init", str(self.pretrained(seed))]
            for key, value in PRETRAINED_CANDIDATES[recipe].items():
                argv += ["--set", f"{key}={json.dumps(value)}"]
        for spec in HEADS[heads]:
            argv += ["--meta", spec]
        if frac:
            argv += ["--set", f"metadata_missing_frac={frac:g}"]
        return _shell(argv)

    def distill_command(self, budget: str, seed: int | str) -> str:
        return _shell(["meerkit", "export", "distill", "--labels-only", "--data",
                           str(self.data), "--out", str(self.student(budget, seed)), "--arch",
                           self.arch, "--steps", str(self.distill_steps), "--seed", str(seed),
                           "--labelled", selection(budget)])


def seed_loop(seeds: Sequence[int], command: str) -> str:
    return f"for s in {' '.join(map(str, seeds))}; do {command}; done"
