"""Evaluate a frame classifier on a split: frame-level AP (macro, micro, per class), event-level
P/R/F1 and, where the annotations know each call's SNR, event recall by SNR bucket; computed by
the same `edge_runtime.contract.metrics` / `edge_runtime.contract.events` code that export verification and the
field runtime use. Writes JSON and a PR-curve PNG."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_runtime.contract.events import DecoderConfig, Event, decode_events
from edge_runtime.contract.metrics import (
    event_recall_by_snr,
    event_scores,
    frame_average_precision,
    precision_recall_curve,
)
from train.data.dataset import Dataset
from train.data.torch_data import ClipDataset, collate

# Anything that maps audio (batch, samples) -> frame logits (batch, frames, classes).
FrameModel = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predict_clips(model: FrameModel, clips: ClipDataset, batch_size: int = 16,
                  device: torch.device | str = "cpu") -> np.ndarray:
    """Sigmoid frame probabilities for every clip: (clips, frames, classes) float32."""
    out = []
    for start in range(0, len(clips), batch_size):
        batch = collate([clips[i] for i in range(start, min(start + batch_size, len(clips)))])
        logits = model(batch["audio"].to(device))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out)


def stitch_by_file(clips: ClipDataset, per_clip: np.ndarray, dataset: Dataset,
                   frame_rate_hz: float) -> dict[str, np.ndarray]:
    """Consecutive clips of a file -> one (frames, C) array trimmed to the file's duration."""
    pieces: dict[str, list[np.ndarray]] = {}
    for clip, values in zip(clips.clips, per_clip, strict=True):
        pieces.setdefault(clip.file, []).append(values)
    return {f: np.concatenate(p)[: max(1, round(dataset.info(f).duration_s * frame_rate_hz))]
            for f, p in pieces.items()}


def stored_decoder(record: dict[str, Any]) -> DecoderConfig | None:
    """The per-label event decoder finetuning tuned on `val` and stored with the model
    (`train.finetune.tune_saved_decoder`), undetectable labels off; None for older models."""
    search = record.get("extra", {}).get("decoder_search") or {}
    per_label = search.get("decoders") or []
    if not per_label:
        return None
    off = {u["label"] for u in search.get("undetectable", [])}
    return DecoderConfig(**{key: [d[key] for d in per_label] for key in
                            ("threshold", "hysteresis", "min_duration_s", "merge_gap_s")},
                         emit=[d["label"] not in off for d in per_label])


def reference_events(dataset: Dataset, files: Sequence[str]
                     ) -> tuple[list[Event], list[float | None]]:
    """The annotated events of `files` and, aligned with them, each one's SNR (None: unknown)."""
    events: list[Event] = []
    snr: list[float | None] = []
    for f in files:
        rows = dataset.annotations(f)
        events.extend(Event(a.label, a.start_s, a.end_s, file=f) for a in rows)
        snr.extend(a.snr_db for a in rows)
    return events, snr


def score_files(dataset: Dataset, probs: dict[str, np.ndarray], targets: dict[str, np.ndarray],
                frame_rate_hz: float, decoder: DecoderConfig | None = None,
                iou: float = 0.0) -> dict[str, Any]:
    """Frame AP over all frames of all files, and event P/R/F1 against the annotations.

    "event_recall_by_snr" is None unless some annotation of these files has an SNR.
    """
    labels = dataset.labels
    files = list(probs)
    scores = np.concatenate([probs[f] for f in files])
    truth = np.concatenate([targets[f] for f in files])
    predicted = [e for f in files
                 for e in decode_events(probs[f], labels, frame_rate_hz, decoder, file=f)]
    reference, snr = reference_events(dataset, files)
    by_snr = (event_recall_by_snr(reference, snr, predicted, iou=iou, labels=labels)
              if any(s is not None for s in snr) else None)
    return {
        "files": len(files), "frames": int(len(scores)), "labels": labels,
        "frame_ap": frame_average_precision(truth, scores, labels),
        "event": event_scores(reference, predicted, iou=iou, labels=labels),
        "event_recall_by_snr": by_snr,
        "event_iou": iou, "n_reference_events": len(reference),
        "n_predicted_events": len(predicted),
    }


def predict_files(model: FrameModel, dataset: Dataset, files: Sequence[str], clip_s: float,
                  frame_rate_hz: float, batch_size: int = 16, device: str | torch.device = "cpu"
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Stitched (frames, C) probabilities and targets per file: what a paired bootstrap over
    files (benchmarks/stats.py) resamples."""
    clips = ClipDataset(dataset, files, clip_s, frame_rate_hz)
    per_clip = predict_clips(model, clips, batch_size, device)
    probs = stitch_by_file(clips, per_clip, dataset, frame_rate_hz)
    targets = stitch_by_file(clips, np.stack([c.targets for c in clips.clips]), dataset,
                             frame_rate_hz)
    return probs, targets


def evaluate_model(model: FrameModel, dataset: Dataset, files: Sequence[str], clip_s: float,
                   frame_rate_hz: float, batch_size: int = 16, device: str | torch.device = "cpu",
                   decoder: DecoderConfig | None = None, iou: float = 0.0
                   ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(report, probabilities per file, targets per file) for the given files."""
    probs, targets = predict_files(model, dataset, files, clip_s, frame_rate_hz, batch_size,
                                   device)
    return score_files(dataset, probs, targets, frame_rate_hz, decoder, iou), probs, targets


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(report), indent=2) + "\n")


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str],
                   path: Path, title: str = "") -> None:
    """One panel per class; `curves` maps a model name to (targets, scores) (frames, C)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for k, label in enumerate(labels):
        ax = axes[k // cols][k % cols]
        for name, (truth, scores) in curves.items():
            y = truth[:, k] >= 0.5
            if not y.any():
                continue
            precision, recall, _ = precision_recall_curve(y, scores[:, k])
            ap = frame_average_precision(truth[:, k : k + 1], scores[:, k : k + 1])["macro"]
            ax.step(recall, precision, where="post", label=f"{name} AP {ap:.3f}")
        ax.set(title=label, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        if ax.lines:
            ax.legend(fontsize=7, loc="lower left")
        else:
            ax.text(0.5, 0.5, "no positives", ha="center", va="center")
    for k in range(len(labels), rows * cols):
        axes[k // cols][k % cols].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
