"""Do the seed papers' claims hold? Hypotheses H1-H5 of benchmarks/README.md, measured on
synth `default` with the tiny teacher (2 s clips) over several training seeds, each claim
judged on a paired bootstrap CI over test files (benchmarks/stats.py).

Per training seed s (--seeds, default 0,1,2; the data is always synth seed 0):
* Pretraining (data2vec) on `pretrain` + `train` audio, 1500 steps (the CPU benchmark
  settings: batch 16, lr 1e-3, EMA 0.99 -> 0.995, fp32), once per seed: pretraining is part of
  the procedure the claims are about, so its own seed-to-seed spread belongs in the mean over
  seeds; it costs about a tenth of the run.
* H1, probe gate: a linear probe (train/probe.py: fit on `train`, scored on `test`) of the
  pretrained model vs a random-init model of the same shape and seed. The gate passes when
  the CI of AP(pretrained) - AP(random) lies above 0; if it does not, every H2 comparison is
  still run and shown but marked "not evidence: probe gate failed".
* H2, label budgets: at train_10pct, train_25pct (synth BUDGET_SUBSETS: >= 10 events per class)
  and `train` (100 %), the teacher finetuned from scratch and from the pretrained model. The
  from-pretrained recipe is chosen once, on `val`, among FinetuneConfig.PRETRAINED_CANDIDATES
  (from_pretrained() and two variants) at the smallest budget with the first seed; the choice
  and every candidate's val AP go into the JSON. (The pretrained side gets this choice and
  scratch does not; both are scored on `test`, which no choice sees.)
* H3/H4, metadata heads, on 100 % of `train`: no heads (the scratch row of H2), standard
  location + time_of_day + day_of_year heads, an adversarial recorder_id head (the heads of
  `meerkit train finetune --meta`); on `test` and `shift`.
* H5: the standard and adversarial rows again with 50 % and 90 % of the files' metadata hidden
  (`metadata_missing_frac`), for --missing-seeds (default: every seed). A run that stops on a
  non-finite loss is H5's answer ("unstable"), not the end of the benchmark.
* Baselines a user would pick instead: the teacher from scratch (a row of every table) and the
  label-only log-mel student (`tcn_small`, export/distill.py without a teacher) at each
  budget, also in the metadata table.

Scoring. Teachers are run over whole files in consecutive clips (train/evaluate.py
`predict_files`, as finetuning validated and tuned them), students through
export/backends.py `track_files` (their deployment windows). Events are decoded with each
model's own decoder tuned on `val` (`load_source(path).card.decoder_config()`). Per row and
split: frame macro AP and event recall at >= 10 dB SNR with 95 % CIs, event P / R / F1 (micro)
and per-class AP, all means over seeds. Comparisons are paired: one file draw shared by every
seed and both systems (over the seeds both have). A difference "holds" when its CI lies above
0, is "reversed" below 0, and is "not shown" when the CI spans 0. The best teacher (by mean
`val` AP) is held to DESIGN.md's targets on `test` (frame macro AP >= 0.75, event recall >=
0.95 at >= 10 dB): met / MISSED / inconclusive, judged on the CI as export_table.py does.

Resumable: every run (pretraining, probe, finetuning, student) and every scored track file is
kept in --work under a folder named by its settings, with a marker of its inputs, and reused on
rerun; an interrupted finetuning or pretraining resumes from its last checkpoint.

    python benchmarks/train_table.py [--seeds 0,1,2] [--finetune-steps 600] [--work DIR]
    python benchmarks/train_table.py --quick --seeds 0      # smoke run: synth tiny, 30 steps

Run time, 2-core x86. `--quick --seeds 0`: 17 min measured (niced, beside other jobs: load
average 4-5 on the 2 cores). The full run is estimated, not measured, from costs measured
under that same load with one thread: 0.48 s per pretraining step, 0.69 s per finetuning step
(tiny model, batch 16, 2 s clips), 0.42 s per student step (batch 32); per audio second 10 ms
to run the teacher, 14 ms a student, 2 ms to tune a decoder, 23 ms for a probe. Per seed:
pretraining 12 min; probes 5 min; 12 finetunings (6 for H2, 2 for H3/H4, 4 for H5) of 600
steps at ~7 min plus ~1 min each of validation (5 x 1000 s of `val`) and decoder tuning,
~97 min; 3 students of 1500 steps at ~11 min plus ~2 min each, ~38 min; scoring ~4 min: about
2.6 h per seed. With 2 recipe candidates (16 min), generating synth `default` and the
bootstrap: about 8 h for 3 seeds under that load, perhaps half on an idle machine (not
measured). `--missing-seeds 0` saves ~32 min per other seed. A rerun with everything on disk
takes minutes (scoring reads the cached tracks; the bootstrap). Each run's minutes are recorded
beside it and summed into the JSON ("built_minutes").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

import numpy as np

from benchmarks.runs import digest, run_once, say
from benchmarks.train_claims import (
    BUDGET_TITLES,
    HEADS,
    MISSING_FRACS,
    SPLITS,
    Scored,
    System,
    assemble,
    choose_recipe,
    finite,
    pct,
    render_markdown,
    score_tracks,
    seed_report,
)
from edge_runtime.contract.metrics import HIGH_SNR_KEY
from train.evaluate import json_safe

# ============================================================================ runs (costly) ==
SEED = "$s"  # the loop variable of the printed commands
_SEED_TOKEN = "SEEDTOKEN"


def _shell(argv: Sequence[str]) -> str:
    """shlex.join, but `$s` stays unquoted so that the shell expands it (single quotes
    would not); the paths this script makes need no other quoting."""
    return shlex.join([a.replace(SEED, _SEED_TOKEN) for a in argv]).replace(_SEED_TOKEN, SEED)


def _selection(budget: str) -> str:
    return budget if budget == "train" else f"subset:{budget}"


@dataclass(frozen=True)
class Plan:
    """Where every run lives (folders named by their settings), its config, and the command
    that rebuilds it."""

    work: Path
    preset: str
    clip_s: float
    batch_size: int
    pretrain_steps: int
    finetune_steps: int
    distill_steps: int
    arch: str = "tcn_small"

    @property
    def data(self) -> Path:
        return self.work / f"synth_{self.preset}"

    # -- paths
    def _pre_root(self, seed: int | str) -> Path:
        return self.work / f"{self.preset}_pre{self.pretrain_steps}" / f"seed{seed}"

    def pretrained(self, seed: int | str) -> Path:
        return self._pre_root(seed) / "pretrain" / "model.pt"

    def probe(self, kind: str, seed: int | str) -> Path:
        return self._pre_root(seed) / f"probe_{kind}.npz"

    def teacher(self, budget: str, seed: int | str, recipe: str | None = None,
                heads: str = "none", frac: float = 0.0) -> Path:
        """A finetuned teacher: from scratch (recipe None) or from pretraining with `recipe`."""
        if recipe is None:
            run = f"{budget}_{heads}" + (f"_missing{frac:g}" if frac else "")
            root = self.work / f"{self.preset}_ft{self.finetune_steps}" / run
        else:
            root = (self.work / f"{self.preset}_pre{self.pretrain_steps}_ft"
                    f"{self.finetune_steps}" / f"{budget}_{recipe}")
        return root / f"seed{seed}" / "model.pt"

    def student(self, budget: str, seed: int | str) -> Path:
        return (self.work / f"{self.preset}_labels_only_{self.arch}_d{self.distill_steps}" /
                budget / f"seed{seed}" / "student.pt")

    @staticmethod
    def tracks(model: Path, split: str) -> Path:
        return model.with_name(f"{model.stem}_tracks_{split}.npz")

    # -- configs
    def pretrain_config(self):
        from train.config import PretrainConfig

        return PretrainConfig(steps=self.pretrain_steps,
                              warmup_steps=max(1, self.pretrain_steps // 10),
                              batch_size=self.batch_size, lr=1e-3, amp="fp32", ema_decay=0.99,
                              ema_end_decay=0.995)

    def finetune_config(self, recipe: str | None = None, heads: str = "none",
                        frac: float = 0.0):
        from train.cli import metadata_heads
        from train.config import FinetuneConfig

        common = dict(steps=self.finetune_steps, warmup_steps=max(1, self.finetune_steps // 10),
                      batch_size=self.batch_size, lr=1e-3, amp="fp32",
                      metadata_heads=metadata_heads(list(HEADS[heads])),
                      metadata_missing_frac=frac)
        if recipe is None:
            return FinetuneConfig(**common, freeze_encoder_steps=0)
        return FinetuneConfig.from_pretrained(**common,
                                              **FinetuneConfig.PRETRAINED_CANDIDATES[recipe])

    def distill_config(self, budget: str, seed: int):
        from export.distill import DistillConfig

        return DistillConfig(arch=self.arch, steps=self.distill_steps, seed=seed,
                             labelled_splits=(_selection(budget),))

    # -- commands (one run; `seed` may be SEED, "$s")
    def _train_flags(self, steps: int, seed: int | str) -> list[str]:
        return ["--preset", "tiny", "--steps", str(steps), "--batch-size", str(self.batch_size),
                "--lr", "0.001", "--amp", "fp32", "--clip-s", f"{self.clip_s:g}", "--seed",
                str(seed), "--device", "cpu", "--set", f"warmup_steps={max(1, steps // 10)}"]

    def pretrain_command(self, seed: int | str) -> str:
        return _shell(["meerkit", "train", "pretrain", "--data", str(self.data), "--out",
                           str(self.pretrained(seed).parent), "--splits", "pretrain,train",
                           *self._train_flags(self.pretrain_steps, seed),
                           "--set", "ema_decay=0.99", "--set", "ema_end_decay=0.995"])

    def probe_command(self, kind: str, seed: int | str) -> str:
        source = (["--model", str(self.pretrained(seed))] if kind == "pretrained"
                  else ["--random-init", "--preset", "tiny"])
        return _shell(["meerkit", "train", "probe", "--data", str(self.data), *source,
                           "--splits", "train", "--eval-splits", "test", "--clip-s",
                           f"{self.clip_s:g}", "--seed", str(seed), "--device", "cpu",
                           "--out", str(self.probe(kind, seed).with_suffix(".json"))])

    def finetune_command(self, budget: str, seed: int | str, recipe: str | None = None,
                         heads: str = "none", frac: float = 0.0) -> str:
        from train.config import FinetuneConfig

        argv = ["meerkit", "train", "finetune", "--data", str(self.data), "--out",
                str(self.teacher(budget, seed, recipe, heads, frac).parent), "--splits",
                _selection(budget), *self._train_flags(self.finetune_steps, seed)]
        if recipe is None:
            argv += ["--set", "freeze_encoder_steps=0"]
        else:
            argv += ["--init", str(self.pretrained(seed))]
            for key, value in FinetuneConfig.PRETRAINED_CANDIDATES[recipe].items():
                argv += ["--set", f"{key}={json.dumps(value)}"]
        for spec in HEADS[heads]:
            argv += ["--meta", spec]
        if frac:
            argv += ["--set", f"metadata_missing_frac={frac:g}"]
        return _shell(argv)

    def distill_command(self, budget: str, seed: int | str) -> str:
        return _shell(["meerkit", "export", "distill", "--labels-only", "--data",
                           str(self.data), "--out", str(self.student(budget, seed)), "--arch",
                           self.arch, "--steps", str(self.distill_steps), "--seed", str(seed),
                           "--labelled", _selection(budget)])


def _loop(seeds: Sequence[int], command: str) -> str:
    return f"for s in {' '.join(map(str, seeds))}; do {command}; done"


def build_pretrained(plan: Plan, seed: int, progress: bool, t0: float) -> float:
    import torch

    from train.config import ModelConfig
    from train.engine import Runtime
    from train.pretrain import RunOptions, pretrain

    path = plan.pretrained(seed)

    def build(resume: bool) -> None:
        say(t0, f"seed {seed}: pretraining ({plan.pretrain_steps} steps"
                 f"{', resumed' if resume else ''})")
        pretrain(RunOptions(plan.data, path.parent, ("pretrain", "train"), plan.clip_s, seed,
                            resume, checkpoint_every=max(10, plan.pretrain_steps // 5),
                            progress=progress),
                 ModelConfig.tiny(), plan.pretrain_config(), Runtime(torch.device("cpu")))

    return run_once(path, {"data": digest(plan.data / "synth.json"), "seed": seed,
                           "config": plan.pretrain_config().to_dict(), "clip_s": plan.clip_s},
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
        _save_tracks(path, *report["splits"]["test"]["tracks"])

    return run_once(path, {"pretrained": digest(plan.pretrained(seed)), "kind": kind,
                           "seed": seed, "clip_s": plan.clip_s},
                    plan.probe_command(kind, seed), build)


def build_teacher(plan: Plan, budget: str, seed: int, progress: bool, t0: float,
                  recipe: str | None = None, heads: str = "none", frac: float = 0.0) -> float:
    import torch

    from train.config import ModelConfig
    from train.engine import Runtime
    from train.finetune import finetune
    from train.pretrain import RunOptions

    path = plan.teacher(budget, seed, recipe, heads, frac)
    config = plan.finetune_config(recipe, heads, frac)
    init = None if recipe is None else plan.pretrained(seed)

    def build(resume: bool) -> None:
        what = "from scratch" if recipe is None else f"from pretraining ({recipe})"
        extra = "" if heads == "none" else f", {heads} heads" + (
            f", {pct(frac)} of metadata hidden" if frac else "")
        say(t0, f"seed {seed}: finetuning {what} on {budget}{extra} ({plan.finetune_steps} "
                 f"steps{', resumed' if resume else ''})")
        finetune(RunOptions(plan.data, path.parent, (_selection(budget),), plan.clip_s, seed,
                            resume, checkpoint_every=max(10, plan.finetune_steps // 5),
                            progress=progress),
                 ModelConfig.tiny(), config, Runtime(torch.device("cpu")), init=init)

    inputs = {"data": digest(plan.data / "synth.json"), "seed": seed, "budget": budget,
              "config": config.to_dict(), "clip_s": plan.clip_s,
              "init": None if init is None else digest(init)}
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


def _save_tracks(path: Path, probs: Mapping[str, np.ndarray],
                 targets: Mapping[str, np.ndarray]) -> None:
    files = list(probs)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, files=np.array(files), **{f"p{k}": probs[f] for k, f in enumerate(files)},
             **{f"t{k}": targets[f] for k, f in enumerate(files)})
    tmp.replace(path)


def _load_tracks(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
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
        _save_tracks(out, probs, targets)

    minutes = run_once(out, {"model": digest(model), "split": split, "files": files,
                             "clip_s": plan.clip_s}, command, build)
    probs, targets = _load_tracks(out)
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


def _val_ap(model: Path) -> float | None:
    """The val frame macro AP of the model's own selected checkpoint."""
    from train.engine import load_checkpoint

    val = (load_checkpoint(model).get("extra") or {}).get("val") or {}
    return finite((val.get("frame_ap") or {}).get("macro"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", help="training seeds, comma-separated (default 0,1,2; "
                        "--quick: 0)")
    parser.add_argument("--missing-seeds", help="seeds of the H5 runs at 50 %% / 90 %% missing "
                        "metadata (default: every seed)")
    parser.add_argument("--preset", help="synth preset (default default; --quick: tiny)")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps (default 1500)")
    parser.add_argument("--finetune-steps", type=int, help="finetuning steps (default 600)")
    parser.add_argument("--distill-steps", type=int, help="label-only student steps "
                        "(default 1500)")
    parser.add_argument("--arch", default="tcn_small", help="label-only student architecture")
    parser.add_argument("--clip-s", type=float, default=2.0, help="teacher clip length (s)")
    parser.add_argument("--batch-size", type=int, default=16, help="teacher batch size")
    parser.add_argument("--n-boot", type=int, help="bootstrap replicates (default 1000)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/train"),
                        help="data, runs and tracks (reused on rerun)")
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/out/train/"
                        "train_table.json; --quick: train_table_quick.json)")
    parser.add_argument("--quick", action="store_true", help="smoke run: synth tiny, 30 steps "
                        "each, 200 replicates")
    args = parser.parse_args(argv)
    full = {"seeds": "0,1,2", "preset": "default", "pretrain_steps": 1500,
            "finetune_steps": 600, "distill_steps": 1500, "n_boot": 1000}
    quick = {"seeds": "0", "preset": "tiny", "pretrain_steps": 30, "finetune_steps": 30,
             "distill_steps": 30, "n_boot": 200} if args.quick else {}
    for key, value in {**full, **quick}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = args.out or Path("benchmarks/out/train") / (
        "train_table_quick.json" if args.quick else "train_table.json")

    def seed_list(text: str, flag: str) -> list[int]:
        try:
            seeds = sorted({int(s) for s in text.split(",") if s.strip()})
        except ValueError:
            parser.error(f"{flag}: comma-separated integers, got {text!r}")
        if not seeds:
            parser.error(f"{flag}: give at least one seed")
        return seeds

    seeds = seed_list(args.seeds, "--seeds")
    missing_seeds = (seed_list(args.missing_seeds, "--missing-seeds")
                     if args.missing_seeds is not None else seeds)
    if not set(missing_seeds) <= set(seeds):
        parser.error("--missing-seeds must be among --seeds (they are compared with the "
                     "no-heads runs of the same seeds)")

    import logging

    import torch

    from benchmarks import invocation
    from train.config import FinetuneConfig
    from train.data.synth import BUDGET_SUBSETS, SynthConfig, generate

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    plan = Plan(args.work, args.preset, args.clip_s, args.batch_size, args.pretrain_steps,
                args.finetune_steps, args.distill_steps, args.arch)
    budgets = (*BUDGET_SUBSETS, "train")
    if not (plan.data / "synth.json").is_file():
        say(t0, f"generating synth '{args.preset}' into {plan.data}")
        generate(SynthConfig.preset(args.preset), plan.data, workers=2, force=True,
                 progress=False)

    built: dict[Path, float] = {}  # minutes each run or track file took when it was built
    unstable: dict[str, str] = {}  # H5 rows whose training stopped on a non-finite loss
    for seed in seeds:
        built[plan.pretrained(seed)] = build_pretrained(plan, seed, progress, t0)
        for kind in ("pretrained", "random"):
            built[plan.probe(kind, seed)] = build_probe(plan, kind, seed, t0)

    def teacher(budget: str, seed: int, recipe: str | None = None, heads: str = "none",
                frac: float = 0.0) -> None:
        built[plan.teacher(budget, seed, recipe, heads, frac)] = build_teacher(
            plan, budget, seed, progress, t0, recipe, heads, frac)

    # The from-pretrained recipe: chosen on val at the smallest budget, first seed.
    candidates = FinetuneConfig.PRETRAINED_CANDIDATES
    for name in candidates:
        teacher(budgets[0], seeds[0], recipe=name)
    val_scores = {name: _val_ap(plan.teacher(budgets[0], seeds[0], name)) for name in candidates}
    chosen = choose_recipe(val_scores)
    say(t0, f"from-pretrained recipe: {chosen} (val AP {val_scores})")
    for seed in seeds:
        for budget in budgets:
            teacher(budget, seed)
            teacher(budget, seed, recipe=chosen)
            built[plan.student(budget, seed)] = build_student(plan, budget, seed, progress, t0)
        for heads in ("standard", "adversarial"):
            teacher("train", seed, heads=heads)
            if seed in missing_seeds:
                for frac in MISSING_FRACS:
                    try:
                        teacher("train", seed, heads=heads, frac=frac)
                    except RuntimeError as err:  # H5 asks whether training stays stable
                        if "non-finite loss" not in str(err):
                            raise
                        unstable.setdefault(f"meta/{heads}@{frac:g}", f"seed {seed}: {err}")
                        say(t0, f"unstable: {err}")

    # -- scoring
    commands = {"data": f"meerkit synth {plan.data} --preset {args.preset} --seed 0",
                "pretrain": _loop(seeds, plan.pretrain_command(SEED))}
    for kind in ("pretrained", "random"):
        commands[f"probe_{kind}"] = _loop(seeds, plan.probe_command(kind, SEED))
    commands["recipe"] = " ; ".join(plan.finetune_command(budgets[0], seeds[0], name)
                                    for name in candidates)
    systems: dict[str, System] = {}
    labels: list[str] = []
    files: dict[str, int] = {}

    def add(key: str, title: str, kind: str, command: str, paths: Mapping[int, Path],
            splits: Sequence[str], command_key: str | None = None) -> None:
        command_key = command_key or key
        commands.setdefault(command_key, command)
        system = System(title, kind, command_key, list(paths), {s: [] for s in splits})
        for seed, path in paths.items():
            if kind == "probe":
                probs, targets = _load_tracks(path)
                system.runs["test"].append(score_tracks(probs, targets, labels,
                                                        math.nan, events=False))
                continue
            system.val_macro_ap.append(_val_ap(path))
            for split in splits:
                say(t0, f"seed {seed}: scoring {key} on {split}")
                probs, targets, card, minutes = model_tracks(plan, path, split, command)
                built[plan.tracks(path, split)] = minutes
                system.runs[split].append(score_model(plan, probs, targets, card))
                files[split] = len(probs)
        systems[key] = system

    from train.data.dataset import Dataset

    labels.extend(Dataset(plan.data).labels)
    for kind, title in (("pretrained", "probe: pretrained features"),
                        ("random", "probe: random-init features")):
        add(f"probe/{kind}", title, "probe", commands[f"probe_{kind}"],
            {s: plan.probe(kind, s) for s in seeds}, ["test"], f"probe_{kind}")
    for budget in budgets:
        share = BUDGET_TITLES.get(budget, budget)
        splits = list(SPLITS) if budget == "train" else ["test"]
        add(f"{budget}/scratch", f"teacher from scratch, {share} labels, no heads", "teacher",
            _loop(seeds, plan.finetune_command(budget, SEED)),
            {s: plan.teacher(budget, s) for s in seeds}, splits)
        add(f"{budget}/pretrained", f"teacher from pretraining ({chosen}), {share} labels",
            "teacher", _loop(seeds, plan.finetune_command(budget, SEED, chosen)),
            {s: plan.teacher(budget, s, chosen) for s in seeds}, ["test"])
        add(f"{budget}/labels_only", f"label-only student ({args.arch}), {share} labels",
            "student", _loop(seeds, plan.distill_command(budget, SEED)),
            {s: plan.student(budget, s) for s in seeds}, splits)
    for heads in ("standard", "adversarial"):
        add(f"meta/{heads}", f"teacher from scratch, 100 % labels, {heads} heads", "teacher",
            _loop(seeds, plan.finetune_command("train", SEED, heads=heads)),
            {s: plan.teacher("train", s, heads=heads) for s in seeds}, list(SPLITS))
        for frac in MISSING_FRACS:
            if f"meta/{heads}@{frac:g}" in unstable:
                continue
            add(f"meta/{heads}@{frac:g}", f"{heads} heads, {pct(frac)} of metadata hidden",
                "teacher", _loop(missing_seeds, plan.finetune_command("train", SEED,
                                                                      heads=heads, frac=frac)),
                {s: plan.teacher("train", s, heads=heads, frac=frac) for s in missing_seeds},
                list(SPLITS))

    say(t0, f"bootstrap ({args.n_boot} replicates)")
    recipe = {"budget": budgets[0], "seed": seeds[0], "chosen": chosen,
              "rule": "highest val frame macro AP of the run's own best checkpoint; ties to "
                      "the first listed",
              "candidates": {name: {"overrides": overrides, "val_macro_ap": val_scores[name],
                                    "config": plan.finetune_config(name).to_dict()}
                             for name, overrides in candidates.items()}}
    result = assemble(
        systems, labels, budgets, args.n_boot, unstable=unstable, command=invocation(),
        quick=args.quick, preset=args.preset, seeds=seeds, missing_seeds=missing_seeds, clip_s=args.clip_s,
        batch_size=args.batch_size, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, distill_steps=args.distill_steps, arch=args.arch,
        pretraining="once per training seed", files=files, recipe=recipe, commands=commands)
    result.update(minutes=(time.perf_counter() - t0) / 60, built_minutes=sum(built.values()),
                  machine={"arch": platform.machine(), "cpus": os.cpu_count(),
                           "load_average": list(os.getloadavg()),
                           "python": platform.python_version(),
                           "torch_threads": torch.get_num_threads()})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(result), indent=2) + "\n")
    print(render_markdown(result))
    print(f"\nwrote {out} ({result['minutes']:.1f} min this run; the runs took "
          f"{result['built_minutes']:.1f} min when built)")
    return 0


if __name__ == "__main__":
    from edge_runtime.contract.errors import UserError

    try:
        sys.exit(main())
    except UserError as err:
        sys.exit(f"error: {err}")
