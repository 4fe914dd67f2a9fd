"""Do the seed papers' claims hold? Hypotheses H1-H5 of benchmarks/README.md, measured on
synth `default` with the tiny teacher (`--model small`: the export table's) (2 s clips) over several training seeds, each claim
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
  from-pretrained recipe is chosen once, on `val`, among PRETRAINED_CANDIDATES
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

Seeds in parallel (2 cores: one single-thread process per seed beats one two-thread process
by ~15 %, as `make demo` measured): run `--seeds 0 --threads 1 --out A.json` until it logs
the from-pretrained recipe it chose, then `--seeds 1 --threads 1 --recipe NAME --out B.json`
and likewise seed 2 beside it; the final `--seeds 0,1,2` run finds every run on disk and
chooses the recipe again from seed 0's candidates.

    python benchmarks/train_table.py [--seeds 0,1,2] [--finetune-steps 600] [--work DIR]
    python benchmarks/train_table.py --quick --seeds 0      # smoke run: synth tiny, 30 steps
    python benchmarks/train_table.py --model small --whine-pulse-s 0.5   # session 8's H2/H3 setup

Run time, 2-core x86. Measured in session 7 (the full run, from nothing): three per-seed
processes side by side, one torch thread each (`--seeds 0 --threads 1`, then `--seeds 1` and
`--seeds 2` with `--recipe uniform_lr`), beside up to six other training processes (load
average 4-7 on the 2 cores): seed 0 (with the three recipe candidates and the H5 runs)
108 min, seeds 1 and 2 (without H5: `--missing-seeds none`) ~100 min each; 308
process-minutes in all, 1.6 h of wall time. Then `--seeds 0,1,2 --missing-seeds 0` to score
and assemble from disk: 1 min. Per-step costs on that machine: pretraining ~0.25 s, a
600-step finetuning 2-4 min, a 1500-step student ~10 min, each beside the others. Earlier
estimates from a slower machine (0.48 s per pretraining step) put it at 4-8 h. Session 9,
`--model small --whine-pulse-s 0.5`: seed 0 (built over sessions 8 and 9, with the recipe
candidates) 120 process-minutes, seeds 1 and 2 56 min each beside 2-4 other processes, H5 at
seed 0 15 min: 246 process-minutes; the assembly 1 min. A rerun with
everything on disk takes minutes. Each run's minutes are recorded beside it and summed into
the JSON ("built_minutes").
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

from benchmarks.runs import finish, run_script, say
from benchmarks.scoring import score_tracks
from benchmarks.train_claims import (
    BUDGET_TITLES,
    MISSING_FRACS,
    PRETRAINED_CANDIDATES,
    SPLITS,
    System,
    assemble,
    choose_recipe,
    pct,
    render_markdown,
)
from benchmarks.train_plan import SEED, Plan, seed_loop
from benchmarks.train_runs import (
    build_pretrained,
    build_probe,
    build_student,
    build_teacher,
    load_tracks,
    model_tracks,
    score_model,
    val_ap,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", help="training seeds, comma-separated (default 0,1,2; "
                        "--quick: 0)")
    parser.add_argument("--missing-seeds", help="seeds of the H5 runs at 50 %% / 90 %% missing "
                        "metadata, or `none` (default: every seed)")
    parser.add_argument("--preset", help="synth preset (default default; --quick: tiny)")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps (default 1500)")
    parser.add_argument("--finetune-steps", type=int, help="finetuning steps (default 600)")
    parser.add_argument("--distill-steps", type=int, help="label-only student steps "
                        "(default 1500)")
    parser.add_argument("--arch", default="tcn_small", help="label-only student architecture")
    parser.add_argument("--model", choices=("tiny", "small", "small100", "base"), default="tiny",
                        help="the teacher's model preset (default tiny; `small`: the export "
                        "table's teacher, ~2x the CPU per step; runs go to their own folders)")
    parser.add_argument("--whine-pulse-s", type=float, default=0.0, metavar="S",
                        help="synth with each recorder's whine pulsed at about this period "
                        "(`meerkit synth --whine-pulse-s`; default 0: steady), an imprint that "
                        "survives per-clip centring (H3); data and runs get their own folders")
    parser.add_argument("--clip-s", type=float, default=2.0, help="teacher clip length (s)")
    parser.add_argument("--batch-size", type=int, default=16, help="teacher batch size")
    parser.add_argument("--n-boot", type=int, help="bootstrap replicates (default 1000)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/train"),
                        help="data, runs and tracks (reused on rerun)")
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/out/train/"
                        "train_table.json; --quick: train_table_quick.json)")
    parser.add_argument("--recipe", choices=sorted(PRETRAINED_CANDIDATES),
                        help="use this from-pretrained recipe instead of choosing it on val "
                        "(for seeds run as separate processes once the first seed's run has "
                        "chosen it; the final run over every seed chooses again, from disk)")
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
    missing_seeds = (seeds if args.missing_seeds is None else [] if args.missing_seeds == "none"
                     else seed_list(args.missing_seeds, "--missing-seeds"))
    if not set(missing_seeds) <= set(seeds):
        parser.error("--missing-seeds must be among --seeds (they are compared with the "
                     "no-heads runs of the same seeds)")

    import logging

    import torch

    from benchmarks import invocation
    from train.data.synth import BUDGET_SUBSETS, generate

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    plan = Plan(args.work, args.preset, args.clip_s, args.batch_size, args.pretrain_steps,
                args.finetune_steps, args.distill_steps, args.arch, args.model,
                args.whine_pulse_s)
    budgets = (*BUDGET_SUBSETS, "train")
    if not (plan.data / "synth.json").is_file():
        say(t0, f"generating synth '{args.preset}' into {plan.data}")
        generate(plan.synth_config(), plan.data, workers=2, force=True,
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
    candidates = PRETRAINED_CANDIDATES
    val_scores: dict[str, float | None] = dict.fromkeys(candidates)
    if args.recipe:
        chosen = args.recipe
        say(t0, f"from-pretrained recipe: {chosen} (given, not chosen)")
    else:
        for name in candidates:
            teacher(budgets[0], seeds[0], recipe=name)
        val_scores = {name: val_ap(plan.teacher(budgets[0], seeds[0], name))
                      for name in candidates}
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
    commands = {"data": plan.synth_command(),
                "pretrain": seed_loop(seeds, plan.pretrain_command(SEED))}
    for kind in ("pretrained", "random"):
        commands[f"probe_{kind}"] = seed_loop(seeds, plan.probe_command(kind, SEED))
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
                probs, targets = load_tracks(path)
                system.runs["test"].append(score_tracks(probs, targets, labels,
                                                        math.nan, events=False))
                continue
            system.val_macro_ap.append(val_ap(path))
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
            seed_loop(seeds, plan.finetune_command(budget, SEED)),
            {s: plan.teacher(budget, s) for s in seeds}, splits)
        add(f"{budget}/pretrained", f"teacher from pretraining ({chosen}), {share} labels",
            "teacher", seed_loop(seeds, plan.finetune_command(budget, SEED, chosen)),
            {s: plan.teacher(budget, s, chosen) for s in seeds}, ["test"])
        add(f"{budget}/labels_only", f"label-only student ({args.arch}), {share} labels",
            "student", seed_loop(seeds, plan.distill_command(budget, SEED)),
            {s: plan.student(budget, s) for s in seeds}, splits)
    for heads in ("standard", "adversarial"):
        add(f"meta/{heads}", f"teacher from scratch, 100 % labels, {heads} heads", "teacher",
            seed_loop(seeds, plan.finetune_command("train", SEED, heads=heads)),
            {s: plan.teacher("train", s, heads=heads) for s in seeds}, list(SPLITS))
        for frac in MISSING_FRACS if missing_seeds else ():
            if f"meta/{heads}@{frac:g}" in unstable:
                continue
            add(f"meta/{heads}@{frac:g}", f"{heads} heads, {pct(frac)} of metadata hidden",
                "teacher", seed_loop(missing_seeds, plan.finetune_command("train", SEED,
                                                                      heads=heads, frac=frac)),
                {s: plan.teacher("train", s, heads=heads, frac=frac) for s in missing_seeds},
                list(SPLITS))

    say(t0, f"bootstrap ({args.n_boot} replicates)")
    recipe = {"budget": budgets[0], "seed": seeds[0], "chosen": chosen,
              "given": bool(args.recipe),
              "rule": "highest val frame macro AP of the run's own best checkpoint; ties to "
                      "the first listed",
              "candidates": {name: {"overrides": overrides, "val_macro_ap": val_scores[name],
                                    "config": plan.finetune_config(name).to_dict()}
                             for name, overrides in candidates.items()}}
    result = assemble(
        systems, labels, budgets, args.n_boot, unstable=unstable, command=invocation(),
        quick=args.quick, preset=args.preset, whine_pulse_s=args.whine_pulse_s, seeds=seeds, missing_seeds=missing_seeds, clip_s=args.clip_s,
        batch_size=args.batch_size, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, distill_steps=args.distill_steps, arch=args.arch,
        model=args.model, pretraining="once per training seed", files=files, recipe=recipe, commands=commands)
    return finish(result, out, t0, sum(built.values()), render_markdown)


if __name__ == "__main__":
    run_script(main)
