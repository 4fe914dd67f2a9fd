"""Verify an artifact on held-out audio against what it was made from.

Every backend -- the artifact (TFLite interpreter or ONNX Runtime), the PyTorch checkpoint it
was made from, ONNX Runtime on a fresh export of that checkpoint, and the teacher -- runs over
whole files through `edge_runtime.contract.windows.track`, so all of them see the same windows and keep
the same frames as the field runtime. Reported:
* agreement with the PyTorch reference: max |p - p_ref|, correlation of logits, and the share
  of frames whose thresholded decisions (card thresholds) are identical;
* frame AP and event P/R/F1 (card thresholds) of each model;
as a table, JSON and a PR-curve PNG. The verified numbers go into the artifact's card.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract.card import ModelCard, read_card
from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)


def artifact_card(path: Path) -> ModelCard:
    if not Path(path).is_file():
        raise UserError(f"{path}: no such artifact")
    if Path(path).suffix == ".onnx":
        from export.card import read_card_onnx

        try:
            return read_card_onnx(path)
        except UserError:
            raise
        except Exception as err:  # protobuf decode errors
            raise UserError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    return read_card(path)


def agreement(logits: np.ndarray, reference: np.ndarray, thresholds: np.ndarray
              ) -> dict[str, float]:
    """How closely one backend's frame logits (frames, C) follow the reference's."""
    from export.backends import sigmoid

    p, q = sigmoid(logits), sigmoid(reference)
    same = (p >= thresholds) == (q >= thresholds)
    a, b = logits.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else math.nan
    return {"max_abs_diff": float(np.abs(p - q).max()),
            "max_abs_logit_diff": float(np.abs(logits - reference).max()),
            "correlation": corr,
            "decision_agreement": float(same.mean()),  # over (frame, label) pairs
            "frame_agreement": float(same.all(axis=1).mean())}  # every label of the frame


def score_tracks(dataset, logits: dict[str, np.ndarray], frame_rate: float,
                 decoder) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Frame AP and event metrics of one backend's tracks, events decoded as the device
    decodes them (`decoder`: the card's `decoder_config()`)."""
    from edge_runtime.contract.events import events_to_frames
    from export.backends import sigmoid
    from train.evaluate import score_files

    probs = {f: sigmoid(v) for f, v in logits.items()}
    targets = {f: events_to_frames(dataset.events(f), dataset.labels, len(p), frame_rate)
               for f, p in probs.items()}
    report = score_files(dataset, probs, targets, frame_rate, decoder)
    return report, np.concatenate(list(targets.values())), np.concatenate(list(probs.values()))


def _existing(path: str | Path | None) -> Path | None:
    return Path(path) if path and Path(path).is_file() else None


def verify(artifact: Path, data: Path, split: str = "test", checkpoint: Path | None = None,
           teacher: Path | None = None, use_onnx: bool = True, out: Path | None = None,
           write_card: bool = True, threads: int = 1, progress: bool = True,
           baseline: Path | None = None) -> dict[str, Any]:
    """Run every backend on `split` of `data`; return (and write) the report. `baseline`: a
    model to score beside them (e.g. the label-only student), with its own decoder."""
    from export.backends import (
        artifact_window_fn,
        geometry,
        onnx_window_fn,
        track_files,
    )
    from export.source import load_source
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files

    artifact = Path(artifact)
    card = artifact_card(artifact)
    dataset = Dataset(data, sample_rate=card.sample_rate)
    if list(dataset.labels) != list(card.labels):
        raise UserError(f"{data}: label set {dataset.labels} differs from the artifact's "
                        f"{list(card.labels)} ({artifact})")
    files = [f for s in split.split(",") for f in select_files(dataset, s)]
    geo = geometry(card)
    thresholds = np.asarray(card.thresholds, dtype=np.float32)

    def run(name: str, window_fn) -> dict[str, np.ndarray]:
        return track_files(window_fn, geo, dataset, files, progress, desc=name)

    tracks = {"artifact": run("artifact", artifact_window_fn(artifact, card, threads))}
    rates = {"artifact": card.frame_rate_hz}
    thr = {"artifact": thresholds}
    decoders = {"artifact": card.decoder_config()}
    reference_path = Path(checkpoint) if checkpoint else _existing(card.lineage.get("checkpoint"))
    source = None
    if reference_path is not None:
        source = load_source(reference_path) if card.frontend.kind == "logmel" else \
            load_source(reference_path, card.window_s, card.hop_s)
        if source.card.sha256 != card.sha256:
            raise UserError(f"{reference_path}: its weights (sha256 {source.card.sha256[:12]}) "
                            f"are not the ones {artifact.name} was made from "
                            f"({card.sha256[:12]})")
        tracks["pytorch"] = run("pytorch", source.window_fn())
        rates["pytorch"], thr["pytorch"] = card.frame_rate_hz, thresholds
        decoders["pytorch"] = decoders["artifact"]
        if use_onnx and artifact.suffix != ".onnx":
            from export.onnx import to_onnx_model, write_onnx

            with tempfile.TemporaryDirectory(prefix="meerkit-verify-") as tmp:
                path = write_onnx(to_onnx_model(source), card, Path(tmp) / "model.onnx")
                tracks["onnx"] = run("onnx", onnx_window_fn(path, card, threads))
            rates["onnx"], thr["onnx"] = card.frame_rate_hz, thresholds
            decoders["onnx"] = decoders["artifact"]
    else:
        log.warning("no PyTorch checkpoint for %s (give --checkpoint): agreement is not checked",
                    artifact)
    teacher_path = Path(teacher) if teacher else _existing(card.lineage.get("teacher"))
    if teacher_path is not None and (reference_path is None or
                                     teacher_path.resolve() != reference_path.resolve()):
        t = load_source(teacher_path)
        tracks["teacher"] = track_files(t.window_fn(), geometry(t.card), dataset, files,
                                        progress, desc="teacher")
        rates["teacher"] = t.card.frame_rate_hz
        thr["teacher"] = np.asarray(t.card.thresholds, np.float32)
        decoders["teacher"] = t.card.decoder_config()
    if baseline is not None:
        b = load_source(baseline)
        if list(b.card.labels) != list(card.labels):
            raise UserError(f"{baseline}: its labels differ from the artifact's")
        tracks["baseline"] = track_files(b.window_fn(), geometry(b.card), dataset, files,
                                         progress, desc="baseline")
        rates["baseline"] = b.card.frame_rate_hz
        decoders["baseline"] = b.card.decoder_config()

    models, curves = {}, {}
    for name, logits in tracks.items():
        models[name], truth, scores = score_tracks(dataset, logits, rates[name], decoders[name])
        curves[name] = (truth, scores)
    report: dict[str, Any] = {
        "artifact": str(artifact), "data": str(data), "split": split, "files": len(files),
        "card": {"name": card.name, "quantization": dataclasses.asdict(card.quantization),
                 "sha256": card.sha256},
        "models": models, "agreement": {}}
    if "pytorch" in tracks:
        for name in ("artifact", "onnx"):
            if name in tracks:
                report["agreement"][f"{name}_vs_pytorch"] = agreement(
                    np.concatenate([tracks[name][f] for f in files]),
                    np.concatenate([tracks["pytorch"][f] for f in files]), thresholds)

    out = Path(out) if out else artifact.with_name(f"{artifact.stem}_verify_{split.replace(',', '_')}.json")
    from train.evaluate import plot_pr_curves, write_report

    write_report(report, out)
    plot_pr_curves(curves, list(card.labels), out.with_suffix(".png"),
                   f"{artifact.name} on {split}")
    report["paths"] = {"json": str(out), "png": str(out.with_suffix(".png"))}
    if write_card:
        write_metrics(artifact, card, card_metrics(report))
    return report


def card_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The verified numbers that travel in the card."""
    m = report["models"]

    def ap(name: str) -> float | None:
        value = m.get(name, {}).get("frame_ap", {}).get("macro")
        return None if value is None or math.isnan(value) else round(float(value), 4)

    out: dict[str, Any] = {"data": report["data"], "split": report["split"],
                           "files": report["files"], "frame_macro_ap": ap("artifact"),
                           "event_f1": round(m["artifact"]["event"]["micro"]["f1"], 4)}
    if "pytorch" in m:
        out["frame_macro_ap_pytorch"] = ap("pytorch")
    if "teacher" in m:
        out["frame_macro_ap_teacher"] = ap("teacher")
    agree = report["agreement"].get("artifact_vs_pytorch")
    if agree:
        out.update({k: round(v, 6) for k, v in agree.items() if not math.isnan(v)})
    return {"verified": out}


def write_metrics(artifact: Path, card: ModelCard, metrics: dict[str, Any]) -> ModelCard:
    """Rewrite the artifact's embedded card with `metrics` merged in."""
    card = dataclasses.replace(card, metrics={**card.metrics, **metrics})
    if artifact.suffix == ".onnx":
        import onnx

        from export.onnx import write_onnx

        write_onnx(onnx.load(str(artifact)), card, artifact)
    else:
        from export.tflite import write_tflite

        data = artifact.read_bytes()
        if not _embedded(data):  # a sidecar card: update the sidecar, keep the model as is
            artifact.with_suffix(".json").write_text(card.to_json())
        else:
            write_tflite(artifact, data, card)
    return card


def _embedded(data: bytes) -> bool:
    from edge_runtime.contract.card import CARD_KEY, tflite_metadata

    try:
        return CARD_KEY in tflite_metadata(data)
    except Exception:
        return False


def high_snr_recall(model_report: dict[str, Any]) -> str:
    """Event recall for calls at >= 10 dB SNR, as text ('n/a' without SNR annotations)."""
    by_snr = model_report.get("event_recall_by_snr")
    value = (by_snr or {}).get(">=10 dB", {}).get("recall")
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def format_table(report: dict[str, Any]) -> str:
    """Models as rows: frame AP, event P/R/F1, and agreement with PyTorch where measured."""
    rows = [f"{'model':10s} {'macroAP':>8s} {'microAP':>8s} {'evP':>6s} {'evR':>6s} {'evF1':>6s}"
            f" {'R>=10dB':>7s} {'corr':>8s} {'max|dp|':>8s} {'agree':>7s}"]
    for name, m in report["models"].items():
        ap, ev = m["frame_ap"], m["event"]["micro"]
        agree = report["agreement"].get(f"{name}_vs_pytorch", {})
        extra = (f" {agree['correlation']:8.5f} {agree['max_abs_diff']:8.5f} "
                 f"{100 * agree['frame_agreement']:6.2f}%" if agree else "")
        rows.append(f"{name:10s} {ap['macro']:8.4f} {ap['micro']:8.4f} {ev['precision']:6.3f} "
                    f"{ev['recall']:6.3f} {ev['f1']:6.3f} {high_snr_recall(m):>7s}{extra}")
    return "\n".join(rows)
