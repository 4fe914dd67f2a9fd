"""Student models for the edge: a log-mel front end (float, torch mirror of
`edge_runtime.contract.frontend`) and a small convolutional backbone that quantizes cleanly to int8.

The backbone uses only what survives full-integer quantization (notes/export-toolchain.md):
1x1 and depthwise temporal convolutions with BatchNorm (folded at export), ReLU, residual
adds and dilation; no LayerNorm/GroupNorm, division, recurrence or dynamic shapes.

    features = LogMel(frontend, sample_rate)(audio)   # (batch, frames, n_mels), normalised
    logits = Student(config, n_mels, n_classes)(features)   # (batch, frames, classes)

The student checkpoint (`student.pt`) is loadable with `torch.load(weights_only=True)`:
architecture, front end, window geometry, labels, thresholds and per-label decoder settings
chosen on val (with the labels found undetectable), teacher lineage.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edge_runtime.contract.card import Frontend, LabelDecoder, UndetectableLabel
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.frontend import analysis_window, check_frontend, mel_filterbank, padding
from edge_runtime.contract.settings import from_mapping
from train.model.heads import init_prior_bias

FORMAT = "meerkit-student"
VERSION = 1


# ---------------------------------------------------------------- configs
ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6}
CONTEXTS = ("none", "gate", "add")  # the pooled global-context branch of a block (Context)


@dataclass(frozen=True)
class StudentConfig:
    """Backbone shape: a 1x1 stem, then residual blocks of depthwise (dilated) temporal conv
    -> 1x1 conv, each followed by BatchNorm, optionally with a global-context branch (the
    window's mean, see `Context`); a 1x1 classifier per frame. Fields added later have
    defaults that rebuild what older checkpoints saved."""

    channels: int = 64
    kernel: int = 3  # odd: symmetric (non-causal) context, frames stay aligned
    dilations: tuple[int, ...] = (1, 2, 4, 8)
    expansion: int = 1  # hidden width of a block's 1x1 = channels * expansion
    activation: str = "relu"  # "relu6" bounds activations: finer int8 steps, fewer outliers
    context: str = "none"  # per block: "gate" (squeeze-excite) or "add" the window's summary
    context_reduction: int = 4  # hidden width of the context branch = channels // reduction
    # Also feed each band minus its mean over the window: a steady whine, hum or the
    # recorder's EQ cancels there, while a call (on ~5 % of frames) stands out. Int8 runs it
    # as MEAN + SUB + CONCATENATION.
    band_contrast: bool = False

    def __post_init__(self) -> None:
        if self.kernel % 2 != 1 or self.channels <= 0 or self.expansion <= 0:
            raise UserError(f"student: kernel must be odd and channels/expansion > 0 ({self})")
        if self.context not in CONTEXTS:
            raise UserError(f"student: context {self.context!r} is not one of "
                            f"{', '.join(CONTEXTS)}")
        if not 0 < self.context_reduction <= self.channels:
            raise UserError(f"student: context_reduction must be in 1..channels, got "
                            f"{self.context_reduction}")
        if self.activation not in ACTIVATIONS:
            raise UserError(f"student: activation {self.activation!r} is not one of "
                            f"{', '.join(ACTIVATIONS)}")
        if not self.dilations or any(d <= 0 for d in self.dilations):
            raise UserError(f"student: dilations must be positive, got {self.dilations}")

    # Presets: few, wide blocks with kernel 5 and ReLU6. Every quantized tensor adds int8
    # noise, so depth costs agreement; ReLU6 bounds activations, which gives finer int8 steps
    # (measured on synth: logit correlation int8 vs fp32 0.998 vs 0.991 for six ReLU blocks).
    # Half the receptive field stays within the 25 frames a 2 s / 1 s window keeps on each
    # side, so the stitched track never depends on where a window was cut.
    @classmethod
    def pico(cls) -> StudentConfig:
        """~62k parameters (64 mels, 6 classes); receptive field 29 frames (0.58 s at 50 fps)."""
        return cls(channels=128, kernel=5, dilations=(1, 2, 4), activation="relu6")

    @classmethod
    def small(cls) -> StudentConfig:
        """~0.64M parameters; receptive field 49 frames (0.98 s at 50 fps)."""
        return cls(channels=160, kernel=5, expansion=2, dilations=(1, 2, 4, 1, 2, 2),
                   activation="relu6")

    # Temporal-context presets: dilations doubling to 16 give each frame's convolutions a
    # receptive field of 125 frames (2.5 s at 50 fps: all of a 2 s window from any frame), and
    # a squeeze-excite gate in every block rescales channels by a summary of the whole window
    # (mean over frames -> 1x1 -> ReLU -> 1x1 -> sigmoid). Unlike pico/small, a frame's output
    # then depends on the whole window, so where a window is cut matters a little: train on
    # the deployment window. Every op (depthwise/1x1 conv, folded BN, ReLU6, MEAN, LOGISTIC,
    # MUL, ADD) has an int8 TFLite kernel.
    @classmethod
    def tcn(cls) -> StudentConfig:
        """~0.49M parameters (64 mels, 6 classes; 0.62 MB as int8 TFLite); receptive field
        125 frames plus the whole window through the context gates."""
        return cls(channels=144, kernel=5, expansion=2, dilations=(1, 2, 4, 8, 16),
                   activation="relu6", context="gate", band_contrast=True)

    @classmethod
    def tcn_small(cls) -> StudentConfig:
        """~0.15M parameters: the `tcn` layout at 128 channels without expansion. Band contrast
        measured on synth demo, labels only, 600 steps, one seed: val macro AP 0.591 with it
        vs 0.484 without."""
        return cls(channels=128, kernel=5, expansion=1, dilations=(1, 2, 4, 8, 16),
                   activation="relu6", context="gate", band_contrast=True)

    @property
    def receptive_field_frames(self) -> int:
        return 1 + (self.kernel - 1) * sum(self.dilations)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "student config") -> StudentConfig:
        """Fields missing from older checkpoints get their defaults; unknown keys and wrong
        types are one-line `UserError`s."""
        return from_mapping(cls, data, where)


ARCHS = {"pico": StudentConfig.pico, "small": StudentConfig.small, "tcn": StudentConfig.tcn,
         "tcn_small": StudentConfig.tcn_small}


def arch(name: str) -> StudentConfig:
    if name not in ARCHS:
        raise UserError(f"unknown student architecture {name!r}; choose {', '.join(ARCHS)}")
    return ARCHS[name]()


def default_frontend(sample_rate: int = 16000) -> Frontend:
    """64 mels, 25 ms Hann windows in a 32 ms FFT, hop 20 ms (50 fps at 16 kHz, the
    teacher's frame rate). mean/std are filled in from training data by distillation."""
    hop = round(0.02 * sample_rate)
    win = round(0.025 * sample_rate)
    n_fft = 1 << math.ceil(math.log2(win))
    return Frontend(kind="logmel", n_fft=n_fft, win_length=win, hop_length=hop, n_mels=64,
                    fmin=50.0, fmax=sample_rate / 2, log_offset=1e-6, center=True)


# ---------------------------------------------------------------- front end (torch mirror)
class LogMel(nn.Module):
    """Torch mirror of `edge_runtime.contract.frontend.logmel`, float32: (batch, samples) -> (batch,
    frames, n_mels). The STFT is torch.stft (FFT) on the same padding and zero-padded Hann
    window as the numpy front end: student training recomputes features from augmented audio
    every step, where a dense DFT-as-conv cost ~5x more. It never goes into an exported
    graph (artifacts take log-mel input)."""

    def __init__(self, frontend: Frontend, sample_rate: int):
        super().__init__()
        check_frontend(frontend, sample_rate)
        self.frontend, f = frontend, frontend
        window = analysis_window(f.n_fft, f.win_length)
        self.register_buffer("window", torch.tensor(window, dtype=torch.float32),
                             persistent=False)
        bank = mel_filterbank(sample_rate, f.n_fft, f.n_mels, float(f.fmin), float(f.fmax))
        self.register_buffer("mel", torch.tensor(bank, dtype=torch.float32), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        f = self.frontend
        left, right = padding(f, audio.shape[-1])
        # float64 like the numpy front end: quiet bins keep their digits (float32 FFTs drift by
        # ~1e-4 in the log there); an FFT this size costs little either way.
        x = F.pad(audio.double(), (left, right))
        spec = torch.stft(x, f.n_fft, f.hop_length, window=self.window.double(), center=False,
                          return_complex=True)  # (batch, bins, frames)
        spec = spec[:, :, : audio.shape[-1] // f.hop_length]
        power = spec.real.square() + spec.imag.square()
        mel = power.transpose(1, 2) @ self.mel.double()
        return ((torch.log(mel + f.log_offset) - f.mean) / f.std).float()


# ---------------------------------------------------------------- backbone
class Context(nn.Module):
    """Global context of the window, int8-friendly (MEAN, 1x1 convs, ReLU, LOGISTIC, MUL/ADD):
    s = 1x1(ReLU(1x1(mean over frames of y))); "gate": y * sigmoid(s) (squeeze-excite), "add":
    y + s, broadcast to every frame. No normalisation here: a BatchNorm over one pooled value
    per window would be unstable on small batches. (batch, channels, frames) in and out."""

    def __init__(self, channels: int, reduction: int, mode: str):
        super().__init__()
        self.mode = mode
        self.squeeze = nn.Conv1d(channels, max(1, channels // reduction), 1)
        self.excite = nn.Conv1d(max(1, channels // reduction), channels, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        s = self.excite(F.relu(self.squeeze(y.mean(dim=2, keepdim=True))))  # (batch, ch, 1)
        return y * torch.sigmoid(s) if self.mode == "gate" else y + s


class Block(nn.Module):
    """x + C(BN(1x1(ReLU(BN(1x1(ReLU(BN(depthwise dilated conv(x))))))))), C the optional
    global context: (batch, channels, frames)."""

    def __init__(self, channels: int, kernel: int, dilation: int, expansion: int,
                 activation: str = "relu", context: str = "none", context_reduction: int = 4):
        super().__init__()
        self.act = ACTIVATIONS[activation]
        hidden = channels * expansion
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=dilation * (kernel // 2),
                                   dilation=dilation, groups=channels, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.expand = nn.Conv1d(channels, hidden, 1, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.project = nn.Conv1d(hidden, channels, 1, bias=False) if expansion > 1 else None
        self.bn3 = nn.BatchNorm1d(channels) if expansion > 1 else None
        # None when off: older checkpoints' state dicts have no context weights.
        self.context = (Context(channels, context_reduction, context)
                        if context != "none" else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.depthwise(x)))
        y = self.bn2(self.expand(y))
        if self.project is not None:
            y = self.bn3(self.project(self.act(y)))
        if self.context is not None:
            y = self.context(y)
        return self.act(x + y)


class Student(nn.Module):
    """Normalised log-mel (batch, frames, n_mels) -> frame logits (batch, frames, classes)."""

    def __init__(self, config: StudentConfig, n_mels: int, n_classes: int):
        super().__init__()
        self.config, self.n_mels, self.n_classes = config, n_mels, n_classes
        c = config.channels
        self.stem = nn.Conv1d(n_mels * (2 if config.band_contrast else 1), c, 1, bias=False)
        self.stem_bn = nn.BatchNorm1d(c)
        self.act = ACTIVATIONS[config.activation]
        self.blocks = nn.ModuleList(Block(c, config.kernel, d, config.expansion, config.activation,
                                          config.context, config.context_reduction)
                                    for d in config.dilations)
        self.head = nn.Conv1d(c, n_classes, 1)
        init_prior_bias(self.head.bias)  # rare calls: start at the prior, not p = 0.5

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)  # (batch, mels, frames)
        if self.config.band_contrast:
            x = torch.cat([x, x - x.mean(dim=2, keepdim=True)], dim=1)
        x = self.act(self.stem_bn(self.stem(x)))  # (batch, channels, frames)
        for block in self.blocks:
            x = block(x)
        return self.head(x).transpose(1, 2)  # (batch, frames, classes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class AudioStudent(nn.Module):
    """Front end + backbone: audio (batch, samples) -> frame logits, for training/evaluation."""

    def __init__(self, logmel: LogMel, student: Student):
        super().__init__()
        self.logmel, self.student = logmel, student

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.student(self.logmel(audio))


# ---------------------------------------------------------------- checkpoint
@dataclass(frozen=True)
class StudentSpec:
    """Everything besides weights that rebuilds and deploys a student."""

    arch: str
    config: StudentConfig
    frontend: Frontend
    sample_rate: int
    window_s: float  # deployment window and hop (streaming geometry)
    hop_s: float
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    # Tuned on val for event F1 (export/decoder_search.py); () in older checkpoints.
    decoder: tuple[LabelDecoder, ...] = ()  # per label, in label order
    undetectable_labels: tuple[UndetectableLabel, ...] = ()

    def __post_init__(self) -> None:
        if len(self.thresholds) != len(self.labels):
            raise UserError(f"student spec: {len(self.thresholds)} thresholds for "
                            f"{len(self.labels)} labels")
        if self.decoder and ([d.label for d in self.decoder] != list(self.labels) or any(
                abs(d.threshold - t) > 1e-9 for d, t in zip(self.decoder, self.thresholds,
                                                           strict=True))):
            raise UserError("student spec: decoder settings must follow the labels in order, "
                            "with the same thresholds")
        unknown = [u.label for u in self.undetectable_labels if u.label not in self.labels]
        if unknown:
            raise UserError(f"student spec: undetectable labels {unknown} are not labels")

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.frontend.hop_length

    @property
    def window_samples(self) -> int:
        return round(self.window_s * self.sample_rate)

    @property
    def frames_per_window(self) -> int:
        return self.window_samples // self.frontend.hop_length

    def build(self) -> Student:
        return Student(self.config, self.frontend.n_mels, len(self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "config": self.config.to_dict(),
                "frontend": dataclasses.asdict(self.frontend), "sample_rate": self.sample_rate,
                "window_s": self.window_s, "hop_s": self.hop_s, "labels": list(self.labels),
                "thresholds": [float(t) for t in self.thresholds],
                "decoder": [dataclasses.asdict(d) for d in self.decoder],
                "undetectable_labels": [dataclasses.asdict(u) for u in self.undetectable_labels]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "student spec") -> StudentSpec:
        return from_mapping(cls, data, where)


def save_student(path: Path, model: Student, spec: StudentSpec,
                 lineage: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    from train.engine import save_checkpoint

    save_checkpoint(Path(path), {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(),
                                 "state": model.state_dict(), "lineage": dict(lineage),
                                 "extra": extra or {}})


def is_student_record(record: Any) -> bool:
    return isinstance(record, dict) and record.get("format") == FORMAT


def student_from_record(record: dict[str, Any], path: str | Path
                        ) -> tuple[Student, StudentSpec]:
    if record.get("version", 0) > VERSION:
        raise UserError(f"{path}: written by a newer meerkit (student format {record['version']})")
    try:
        spec = StudentSpec.from_dict(record["spec"], f"{path}: student spec")
        model = spec.build()
        model.load_state_dict(record["state"])
    except (KeyError, TypeError, RuntimeError) as err:
        raise UserError(f"{path}: broken student checkpoint ({type(err).__name__}: {err})") from None
    return model.eval(), spec


def load_student(path: str | Path) -> tuple[Student, StudentSpec, dict[str, Any]]:
    """(backbone in eval mode, spec, whole record)."""
    from train.engine import load_checkpoint

    record = load_checkpoint(path)
    if not is_student_record(record):
        raise UserError(f"{path}: not a meerkit student checkpoint (make one with "
                        "`meerkit export distill`)")
    model, spec = student_from_record(record, path)
    return model, spec, record
