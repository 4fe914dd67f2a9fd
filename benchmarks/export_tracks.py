"""The export table's models as the field runtime runs them: per-file tracks over whole
`test`/`shift`/`val` files (cached beside each model, keyed by its file's digest), an
ensemble teacher's averaged tracks, decoders re-tuned on `val`, and the per-file items the
bootstrap scores (checked against export.verify's own scoring). Used by export_table.py and
decoder_table.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.export_plan import Plan
from benchmarks.runs import digest, run_once
from benchmarks.scoring import Scored, score_tracks
from benchmarks.stats import event_f1_micro, frame_macro_ap


@dataclass
class Runner:
    """One model as the verify machinery runs it: window function, stitching, card."""

    window_fn: Callable
    card: Any  # edge_runtime.contract.card.ModelCard

    @classmethod
    def load(cls, model: str, path: Path) -> Runner:
        from export.backends import artifact_window_fn
        from export.source import load_source
        from export.verify import artifact_card

        if model == "student_int8":
            card = artifact_card(path)
            return cls(artifact_window_fn(path, card, threads=1), card)
        source = load_source(path)
        return cls(source.window_fn(), source.card)


def model_tracks(plan: Plan, model: str, seed: int, split: str, progress: bool
                 ) -> tuple[dict[str, np.ndarray], Any, float]:
    """(frame logits per file, the model's card, minutes the tracks took), cached beside the
    model and keyed by its file's digest."""
    if model == "teacher" and len(plan.members) > 1:
        return ensemble_tracks(plan, seed, split, progress)
    from export.backends import geometry, track_files
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files

    path, out = plan.path(model, seed), plan.tracks(model, seed, split)
    runner = Runner.load(model, path)
    dataset = Dataset(plan.data, sample_rate=runner.card.sample_rate)
    files = select_files(dataset, split)
    inputs = {"model": digest(path), "split": split, "files": files}

    def build(_: bool) -> None:
        tracks = track_files(runner.window_fn, geometry(runner.card), dataset, files, progress,
                             desc=f"{model} {split}")
        tmp = out.with_name(out.name + ".tmp.npz")
        np.savez(tmp, *[tracks[f] for f in files])
        tmp.replace(out)

    minutes = run_once(out, inputs, f"{plan.commands([seed])['verify']}", build)
    with np.load(out) as saved:
        logits = {f: saved[f"arr_{k}"] for k, f in enumerate(files)}
    return logits, runner.card, minutes


def ensemble_tracks(plan: Plan, seed: int, split: str, progress: bool
                    ) -> tuple[dict[str, np.ndarray], Any, float]:
    """The ensemble teacher as the student was taught by it: each member's tracks (cached as
    its own table caches them) resampled to the finest member's frames and averaged in
    probability (export/distill_data.ensemble_logits). Its card is the finest member's with
    the parameters summed and the decoder tuned for the ensemble on `val`, as every other
    model's is."""
    from dataclasses import replace

    from export.distill_data import ensemble_logits, resample_frames

    runs = {s: [model_tracks(m, plan.member_model(m), seed, s, progress) for m in plan.members]
            for s in dict.fromkeys((split, "val"))}
    finest = max(range(len(plan.members)), key=lambda k: runs[split][k][1].frame_rate_hz)
    card = runs[split][finest][1]
    rate = card.frame_rate_hz

    def average(members: list[tuple[dict[str, np.ndarray], Any, float]]) -> dict[str, np.ndarray]:
        out = {}
        for f, grid in members[finest][0].items():
            times = (np.arange(len(grid)) + 0.5) / rate
            out[f] = ensemble_logits([resample_frames(logits[f], c.frame_rate_hz, times)
                                      for logits, c, _ in members])
        return out

    parameters = sum(int(c.lineage.get("parameters") or 0) for _, c, _ in runs[split])
    card = replace(retuned(plan, card, average(runs["val"])),
                   lineage={**card.lineage, "parameters": parameters,
                            "teacher_name": f"ensemble of {plan.teacher_model}"})
    minutes = sum(m for r in runs.values() for _, _, m in r)
    return average(runs[split]), card, minutes


def retuned(plan: Plan, card: Any, val_logits: Mapping[str, np.ndarray],
            duration_quantile: float | None = None) -> Any:
    """`card` with its decoder tuned afresh (export/decoder_search.py) on these `val`
    tracks, as distillation and finetuning tune theirs."""
    from dataclasses import replace

    from export.backends import sigmoid
    from export.decoder_search import tune_decoder
    from train.data.dataset import Dataset

    dataset = Dataset(plan.data, sample_rate=card.sample_rate)
    val = {f: sigmoid(v) for f, v in val_logits.items()}
    tuned = tune_decoder(val, {f: dataset.events(f) for f in val}, list(card.labels),
                         card.frame_rate_hz, duration_quantile=duration_quantile)
    return replace(card, thresholds=tuned.thresholds, decoder=tuned.decoders,
                   undetectable_labels=tuned.undetectable)


def score_model(plan: Plan, logits: Mapping[str, np.ndarray], card: Any) -> Scored:
    """Per-file items, checked against export.verify's scoring of the same tracks."""
    from edge_runtime.contract.events import events_to_frames
    from export.backends import sigmoid
    from export.verify import score_tracks as verify_score
    from train.data.dataset import Dataset
    from train.evaluate import reference_events

    dataset = Dataset(plan.data, sample_rate=card.sample_rate)
    rate, decoder = card.frame_rate_hz, card.decoder_config()
    probs = {f: sigmoid(v) for f, v in logits.items()}
    targets = {f: events_to_frames(dataset.events(f), dataset.labels, len(p), rate)
               for f, p in probs.items()}
    reference, snr = reference_events(dataset, list(probs))
    scored = score_tracks(probs, targets, dataset.labels, rate, reference, snr, decoder)
    report, _, _ = verify_score(dataset, dict(logits), rate, decoder)
    ones = np.ones((1, len(probs)), dtype=np.int64)
    mine = (frame_macro_ap(list(scored.frames.values()), ones)[0],
            event_f1_micro(list(scored.events.values()), ones)[0])
    theirs = (report["frame_ap"]["macro"], report["event"]["micro"]["f1"])
    if not np.allclose(mine, theirs, atol=1e-9, equal_nan=True):
        raise RuntimeError(f"bootstrap items disagree with export.verify's scoring: {mine} vs "
                           f"{theirs}")
    return scored
