"""Does distillation keep what the teacher knows? Teacher, distilled student (fp32 and int8)
and a label-only student, over several training seeds, with confidence intervals.

On synth `default` (generated into the work folder if missing), for each seed: a teacher
(`--teacher-model`, default `small`) finetuned from scratch, a student distilled from it
(`tcn_small` by default), the student's int8 TFLite, and a label-only student trained with
the same recipe and no teacher. Every model
runs over whole `test` and `shift` files through the verify machinery (`export.backends`: the
same windows and stitching as the field runtime; the int8 student through the runtime's own
TFLite model); events are decoded with each model's own card decoder, tuned on `val`. Those
per-file tracks are the ones scored and the ones resampled.

Reported per model: frame macro AP, event F1 (micro) and event recall for calls at >= 10 dB
SNR on `test` and `shift`, each the mean over seeds with a 95 % percentile bootstrap CI over
files (benchmarks/stats.py: one file draw shared by every seed and system, so comparisons are
paired); parameters and size (the int8 `.tflite` file; fp32 weights for the others); for the
int8 student, single-thread latency per audio second (numpy front end + interpreter, median
of --runs invocations, one window per hop) and the share of frames whose decisions agree with
the PyTorch student.

Claims (DESIGN.md), each judged on its CI, never on the point estimate alone: `met` when the
interval excludes the bound on the right side, `MISSED` when it excludes it on the wrong side,
`inconclusive` when it contains the bound (more seeds or files would be needed).
* int8 AP >= 95 % of the teacher's (on `test`, on `shift`): the paired difference
  AP(int8) - 0.95 x AP(teacher) against 0. Both terms come from the same file draw, so their
  correlation (hard files are hard for both) narrows the interval, which two separate CIs would
  ignore; and since AP(teacher) > 0, "difference > 0" in a replicate is exactly "ratio > 0.95"
  there, so this interval says what a CI of the ratio of means would (the ratio is shown as a
  point estimate beside it).
* int8 AP >= the label-only student's: the paired difference AP(int8) - AP(label-only) >= 0.
* int8 event F1 >= 0.75 on `test`: the CI of the int8 student's event F1.
* teacher AP >= 0.75 and event recall >= 0.95 at >= 10 dB on `test`: the teacher's CIs.
* size <= 1 MB (the largest int8 file of any seed) and the int8 gate (decisions agree with
  PyTorch on >= 98 % of frames; the worst seed and split): exact, no sampling involved.

`--teacher-model small+small100`: the student is taught by the ensemble of the two teachers
(`meerkit export distill --teacher A --teacher B`: their probabilities averaged at the
student's frames). Each member is trained and found on disk exactly as its own single-teacher
table trains it, and the teacher row and claims are the ensemble's: the members' tracks
averaged the same way, decoded with a decoder tuned for the ensemble on `val`.
`--teacher-model small+baseline`: the second member is the seed's own label-only student
(trained first, then teaching beside the `small` teacher: `--teacher teacher/model.pt
--teacher baseline.pt`); the teacher row is again the ensemble the student learned from, so
its teacher targets say nothing about the animal2vec teacher alone.

Resumable: every finished run (teacher, student, int8, label-only student, scored tracks) is
kept in --work under a folder named by its settings and reused on rerun; a teacher killed
mid-run resumes from its last checkpoint. Runs on the CPU.

    python benchmarks/export_table.py [--seeds 0,1,2] [--teacher-steps 2000] [--distill-steps 1500]
    python benchmarks/export_table.py --quick      # smoke run: synth tiny, 1 seed, 30 steps

Run time, 2-core x86 machine, one torch thread per process. `--quick` (synth tiny, 1 seed,
30 + 30 steps): 2.8 min measured under a load average of 4.9 (niced); half of it is the int8
conversion. The full run (synth `default`, 3 seeds, the `small` teacher's 3000 steps):
measured in session 6 as three processes side by side, one per seed (`--seeds 0 --out
A.json`, likewise 1 and 2; each process is one thread, so two cores serve three), then
`--seeds 0,1,2` to score and assemble from disk: 52 min until the three were built, 1 min for
the assembly, 172 process-minutes in all (teacher 27-28 min, the teacher's tracks over the
3.6 h of `train` + `pretrain` and the student 21 min, int8 conversion and scoring 2 min, per
seed, each beside two others). A process that reaches a run another one is building waits
for it and reuses it (a lock per run, benchmarks/runs.py). A rerun with every run on disk:
1 min. Session 7, with the 400-fps `small` teacher, beside the training table's three
processes (load average 4-7): 40 min for seed 0 (its teacher 17 min), 83-87 min for seeds 1
and 2, 209 process-minutes in all. Every run's minutes are recorded beside it and summed
into the JSON ("built_minutes"). Session 8, 100-fps students with the focal teacher term
(`--student-hop-length 160 --kd-loss focal`), seed 0 alone on one core and seeds 1 and 2
sharing the other: `small` teacher, 30 min for seed 0 (teacher 13 min), 58 min for seeds 1 and
2, 145 process-minutes; `small100`, 38 / 60 / 60 min, 158 process-minutes.
"""

from __future__ import annotations

import os

# Single-thread means the front end too: OpenBLAS threads on a busy 2-core machine turned the
# (100 x 257) @ (257 x 64) mel projection from 0.14 ms into 8 ms. Set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

import numpy as np

from benchmarks.export_claims import SPLITS, assemble, render_markdown
from benchmarks.export_plan import Plan
from benchmarks.export_tracks import model_tracks, score_model
from benchmarks.runs import digest, finish, run_once, run_script, say
from benchmarks.scoring import Scored


def build_runs(plan: Plan, seed: int, progress: bool, t0: float) -> float:
    """Teacher, student, int8 student and label-only student of one seed; minutes they took."""
    import torch

    from export.distill import DistillConfig, distill
    from export.quantize import quantize
    from train.config import FinetuneConfig, model_preset
    from train.engine import RunOptions, Runtime
    from train.finetune import finetune

    cmds = plan.commands([seed])
    data_id = digest(plan.data / "synth.json")
    teachers, student = plan.teachers(seed), plan.path("student_fp32", seed)
    int8, baseline = plan.path("student_int8", seed), plan.path("baseline", seed)
    steps = plan.teacher_steps

    def train_teacher(member: Plan, resume: bool) -> None:
        say(t0, f"seed {seed}: finetuning the {member.teacher_model} teacher ({steps} steps"
                f"{', resumed' if resume else ''})")
        finetune(RunOptions(plan.data, member.path("teacher", seed).parent, ("train",),
                            clip_s=plan.clip_s, seed=seed, resume=resume, progress=progress,
                            checkpoint_every=max(10, steps // 10)),
                 model_preset(member.teacher_model),
                 FinetuneConfig(steps=steps, warmup_steps=steps // 10,
                                batch_size=plan.batch_size, lr=1e-3, freeze_encoder_steps=0,
                                amp="fp32"),
                 Runtime(torch.device("cpu")))

    def distil(teacher_path: list[Path] | None, out: Path, what: str, warm: bool = False
               ) -> None:
        """`warm`: start from the label-only student (plan.warm_steps at plan.warm_lr)."""
        kd = ({"kd_loss": plan.kd_loss, "temperature": plan.kd_temperature}
              if teacher_path is not None else {})
        run = ({"steps": plan.warm_steps, "lr": plan.warm_lr, "init": str(baseline)} if warm
               else {"steps": plan.distill_steps})
        say(t0, f"seed {seed}: distilling {what} ({run['steps']} steps"
                f"{', from the label-only student' if warm else ''})")
        config = DistillConfig(arch=plan.arch, seed=seed, hop_length=plan.student_hop_length,
                               **run, **kd)
        distill(teacher_path, plan.data, out, config, cache_dir=plan.work / "teacher_cache",
                progress=progress)

    def to_int8(_: bool) -> None:
        say(t0, f"seed {seed}: int8 conversion")
        quantize(student, plan.data, int8, force=True, progress=progress)

    # Keyed on the preset's config, not its name: a preset redefined later rebuilds its runs.
    minutes = 0.0
    for member in plan.trained_members:
        minutes += run_once(member.path("teacher", seed),
                            {"data": data_id, "seed": seed, "steps": steps,
                             "model": model_preset(member.teacher_model).to_dict(),
                             "batch_size": plan.batch_size, "clip_s": plan.clip_s},
                            member.commands([seed])["teacher"],
                            lambda resume, m=member: train_teacher(m, resume))
    # the hop only when set, so that markers written before the option still match
    hop = {"hop_length": plan.student_hop_length} if plan.student_hop_length else {}
    kd = {"kd_loss": plan.kd_loss} if plan.kd_loss != "bce" else {}
    # the label-only student first: an ensemble may have it as a member
    minutes += run_once(baseline, {"data": data_id, "arch": plan.arch, "seed": seed,
                                   "steps": plan.distill_steps, **hop}, cmds["baseline"],
                        lambda _: distil(None, baseline, "the label-only student"))
    warm = ({"init": digest(baseline), "warm_steps": plan.warm_steps, "lr": plan.warm_lr}
            if plan.warm_steps else {})
    if warm:  # the compute-matched control: as many steps from the same start, no teacher
        control = plan.path("baseline_continued", seed)
        minutes += run_once(control, {"arch": plan.arch, "seed": seed, **hop, **warm},
                            cmds["baseline_continued"],
                            lambda _: distil(None, control, "the label-only student further",
                                             warm=True))
    # one teacher keeps its digest (not a list), so that runs marked before ensembles match
    taught_by = digest(teachers[0]) if len(teachers) == 1 else [digest(t) for t in teachers]
    minutes += run_once(student, {"teacher": taught_by, "arch": plan.arch, "seed": seed,
                                  "steps": plan.distill_steps, **hop, **kd, **warm},
                        cmds["student_fp32"],
                        lambda _: distil(teachers, student, "the student", warm=bool(warm)))
    minutes += run_once(int8, {"student": digest(student)}, cmds["student_int8"], to_int8)
    return minutes


def latency_ms(path: Path, runs: int) -> dict[str, float]:
    """Median single-thread latency of one window, as ms per audio second (one window per
    hop when streaming): interpreter alone, numpy log-mel front end, and both."""
    from edge_runtime.contract.card import read_card
    from edge_runtime.contract.frontend import logmel
    from export.backends import TFLiteRunner

    card = read_card(path)
    runner = TFLiteRunner(path, threads=1)
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((1, card.window_samples))).astype(np.float32)
    x = logmel(audio, card.frontend, card.sample_rate)
    for _ in range(5):
        runner(x)
    model, front = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        x = logmel(audio, card.frontend, card.sample_rate)
        t1 = time.perf_counter()
        runner(x)
        front.append(t1 - t0)
        model.append(time.perf_counter() - t1)
    per_s = 1000 / card.hop_s
    return {"model_ms_per_audio_s": statistics.median(model) * per_s,
            "frontend_ms_per_audio_s": statistics.median(front) * per_s,
            "total_ms_per_audio_s": (statistics.median(model) + statistics.median(front)) * per_s}


def footprint(model: str, path: Path, card: Any) -> dict[str, Any]:
    """Parameters and size: the file for the int8 artifact, fp32 weights for the others
    (checkpoints carry optimizer-free records of varying overhead)."""
    params = int(card.lineage.get("parameters") or 0)
    if model == "student_int8":
        return {"parameters": params, "size_bytes": path.stat().st_size,
                "size_kind": "int8 .tflite file"}
    return {"parameters": params, "size_bytes": 4 * params, "size_kind": "fp32 weights"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", help="training seeds, comma-separated (default 0,1,2; "
                        "--quick: 0)")
    parser.add_argument("--preset", help="synth preset (default default; --quick: tiny)")
    parser.add_argument("--arch", default="tcn_small", help="student architecture")
    parser.add_argument("--teacher-model", choices=("tiny", "small", "small100", "small+small100",
                                                    "small+baseline", "tiny+baseline"),
                        help="teacher model preset (default small; --quick: tiny); "
                             "small+small100: the student learns from the ensemble of the two "
                             "(each trained as its own table trains it), which is the teacher "
                             "row; small+baseline: the ensemble of the small teacher and the "
                             "seed's own label-only student")
    parser.add_argument("--teacher-steps", type=int, help="finetuning steps (default 3000)")
    parser.add_argument("--distill-steps", type=int, help="student steps (default 1500)")
    parser.add_argument("--student-hop-length", type=int, default=0, metavar="SAMPLES",
                        help="the students' log-mel hop (`meerkit export distill --hop-length`;"
                             " default 0: 20 ms, 50 fps; 160 at 16 kHz: 100 fps)")
    parser.add_argument("--kd-loss", choices=("bce", "focal"), default="bce",
                        help="the distilled student's teacher term (`meerkit export distill "
                             "--kd-loss`): bce (Hinton, T=2) or focal (soft pseudo-labels in "
                             "the label term's focal loss, T=1)")
    parser.add_argument("--warm-start-steps", type=int, default=0, metavar="N",
                        help="the distilled student starts from the seed's label-only student "
                             "and is taught for N steps (`meerkit export distill --init`); the "
                             "label-only student continued N steps without a teacher is added "
                             "as the compute-matched control (default 0: from scratch)")
    parser.add_argument("--warm-lr", type=float, default=1e-3,
                        help="peak learning rate of a warm start and its control (default 1e-3)")
    parser.add_argument("--clip-s", type=float, default=2.0, help="teacher training clips")
    parser.add_argument("--batch-size", type=int, default=16, help="teacher batch size")
    parser.add_argument("--n-boot", type=int, help="bootstrap replicates (default 1000)")
    parser.add_argument("--runs", type=int, default=50, help="latency: median of N invocations")
    parser.add_argument("--threads", type=int, help="torch CPU threads for training "
                        "(default: torch's choice); latency is always one thread")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/export"),
                        help="runs, artifacts and tracks (reused on rerun)")
    parser.add_argument("--out", type=Path, help="JSON (default benchmarks/out/"
                        "export_table.json; --quick: export_table_quick.json)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: synth tiny, 30 + 30 steps, 200 replicates")
    args = parser.parse_args(argv)
    quick = {"seeds": "0", "preset": "tiny", "teacher_model": "tiny", "teacher_steps": 30,
             "distill_steps": 30, "n_boot": 200} if args.quick else {}
    full = {"seeds": "0,1,2", "preset": "default", "teacher_model": "small",
            "teacher_steps": 3000, "distill_steps": 1500, "n_boot": 1000}
    for key, value in {**full, **quick}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    out = args.out or Path("benchmarks/out") / (
        "export_table_quick.json" if args.quick else "export_table.json")
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds: give at least one seed")

    import logging

    import torch

    from benchmarks import invocation
    from export.verify import agreement as agree
    from train.data.synth import SynthConfig, generate

    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = sys.stderr.isatty()
    t0 = time.perf_counter()
    plan = Plan(args.work, args.preset, args.arch, args.teacher_steps, args.distill_steps,
                args.clip_s, args.batch_size, args.teacher_model, args.student_hop_length,
                args.kd_loss, args.warm_start_steps, args.warm_lr)
    if args.warm_start_steps < 0:
        parser.error("--warm-start-steps: give N >= 0")
    if not (plan.data / "synth.json").is_file():
        say(t0, f"generating synth '{args.preset}' into {plan.data}")
        generate(SynthConfig.preset(args.preset), plan.data, workers=2, force=True,
                 progress=False)
    built = sum(build_runs(plan, seed, progress, t0) for seed in seeds)

    scored: dict[str, dict[str, list[Scored]]] = {m: {s: [] for s in SPLITS} for m in plan.models}
    agreement: dict[str, list[float]] = {s: [] for s in SPLITS}
    cards: dict[str, Any] = {}
    for seed in seeds:
        for split in SPLITS:
            say(t0, f"seed {seed}: scoring on {split}")
            logits = {}
            for model in plan.models:
                logits[model], cards[model], minutes = model_tracks(plan, model, seed, split,
                                                                    progress)
                built += minutes
                scored[model][split].append(score_model(plan, logits[model], cards[model]))
            files = list(logits["student_int8"])
            thresholds = np.asarray(cards["student_int8"].thresholds, np.float32)
            agreement[split].append(agree(
                np.concatenate([logits["student_int8"][f] for f in files]),
                np.concatenate([logits["student_fp32"][f] for f in files]),
                thresholds)["frame_agreement"])
    members: dict[str, dict[str, list[Scored]]] = {}
    if len(plan.members) > 1:  # the finetuned members alone, each with its own decoder
        for member in plan.trained_members:
            by_split = members.setdefault(member.teacher_model, {s: [] for s in SPLITS})
            for seed in seeds:
                for split in SPLITS:
                    logits, card, _ = model_tracks(member, "teacher", seed, split, progress)
                    by_split[split].append(score_model(plan, logits, card))
    say(t0, f"bootstrap ({args.n_boot} replicates) and latency ({args.runs} runs)")
    latency = [latency_ms(plan.path("student_int8", s), args.runs) for s in seeds]
    footprints = {m: {**footprint(m, plan.path(m, seeds[0]), cards[m]),
                      "paths": [str(plan.path(m, s)) for s in seeds]} for m in plan.models}
    result = assemble(
        scored, agreement, [plan.path("student_int8", s).stat().st_size for s in seeds],
        latency, footprints, plan.commands(seeds), args.n_boot, members=members,
        command=invocation(), quick=args.quick, preset=args.preset, seeds=seeds,
        arch=args.arch, teacher_model=args.teacher_model, teacher_steps=args.teacher_steps,
        distill_steps=args.distill_steps, student_hop_length=args.student_hop_length,
        kd_loss=args.kd_loss, **({"warm_steps": args.warm_start_steps, "warm_lr": args.warm_lr}
                                 if args.warm_start_steps else {}),
        clip_s=args.clip_s, batch_size=args.batch_size)
    return finish(result, out, t0, built, render_markdown)


if __name__ == "__main__":
    run_script(main)
