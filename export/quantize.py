"""Full-integer int8 students: the log-mel front end stays float (numpy, from the card); the
backbone is int8 with per-channel weights and float input/output, calibrated on windows of
real audio. The candidate is verified against the fp32 student before it is written, and
refused if its frame macro AP drops by more than the budget (AP points).

The transformer teacher is never full int8 (measured: correlation 0.41, see
notes/export-toolchain.md); it ships as fp32, fp16 or dynamic-range via `export tflite`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CalibrationConfig:
    split: str = "train"  # or subset:NAME; any audio the student will meet, not the test set
    max_clips: int = 200  # windows, spread evenly over the split
    min_clips: int = 32
    silence_dbfs: float = -60.0  # a window whose peak stays below this is silent


@dataclass
class Calibration:
    features: np.ndarray  # (clips, frames, n_mels) normalised log-mel, float32
    sha256: str
    files: int


def calibration_set(data: Path, card: ModelCard, config: CalibrationConfig) -> Calibration:
    """Non-silent windows (the card's window length and hop) of `config.split`, as the
    backbone's input. UserError when there are too few or the audio is silent."""
    from edge_runtime.contract.frontend import logmel
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files

    dataset = Dataset(data, sample_rate=card.sample_rate)
    if list(dataset.labels) and list(dataset.labels) != list(card.labels):
        raise UserError(f"{data}: label set {dataset.labels} differs from the model's "
                        f"{list(card.labels)}")
    files = select_files(dataset, config.split)
    windows = [clip.audio for clip in dataset.clips(card.window_s, card.hop_s,
                                                    card.frame_rate_hz, files=files)]
    floor = 10 ** (config.silence_dbfs / 20)
    loud = [w for w in windows if np.abs(w).max() >= floor]
    if windows and not loud:
        raise UserError(f"{data}: all {len(windows)} calibration windows of split "
                        f"'{config.split}' are silent (peak < {config.silence_dbfs:g} dBFS); "
                        "calibrate with real recordings")
    if len(loud) < config.min_clips:
        raise UserError(f"{data}: only {len(loud)} non-silent {card.window_s:g} s windows in "
                        f"split '{config.split}' ({len(windows) - len(loud)} silent ones left "
                        f"out); int8 calibration needs at least {config.min_clips}: use a "
                        "larger split (--calibration-split) or lower --min-clips")
    pick = np.unique(np.linspace(0, len(loud) - 1, min(config.max_clips, len(loud))).round()
                     .astype(int))
    features = logmel(np.stack([loud[i] for i in pick]), card.frontend, card.sample_rate)
    digest = hashlib.sha256(features.tobytes()).hexdigest()
    return Calibration(features, digest, len(files))


def check_budget(report: dict[str, Any], budget: float, force: bool, split: str) -> float:
    """AP points the artifact lost against the fp32 reference; UserError beyond the budget
    (a warning with force). NaN when the split has no positives to measure AP on."""
    ap = report["models"]["artifact"]["frame_ap"]["macro"]
    ref = report["models"]["pytorch"]["frame_ap"]["macro"]
    drop = 100 * (ref - ap)
    if np.isnan(drop):
        log.warning("split '%s' has no positive frames: the AP budget cannot be checked", split)
    elif drop > budget:
        message = (f"int8 frame macro AP on '{split}' is {ap:.4f}, {drop:.2f} points below "
                   f"the fp32 student's {ref:.4f} (budget {budget:g})")
        if not force:
            raise UserError(f"{message}; not written (--force writes it anyway, --budget "
                            "raises the limit)")
        log.warning("%s; written because of --force", message)
    return float(drop)


def quantize(checkpoint: Path, calibration: Path, out: Path, budget: float = 2.0,
             force: bool = False, config: CalibrationConfig | None = None,
             verify_split: str = "val", threads: int = 1, progress: bool = True
             ) -> tuple[Path, dict[str, Any]]:
    """Student checkpoint -> verified int8 `.tflite`; returns (path, verification report)."""
    from export.source import load_source
    from export.tflite import TEACHER_INT8, card_for, convert, write_tflite
    from export.verify import card_metrics, verify

    config = config or CalibrationConfig()
    source = load_source(checkpoint)
    if source.kind == "teacher":
        raise UserError(f"{checkpoint}: {TEACHER_INT8}")
    calib = calibration_set(calibration, source.card, config)
    log.info("calibrating on %d windows from %d files of %s (sha256 %s)",
             len(calib.features), calib.files, calibration, calib.sha256[:12])
    data = convert(source, "int8", calib.features)
    card = card_for(source, "int8", calibration_sha256=calib.sha256,
                    calibration_clips=len(calib.features))
    with tempfile.TemporaryDirectory(prefix="meerkit-quant-") as tmp:
        candidate = write_tflite(Path(tmp) / "candidate.tflite", data, card)
        report = verify(candidate, calibration, verify_split, checkpoint=Path(checkpoint),
                        use_onnx=False, out=Path(tmp) / "verify.json", write_card=False,
                        threads=threads, progress=progress)
    report.pop("paths")  # the candidate's report lived in the temporary folder
    drop = check_budget(report, budget, force, verify_split)
    report["ap_drop_points"] = drop
    metrics = {**card_metrics(report), "ap_drop_points": None if np.isnan(drop) else round(drop, 3)}
    card = dataclasses.replace(card, metrics=metrics)
    return write_tflite(out, data, card), report
