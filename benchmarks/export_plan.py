"""Where every run of `export_table.py` lives (folders named by their settings) and the shell
command that rebuilds it. Nothing here trains, so tests check the names and commands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.export_claims import MODELS, SPLITS


@dataclass(frozen=True)
class Plan:
    """Where every run lives (folders named by their settings) and the command behind it."""

    work: Path
    preset: str
    arch: str
    teacher_steps: int
    distill_steps: int
    clip_s: float
    batch_size: int
    teacher_model: str = "tiny"  # train/config.py model preset
    student_hop_length: int = 0  # the students' log-mel hop in samples; 0: 20 ms (50 fps)
    kd_loss: str = "bce"  # the distilled student's teacher term (export/distill.py)

    @property
    def kd_temperature(self) -> float:
        """2 for Hinton-style BCE; 1 for focal pseudo-labels, which should carry the
        teacher's own confidence, not a softened copy of it."""
        return 1.0 if self.kd_loss == "focal" else 2.0

    @property
    def data(self) -> Path:
        return self.work / f"synth_{self.preset}"

    def _teacher_root(self, seed: int | str) -> Path:
        model = "" if self.teacher_model == "tiny" else f"_{self.teacher_model}"  # older runs
        return self.work / f"{self.preset}_teacher{model}_t{self.teacher_steps}" / f"seed{seed}"

    @property
    def _student_name(self) -> str:
        """`tcn_small_d1500`; a non-default front-end hop adds `_h160` (older runs keep
        their names)."""
        hop = f"_h{self.student_hop_length}" if self.student_hop_length else ""
        return f"{self.arch}_d{self.distill_steps}{hop}"

    @property
    def _hop_flag(self) -> str:
        return f" --hop-length {self.student_hop_length}" if self.student_hop_length else ""

    @property
    def _kd_suffix(self) -> str:
        """`_kfocal` for a non-default teacher term: the distilled student's folder only (the
        label-only baseline has no teacher term)."""
        return "" if self.kd_loss == "bce" else f"_k{self.kd_loss}"

    @property
    def _kd_flags(self) -> str:
        return ("" if self.kd_loss == "bce" else
                f" --kd-loss {self.kd_loss} --temperature {self.kd_temperature:g}")

    def path(self, model: str, seed: int | str) -> Path:
        student = self._teacher_root(seed) / f"{self._student_name}{self._kd_suffix}"
        return {"teacher": self._teacher_root(seed) / "teacher" / "model.pt",
                "student_fp32": student / "student.pt",
                "student_int8": student / "student_int8.tflite",
                "baseline": self.work / f"{self.preset}_labels_only_{self._student_name}"
                                      / f"seed{seed}" / "baseline.pt",
                }[model]

    def tracks(self, model: str, seed: int, split: str) -> Path:
        p = self.path(model, seed)
        return p.with_name(f"{p.stem}_tracks_{split}.npz")

    def commands(self, seeds: Sequence[int]) -> dict[str, str]:
        """Shell commands that rebuild each run (`$s`: the seed) and score them per split."""
        loop = f"for s in {' '.join(str(s) for s in seeds)}; do "
        p = {m: self.path(m, "$s") for m in MODELS}
        return {
            "data": f"meerkit synth {self.data} --preset {self.preset} --seed 0",
            "teacher": f"{loop}meerkit train finetune --data {self.data} --out "
                       f"{p['teacher'].parent} --preset {self.teacher_model} --splits train --steps "
                       f"{self.teacher_steps} --batch-size {self.batch_size} --lr 0.001 --amp "
                       f"fp32 --clip-s {self.clip_s:g} --seed $s --device cpu --set "
                       f"warmup_steps={self.teacher_steps // 10} --set freeze_encoder_steps=0;"
                       " done",
            "student_fp32": f"{loop}meerkit export distill --teacher {p['teacher']} --data "
                            f"{self.data} --out {p['student_fp32']} --arch {self.arch} --steps "
                            f"{self.distill_steps}{self._hop_flag}{self._kd_flags} --seed $s --cache "
                            f"{self.work}/teacher_cache; done",
            "student_int8": f"{loop}meerkit export quantize --checkpoint {p['student_fp32']} "
                            f"--calibration {self.data} --out {p['student_int8']} --force; done",
            "baseline": f"{loop}meerkit export distill --labels-only --data {self.data} --out "
                        f"{p['baseline']} --arch {self.arch} --steps {self.distill_steps}"
                        f"{self._hop_flag} --seed $s; done",
            "verify": f"{loop}for split in {' '.join(SPLITS)}; do meerkit export verify "
                      f"{p['student_int8']} --data {self.data} --split $split --checkpoint "
                      f"{p['student_fp32']} --teacher {p['teacher']} --baseline {p['baseline']} "
                      "--no-onnx --no-write-card; done; done",
        }
