"""Where every run of `export_table.py` lives (folders named by their settings) and the shell
command that rebuilds it. Nothing here trains, so tests check the names and commands."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.export_claims import MODELS, SPLITS

# An ensemble member that is no teacher preset but the table's own label-only student
# (`small+baseline`): trained before the distilled student, which it then co-teaches.
LABEL_ONLY_MEMBER = "baseline"


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
    teacher_model: str = "tiny"  # train/config.py model preset; `a+b`: the ensemble of both
    student_hop_length: int = 0  # the students' log-mel hop in samples; 0: 20 ms (50 fps)
    kd_loss: str = "bce"  # the distilled student's teacher term (export/distill.py)
    # > 0: a warm start. The distilled student starts from the seed's label-only student and
    # the teacher teaches it for this many steps at `warm_lr`; the label-only student
    # continued the same way without a teacher ("baseline_continued") is the compute-matched
    # control (both have seen distill_steps + warm_steps steps).
    warm_steps: int = 0
    warm_lr: float = 1e-3

    @property
    def models(self) -> tuple[str, ...]:
        """The table's models: MODELS, and the compute-matched control of a warm start."""
        return MODELS + (("baseline_continued",) if self.warm_steps else ())

    @property
    def kd_temperature(self) -> float:
        """2 for Hinton-style BCE; 1 for focal pseudo-labels, which should carry the
        teacher's own confidence, not a softened copy of it."""
        return 1.0 if self.kd_loss == "focal" else 2.0

    @property
    def data(self) -> Path:
        return self.work / f"synth_{self.preset}"

    @property
    def members(self) -> list[Plan]:
        """The plans of an ensemble's teachers (`small+small100`: each trained, and found on
        disk, exactly as a single-teacher table trains it); [self] for one teacher."""
        names = self.teacher_model.split("+")
        return [self] if len(names) == 1 else [replace(self, teacher_model=n) for n in names]

    @property
    def trained_members(self) -> list[Plan]:
        """The members that are finetuned teachers (all but the label-only student)."""
        return [m for m in self.members if m.teacher_model != LABEL_ONLY_MEMBER]

    def member_model(self, member: Plan) -> str:
        """Which of the table's models a member is: "teacher", or "baseline" for the
        label-only student."""
        return "baseline" if member.teacher_model == LABEL_ONLY_MEMBER else "teacher"

    def teachers(self, seed: int | str) -> list[Path]:
        """The checkpoint of every teacher the student learns from (one, or an ensemble's,
        which may include the label-only student)."""
        return [m.path(self.member_model(m), seed) for m in self.members]

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
    def _warm_suffix(self) -> str:
        return f"_w{self.warm_steps}" if self.warm_steps else ""

    @property
    def _warm_flags(self) -> str:
        """A warm start's flags (`{init}`: the checkpoint) in place of `--steps`."""
        return (f" --init {{init}} --steps {self.warm_steps} --lr {self.warm_lr:g}"
                if self.warm_steps else "")

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
        student = (self._teacher_root(seed)
                   / f"{self._student_name}{self._kd_suffix}{self._warm_suffix}")
        labels_only = self.work / f"{self.preset}_labels_only_{self._student_name}" / f"seed{seed}"
        # An ensemble's "teacher" is no file: only its tracks (the members' averaged) sit there.
        return {"teacher": self._teacher_root(seed) / "teacher" / "model.pt",
                "student_fp32": student / "student.pt",
                "student_int8": student / "student_int8.tflite",
                "baseline": labels_only / "baseline.pt",
                "baseline_continued": labels_only / f"baseline{self._warm_suffix or '_w0'}.pt",
                }[model]

    def tracks(self, model: str, seed: int, split: str) -> Path:
        p = self.path(model, seed)
        return p.with_name(f"{p.stem}_tracks_{split}.npz")

    def commands(self, seeds: Sequence[int]) -> dict[str, str]:
        """Shell commands that rebuild each run (`$s`: the seed) and score them per split; an
        ensemble's student is taught by all its teachers (`--teacher A --teacher B`), and its
        verify's `--teacher` is the first (the table's ensemble row averages the members'
        tracks, "teacher_ensemble")."""
        loop = f"for s in {' '.join(str(s) for s in seeds)}; do "
        p = {m: self.path(m, "$s") for m in self.models}
        warm = self._warm_flags.format(init=p["baseline"]) or f" --steps {self.distill_steps}"
        teachers = self.teachers("$s")
        cmds = {
            "data": f"meerkit synth {self.data} --preset {self.preset} --seed 0",
            "teacher": " ; ".join(
                f"{loop}meerkit train finetune --data {self.data} --out {t.parent} --preset "
                f"{m.teacher_model} --splits train --steps {self.teacher_steps} --batch-size "
                f"{self.batch_size} --lr 0.001 --amp fp32 --clip-s {self.clip_s:g} --seed $s "
                f"--device cpu --set warmup_steps={self.teacher_steps // 10} --set "
                "freeze_encoder_steps=0; done"
                for m in self.trained_members for t in [m.path("teacher", "$s")]),
            "student_fp32": f"{loop}meerkit export distill "
                            f"{' '.join(f'--teacher {t}' for t in teachers)} --data "
                            f"{self.data} --out {p['student_fp32']} --arch {self.arch}"
                            f"{warm}{self._hop_flag}{self._kd_flags} --seed $s "
                            f"--cache {self.work}/teacher_cache; done",
            "student_int8": f"{loop}meerkit export quantize --checkpoint {p['student_fp32']} "
                            f"--calibration {self.data} --out {p['student_int8']} --force; done",
            "baseline": f"{loop}meerkit export distill --labels-only --data {self.data} --out "
                        f"{p['baseline']} --arch {self.arch} --steps {self.distill_steps}"
                        f"{self._hop_flag} --seed $s; done",
            **({"baseline_continued": f"{loop}meerkit export distill --labels-only --data "
                f"{self.data} --out {p['baseline_continued']} --arch {self.arch}"
                f"{warm}{self._hop_flag} --seed $s; done"}
               if self.warm_steps else {}),
            "verify": f"{loop}for split in {' '.join(SPLITS)}; do meerkit export verify "
                      f"{p['student_int8']} --data {self.data} --split $split --checkpoint "
                      f"{p['student_fp32']} --teacher {teachers[0]} --baseline {p['baseline']} "
                      "--no-onnx --no-write-card; done; done",
        }
        if len(teachers) > 1:
            cmds["teacher_ensemble"] = (
                "the members' teacher tracks as meerkit export verify makes them (whole "
                "files, each at its own frame rate), resampled to the finest rate and averaged "
                "in probability; its decoder tuned on `val` for event F1 "
                "(export/decoder_search.py)")
        return cmds
