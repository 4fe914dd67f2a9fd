"""The costly half of `train_table.py`: the runs (pretraining, probes, teachers, label-only
students) and their tracks on a split, each built once and reused (benchmarks/runs.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.runs import digest, run_once, say
from benchmarks.scoring import Scored, finite, score_tracks
from benchmarks.train_claims import pct, seed_report
from benchmarks.train_plan import Plan, selection
from edge_runtime.contract.metrics import HIGH_SNR_KEY


def build_pretrained(plan: Plan, seed: int, progress: bool, t0: float) -> float:
    import torch

    from train.engine import RunOptions, Runtime
    from train.pretrain import pretrain

    path = plan.pretrained(seed)

    def build(resume: bool) -> None:
        say(t0, f"seed {seed}: pretraining ({plan.pretrain_steps} steps"
                 f"{', resumed' if resume else ''})")
        pretrain(RunOptions(plan.data, path.parent, ("pretrain", "train"), plan.clip_s, seed,
                            resume, checkpoint_every=max(10, plan.pretrain_steps // 5),
                            progress=progress),
                 plan.model_config(), plan.pretrain_config(), Runtime(torch.device("cpu")))

    model = {} if plan.model == "tiny" else {"model": plan.model_config().to_dict()}
    return run_once(path, {"data": digest(plan.data / "synth.json"), "seed": seed,
                           "config": plan.pretrain_config().to_dict(), "clip_s": plan.clip_s,
                           **model},
                    plan.pretrain_command(seed), build)


def build_probe(plan: Plan, kind: str, seed: int, t0: float) -> float:
    """The probe's `test` tracks of the pretrained or a random-init model (npz)."""
    from train.checkpoint import load_model
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files
    from train.probe import probe, random_init_model

    path = plan.probe(kind, seed)

    def build(_: bool) -> None:
        say(t0, f"seed {seed}: linear probe of the {kind} model")
        pre, _ = load_model(plan.pretrained(seed))
        dataset = Dataset(plan.data, sample_rate=pre.config.sample_rate)
        train = select_files(dataset, "train")
        model = pre if kind == "pretrained" else random_init_model(
            pre.config, dataset, train, plan.clip_s, seed)
        report = probe(model, dataset, train, {"test": select_files(dataset, "test")},
                       plan.clip_s, seed=seed, keep_tracks=True)
        save_tracks(path, *report["splits"]["test"]["tracks"])

    return run_once(path, {"pretrained": digest(plan.pretrained(seed)), "kind": kind,
                           "seed": seed, "clip_s": plan.clip_s},
                    plan.probe_command(kind, seed), build)


def build_teacher(plan: Plan, budget: str, seed: int, progress: bool, t0: float,
                  recipe: str | None = None, heads: str = "none", frac: float = 0.0) -> float:
    import torch

    from train.engine import RunOptions, Runtime
    from train.finetune import finetune

    path = plan.teacher(budget, seed, recipe, heads, frac)
    config = plan.finetune_config(recipe, heads, frac)
    init = None if recipe is None else plan.pretrained(seed)

    def build(resume: bool) -> None:
        what = "from scratch" if recipe is None else f"from pretraining ({recipe})"
        extra = "" if heads == "none" else f", {heads} heads" + (
            f", {pct(frac)} of metadata hidden" if frac else "")
        say(t0, f"seed {seed}: finetuning {what} on {budget}{extra} ({plan.finetune_steps} "
                 f"steps{', resumed' if resume else ''})")
        finetune(RunOptions(plan.data, path.parent, (selection(budget),), plan.clip_s, seed,
                            resume, checkpoint_every=max(10, plan.finetune_steps // 5),
                            progress=progress),
                 plan.model_config(), config, Runtime(torch.device("cpu")), init=init)

    inputs = {"data": digest(plan.data / "synth.json"), "seed": seed, "budget": budget,
              "config": config.to_dict(), "clip_s": plan.clip_s,
              "init": None if init is None else digest(init),
              **({} if plan.model == "tiny" else {"model": plan.model_config().to_dict()})}
    return run_once(path, inputs, plan.finetune_command(budget, seed, recipe, heads, frac), build)


def build_student(plan: Plan, budget: str, seed: int, progress: bool, t0: float) -> float:
    from export.distill import distill

    path = plan.student(budget, seed)
    config = plan.distill_config(budget, seed)

    def build(_: bool) -> None:
        say(t0, f"seed {seed}: label-only student on {budget} ({plan.distill_steps} steps)")
        distill(None, plan.data, path, config, progress=progress)

    return run_once(path, {"data": digest(plan.data / "synth.json"), **config.to_dict()},
                    plan.distill_command(budget, seed), build)


def save_tracks(path: Path, probs: Mapping[str, np.ndarray],
                 targets: Mapping[str, np.ndarray]) -> None:
    files = list(probs)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, files=np.array(files), **{f"p{k}": probs[f] for k, f in enumerate(files)},
             **{f"t{k}": targets[f] for k, f in enumerate(files)})
    tmp.replace(path)


def load_tracks(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(path) as saved:
        files = [str(f) for f in saved["files"]]
        return ({f: saved[f"p{k}"] for k, f in enumerate(files)},
                {f: saved[f"t{k}"] for k, f in enumerate(files)})


def model_tracks(plan: Plan, model: Path, split: str, command: str
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Any, float]:
    """(probabilities and targets per file, the model's card, minutes they took): a teacher
    over consecutive clips (as it was validated), a student over its deployment windows;
    cached beside the model, keyed by its digest."""
    from edge_runtime.contract.events import events_to_frames
    from export.backends import geometry, sigmoid, track_files
    from export.source import load_source
    from train.data.dataset import Dataset
    from train.data.torch_data import select_files
    from train.evaluate import predict_files

    source = load_source(model)
    card = source.card
    dataset = Dataset(plan.data, sample_rate=card.sample_rate)
    files = select_files(dataset, split)
    out = plan.tracks(model, split)

    def build(_: bool) -> None:
        if source.kind == "teacher":
            from train.checkpoint import load_model

            teacher, _ = load_model(model)
            probs, targets = predict_files(lambda a: teacher(a).frame_logits, dataset, files,
                                           plan.clip_s, card.frame_rate_hz, 32)
        else:
            logits = track_files(source.window_fn(), geometry(card), dataset, files)
            probs = {f: sigmoid(v) for f, v in logits.items()}
            targets = {f: events_to_frames(dataset.events(f), dataset.labels, len(p),
                                           card.frame_rate_hz) for f, p in probs.items()}
        save_tracks(out, probs, targets)

    minutes = run_once(out, {"model": digest(model), "split": split, "files": files,
                             "clip_s": plan.clip_s}, command, build)
    probs, targets = load_tracks(out)
    return probs, targets, card, minutes


def score_model(plan: Plan, probs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                card: Any) -> Scored:
    """Per-file items with the model's own decoder, checked against `score_files`."""
    from train.data.dataset import Dataset
    from train.evaluate import reference_events, score_files

    dataset = Dataset(plan.data, sample_rate=card.sample_rate)
    decoder = card.decoder_config()
    reference, snr = reference_events(dataset, list(probs))
    scored = score_tracks(probs, targets, dataset.labels, card.frame_rate_hz, reference, snr,
                          decoder)
    mine = seed_report(scored, dataset.labels)
    report = score_files(dataset, dict(probs), dict(targets), card.frame_rate_hz, decoder)
    theirs = report["event_recall_by_snr"] or {}
    pairs = [(mine["frame_macro_ap"], report["frame_ap"]["macro"]),
             (mine["event_f1"], report["event"]["micro"]["f1"]),
             (mine["recall_high_snr"], theirs.get(HIGH_SNR_KEY, {}).get("recall", math.nan))]
    if not all(np.isclose(a, b, atol=1e-9, equal_nan=True) for a, b in pairs):
        raise RuntimeError(f"bootstrap items disagree with score_files: {pairs}")
    return scored


def val_ap(model: Path) -> float | None:
    """The val frame macro AP of the model's own selected checkpoint."""
    from train.engine import load_checkpoint

    val = (load_checkpoint(model).get("extra") or {}).get("val") or {}
    return finite((val.get("frame_ap") or {}).get("macro"))
