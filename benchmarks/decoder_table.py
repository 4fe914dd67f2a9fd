"""Does capping the decoder's minimum duration keep loud short calls? The export table's models
re-tuned on `val` with and without the cap, scored on `test` and `shift`.

For each model of an export-table run (`--teacher-model`, `--student-hop-length`, `--kd-loss`
as export_table.py takes them; every run must already be on disk) and each seed: its tracks
over `val` and the scored splits (export_table.py `model_tracks`, cached beside the model),
its decoder tuned on `val` twice by export/decoder_search.py, once for event F1 alone and once
with the minimum duration capped at the `--quantile` of each label's `val` reference durations
(`duration_quantile`). Both decoders run on the same tracks, so frame AP is unchanged and the
comparison is paired: event recall at >= 10 dB SNR and event F1 (micro), means over seeds with
95 % bootstrap CIs over files, and the CI of capped minus uncapped.

    python benchmarks/decoder_table.py --teacher-model small+small100 --student-hop-length 160 \\
        --kd-loss focal

Run time: about a minute per seed once the export table's runs exist (the `val` tracks of
each model are computed once and cached).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` itself

from benchmarks.runs import finish, run_script, say
from benchmarks.scoring import Scored, finite, interval
from benchmarks.stats import (
    event_f1_micro,
    event_recall_high_snr,
    format_interval,
    paired_bootstrap_diff,
)

MODELS = ("teacher", "student_int8", "baseline")
DECODERS = ("uncapped", "capped")
METRICS = {"recall_high_snr": event_recall_high_snr, "event_f1": event_f1_micro}


def compare(scored: Mapping[str, Mapping[str, Mapping[str, Sequence[Scored]]]], n_boot: int
            ) -> dict[str, Any]:
    """{model: {split: {metric: {decoder: interval, "capped - uncapped": difference}}}} from
    scored[model][decoder][split] = one Scored per seed."""
    out: dict[str, Any] = {}
    for model, by_decoder in scored.items():
        out[model] = {}
        for split in by_decoder["capped"]:
            cells: dict[str, Any] = {}
            for name, metric in METRICS.items():
                runs = {d: [r.events for r in by_decoder[d][split]] for d in DECODERS}
                d = paired_bootstrap_diff(runs["capped"], runs["uncapped"], metric, n_boot)
                cells[name] = {**{k: interval(v, metric, n_boot) for k, v in runs.items()},
                               "capped - uncapped": {"mean": finite(d.mean), "lo": finite(d.lo),
                                                     "hi": finite(d.hi)}}
            out[model][split] = cells
    return out


def render_markdown(result: Mapping[str, Any]) -> str:
    lines = [f"decoder minimum duration capped at the {result['quantile']:g} quantile of each "
             f"label's `val` durations (seeds {result['seeds']}; mean [95 % CI over files])",
             "", "| model | split | metric | uncapped | capped | capped - uncapped |",
             "|---|---|---|---|---|---|"]
    for model, by_split in result["metrics"].items():
        for split, cells in by_split.items():
            for name, c in cells.items():
                cells_text = " | ".join(format_interval(c[k]) for k in (
                    "uncapped", "capped", "capped - uncapped"))
                lines.append(f"| {model} | {split} | {name} | {cells_text} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    parser.add_argument("--preset", default="default", help="synth preset of the export run")
    parser.add_argument("--arch", default="tcn_small")
    parser.add_argument("--teacher-model", default="small",
                        choices=("tiny", "small", "small100", "small+small100"))
    parser.add_argument("--teacher-steps", type=int, default=3000)
    parser.add_argument("--distill-steps", type=int, default=1500)
    parser.add_argument("--student-hop-length", type=int, default=0, metavar="SAMPLES")
    parser.add_argument("--kd-loss", choices=("bce", "focal"), default="bce")
    parser.add_argument("--clip-s", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--quantile", type=float, default=None,
                        help="the cap's quantile (default: decoder_search.DURATION_QUANTILE)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/export"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/decoder_table.json"))
    args = parser.parse_args(argv)
    seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})

    from benchmarks import invocation
    from benchmarks.export_plan import Plan
    from benchmarks.export_tracks import model_tracks, retuned, score_model
    from edge_runtime.contract.errors import UserError
    from export.decoder_search import DURATION_QUANTILE

    quantile = DURATION_QUANTILE if args.quantile is None else args.quantile
    plan = Plan(args.work, args.preset, args.arch, args.teacher_steps, args.distill_steps,
                args.clip_s, args.batch_size, args.teacher_model, args.student_hop_length,
                args.kd_loss)
    for seed in seeds:
        for model in MODELS:
            for path in (plan.teachers(seed) if model == "teacher" else [plan.path(model, seed)]):
                if not path.is_file():
                    raise UserError(f"{path}: not built; run benchmarks/export_table.py with "
                                    "the same options first")
    t0 = time.perf_counter()
    splits = ("test", "shift")
    scored = {m: {d: {s: [] for s in splits} for d in DECODERS} for m in MODELS}
    built = 0.0
    for seed in seeds:
        for model in MODELS:
            say(t0, f"seed {seed}: {model}")
            val, card, minutes = model_tracks(plan, model, seed, "val", progress=False)
            built += minutes
            cards = {"uncapped": retuned(plan, card, val),
                     "capped": retuned(plan, card, val, duration_quantile=quantile)}
            for split in splits:
                logits, _, minutes = model_tracks(plan, model, seed, split, progress=False)
                built += minutes
                for name, c in cards.items():
                    scored[model][name][split].append(score_model(plan, logits, c))
    result = {"command": invocation(), "quantile": quantile, "seeds": seeds,
              "teacher_model": args.teacher_model, "student_hop_length": args.student_hop_length,
              "kd_loss": args.kd_loss, "n_boot": args.n_boot,
              "metrics": compare(scored, args.n_boot)}
    return finish(result, args.out, t0, built, render_markdown)


if __name__ == "__main__":
    run_script(main)
