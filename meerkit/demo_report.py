"""What `meerkit demo` reports at the end: every model's quality table, the runtime's closing
numbers, and a spectrogram of one test recording with its published detections."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def plot_demo_clip(data: Path, file: str, detections: list[dict], t0: float, png: Path) -> None:
    """Spectrogram of one recording with ground truth (top) and published detections (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from train.data.dataset import Dataset

    dataset = Dataset(data)
    audio, sr = dataset.load(file)
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.specgram(audio + 1e-9, NFFT=512, Fs=sr, noverlap=384, cmap="magma")
    labels = dataset.labels
    colours = plt.cm.tab10(np.arange(len(labels)) % 10)
    top = sr / 2
    for a in dataset.annotations(file):
        k = labels.index(a.label)
        ax.axvspan(a.start_s, a.end_s, ymin=0.92, ymax=1.0, color=colours[k], alpha=0.9)
        ax.text(a.start_s, top * 0.95, a.label, fontsize=7, color="white", va="top")
    for d in detections:
        k = labels.index(d["label"]) if d["label"] in labels else 0
        ax.axvspan(d["start_s"] - t0, d["end_s"] - t0, ymin=0.0, ymax=0.08, color=colours[k],
                   alpha=0.9)
        ax.text(d["start_s"] - t0, top * 0.09, f"{d['label']} {d['confidence']:.2f}",
                fontsize=7, color="white")
    ax.set(xlabel="time (s)", ylabel="Hz", xlim=(0, len(audio) / sr),
           title=f"{file}: ground truth (top bars) vs detections published over MQTT (bottom bars)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def model_val_ap(path: Path) -> float:
    """The val frame macro AP a teacher or student was selected with (-1 when unknown)."""
    import torch

    record = torch.load(path, map_location="cpu", weights_only=True)
    value = ((record.get("extra") or {}).get("val") or {}).get("frame_ap", {}).get("macro")
    return -1.0 if value is None or value != value else float(value)


def quality_table(verify: dict, teacher_name: str = "", shipped: str = "distilled",
                  other: str = "labels only") -> str:
    """Frame AP, event P/R/F1 and event recall per SNR bucket of every scored model."""
    models = verify.get("models", {})
    titles = (("teacher", f"teacher ({teacher_name})" if teacher_name else "teacher"),
              ("pytorch", f"student fp32 ({shipped})"), ("artifact", f"student int8 ({shipped})"),
              ("baseline", f"student fp32 ({other})"))
    buckets: list[str] = []
    for m in models.values():
        for name in ((m.get("event_recall_by_snr") or {}).get("buckets") or {}):
            if name not in buckets:
                buckets.append(name)
    head = ["model", "frame AP", "event P", "event R", "event F1",
            *(f"R {b}" for b in buckets)]
    lines = ["  | " + " | ".join(head) + " |", "  |" + "---|" * len(head)]
    for key, title in titles:
        if key not in models:
            continue
        m = models[key]
        ev = m["event"]["micro"]
        by = (m.get("event_recall_by_snr") or {}).get("buckets") or {}
        cells = [title,
                 f"{m['frame_ap']['macro']:.3f}", f"{ev['precision']:.3f}",
                 f"{ev['recall']:.3f}", f"{ev['f1']:.3f}",
                 *(_recall_cell(by.get(b)) for b in buckets)]
        lines.append("  | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _recall_cell(bucket: dict | None) -> str:
    if not bucket or bucket.get("recall") is None or bucket["recall"] != bucket["recall"]:
        return "n/a"
    return f"{bucket['recall']:.2f} (n={bucket['n']})"


def runtime_summary(lines: list[str]) -> dict[str, float]:
    """Numbers from edge-runtime's closing line ('done: … N detection(s), real-time factor …')."""
    for line in reversed(lines):
        m = re.search(r"(\d+) detection\(s\), real-time factor ([\d.e-]+).*?(\d+) unsent", line)
        if m:
            n, rtf, unsent = int(m[1]), float(m[2]), int(m[3])
            return {"detections": n, "real_time_factor": rtf, "published": n - unsent}
    return {}
