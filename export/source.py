"""What an artifact is made from: a student checkpoint (`student.pt`, log-mel in) or the
teacher (`model.pt`, raw waveform in), loaded into one shape every exporter uses: the module
to export, an audio -> logits model for evaluation, the input to trace, and the base card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edge_runtime.contract.card import Frontend, LabelDecoder, ModelCard, UndetectableLabel
from edge_runtime.contract.errors import UserError

DEFAULT_TEACHER_WINDOW_S = 2.0


def meerkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meerkit")
    except PackageNotFoundError:  # running from a source tree
        return "0+source"


@dataclass
class Source:
    kind: str  # "student" | "teacher"
    path: Path
    exported: nn.Module  # what goes into ONNX/TFLite: logmel or audio (1, ...) -> logits
    audio_model: nn.Module  # audio (batch, samples) -> frame logits, for reference outputs
    card: ModelCard  # quantization "none", no metrics yet
    input_name: str  # "logmel" | "audio"
    input_shape: tuple[int, ...]  # static, batch 1
    record: dict[str, Any]

    @property
    def labels(self) -> list[str]:
        return list(self.card.labels)

    def window_fn(self):
        """Reference PyTorch window function (see export.backends)."""
        from export.backends import torch_student_window_fn, torch_window_fn

        if self.kind == "student":
            return torch_student_window_fn(self.exported, self.card)
        return torch_window_fn(self.audio_model)

    @property
    def fp32_tolerance(self) -> float:
        """Max relative |exported - PyTorch| accepted for an fp32 artifact (ONNX or TFLite).
        Students agree to ~1e-6; the teacher's long float32 chain (351-tap sinc convolution,
        log, LayerNorms, attention) to ~1e-5 in ONNX Runtime and ~3e-4 after onnx2tf
        (measured on a trained tiny teacher, correlation 1.0000)."""
        return 1e-4 if self.kind == "student" else 1e-3

    def example_input(self) -> torch.Tensor:
        return torch.randn(self.input_shape) * (1.0 if self.kind == "student" else 0.1)


def load_source(path: str | Path, window_s: float | None = None,
                hop_s: float | None = None) -> Source:
    """A student or teacher checkpoint -> Source. window_s/hop_s override the deployment
    geometry (students store theirs; the teacher defaults to 2 s windows, 1 s hop)."""
    from export.student import AudioStudent, LogMel, is_student_record, student_from_record
    from train.checkpoint import FORMAT as TEACHER_FORMAT
    from train.checkpoint import load_model, weights_sha256
    from train.engine import load_checkpoint

    path = Path(path)
    record = load_checkpoint(path)
    if is_student_record(record):
        model, spec = student_from_record(record, path)
        if window_s is not None or hop_s is not None:
            raise UserError(f"{path}: a student's window is fixed at distillation "
                            f"({spec.window_s:g} s, hop {spec.hop_s:g} s); drop --window-s/--hop-s")
        lineage = {**record.get("lineage", {}), "checkpoint": str(path.resolve()),
                   "arch": spec.arch, "parameters": model.num_parameters()}
        card = ModelCard(
            name=f"meerkit-student-{spec.arch}", version=meerkit_version(),
            sha256=weights_sha256(model), sample_rate=spec.sample_rate, window_s=spec.window_s,
            hop_s=spec.hop_s, frame_rate_hz=spec.frame_rate_hz, labels=spec.labels,
            thresholds=spec.thresholds, frontend=spec.frontend, output="logits",
            decoder=spec.decoder, undetectable_labels=spec.undetectable_labels,
            lineage=lineage)
        audio_model = AudioStudent(LogMel(spec.frontend, spec.sample_rate), model).eval()
        shape = (1, spec.frames_per_window, spec.frontend.n_mels)
        return Source("student", path, model, audio_model, card, "logmel", shape, record)

    if not isinstance(record, dict) or record.get("format") != TEACHER_FORMAT:
        raise UserError(f"{path}: neither a student (`meerkit export distill`) nor a teacher "
                        "model.pt (`meerkit train finetune`)")
    model, record = load_model(path)
    if model.classifier is None:
        raise UserError(f"{path}: a pretrained model has no classifier; finetune it first")
    window_s = window_s or DEFAULT_TEACHER_WINDOW_S
    hop_s = hop_s or window_s / 2
    sr, fr = model.config.sample_rate, model.config.frame_rate_hz
    stride = model.config.total_stride
    for name, seconds in (("window", window_s), ("hop", hop_s)):
        if round(seconds * sr) % stride:
            raise UserError(f"teacher {name} of {seconds:g} s is not a whole number of frames "
                            f"({stride / sr * 1000:g} ms each)")
    exported = model.export_module().eval()
    labels = tuple(record["labels"])
    extra = record.get("extra", {})
    thresholds = tuple(float(t) for t in extra.get("thresholds", [0.5] * len(labels)))
    search = extra.get("decoder_search") or {}  # tuned on val by finetuning (newer models)
    decoder = tuple(LabelDecoder(**d) for d in search.get("decoders", []))
    undetectable = tuple(UndetectableLabel(**u) for u in search.get("undetectable", []))
    card = ModelCard(
        name="meerkit-animal2vec", version=meerkit_version(), sha256=weights_sha256(model),
        sample_rate=sr, window_s=window_s, hop_s=hop_s, frame_rate_hz=fr, labels=labels,
        thresholds=thresholds, frontend=Frontend(kind="waveform"), output="logits",
        decoder=decoder, undetectable_labels=undetectable,
        lineage={"checkpoint": str(path.resolve()), "stage": record.get("stage"),
                 "parameters": sum(p.numel() for p in exported.parameters())})
    return Source("teacher", path, exported, exported, card, "audio",
                  (1, round(window_s * sr)), record)
