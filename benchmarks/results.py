"""Gather the benchmark JSONs under benchmarks/out/ into one table: benchmarks/RESULTS.md.

Every figure carries the command that produced it (each script records its own command line),
and every target from DESIGN.md is marked met or MISSED. `make bench` runs the scripts and
then this.

A section whose JSON is absent (benchmarks/out is scratch space, not kept in git: a fresh
checkout has none of it) keeps its rows from the RESULTS.md being replaced, verbatim with
their commands, and says so with the date they were written; with --no-carry, or when that
file has none, it is listed as not run. Rows are never filled in from anything else.

    python benchmarks/results.py [--out-dir benchmarks/out] [--write benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.stats import format_interval

Row = tuple[str, str, str, str]  # (what, measured, target or "", command)


def _verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err}); rerun the benchmark") from None


CLAIM_VERDICTS = {"met": "met", "missed": "**MISSED**",
                  "inconclusive": "inconclusive (the 95% CI spans the bound)",
                  "undefined": "undefined (nothing to score)"}


def student_setup(result: dict) -> str:
    """", log-mel hop 160 samples, teacher term focal": the students' non-default settings."""
    hop = result.get("student_hop_length") or 0
    kd = result.get("kd_loss", "bce")
    warm = result.get("warm_steps") or 0
    return ((f", log-mel hop {hop} samples" if hop else "")
            + (f", teacher term {kd}" if kd != "bce" else "")
            + (f", warm-started from the label-only student and taught {warm} steps at lr "
               f"{result.get('warm_lr', 1e-3):g}" if warm else ""))


def export_rows(result: dict) -> list[Row]:
    """Per model: footprint, latency and quality with CIs; then every claim with its verdict,
    judged by export_table.py on the CI (met / MISSED / inconclusive)."""
    cmd = result.get("command", "python benchmarks/export_table.py")
    if "models" not in result:
        return [("export table", "JSON from an older benchmarks/export_table.py", "rerun it",
                 cmd)]
    students = student_setup(result)
    setup = (f" (synth `{result['preset']}`, seeds {', '.join(map(str, result['seeds']))}"
             f"{'; students:' + students.lstrip(',') if students else ''}: mean over seeds [95% paired bootstrap CI over files]"
             + ("; a --quick smoke run, its numbers mean little" if result.get("quick") else "")
             + ")")
    rows: list[Row] = []
    for m in result["models"].values():
        rows.append((f"{m['title']}: parameters / size ({m['size_kind']})",
                     f"{m['parameters']:,} / {m['size_bytes'] / 1024:.0f} KiB", "", cmd))
        lat = m.get("latency")
        if lat:
            rows.append((f"{m['title']}: 1-thread ms per audio second (model + numpy front end)",
                         f"{lat['total_ms_per_audio_s']:.2f} ({lat['model_ms_per_audio_s']:.2f} "
                         f"+ {lat['frontend_ms_per_audio_s']:.2f})", "", cmd))
        rows += _quality_rows(m, cmd)
    for m in result.get("members", {}).values():  # an ensemble teacher's members alone
        rows += _quality_rows(m, cmd)
    for c in result["claims"]:
        rows.append((f"claim: {c['claim']} ({c['statistic']})", c["measured"],
                     f"{c['target']}: {CLAIM_VERDICTS[c['verdict']]}", cmd))
    if rows:
        rows[0] = (rows[0][0] + setup, *rows[0][1:])
    return rows


def _quality_rows(model: dict, cmd: str) -> list[Row]:
    return [(f"{model['title']}: frame macro AP / event F1 / event recall >= 10 dB on `{split}`",
             " / ".join(format_interval(cell.get(k))
                        for k in ("frame_macro_ap", "event_f1", "recall_high_snr")), "", cmd)
            for split, cell in model["splits"].items()]


def _bound(value: float | None, target: float | None, fmt: str, above: bool = False) -> str:
    """'<= 1.5x: met' (or '>= ...' with `above`); '' without a target or a value."""
    if target is None or value is None:
        return ""
    ok = value >= target if above else value <= target
    return f"{'>=' if above else '<='} {fmt.format(target)}: {_verdict(ok)}"


def runtime_rows(result: dict) -> list[Row]:
    rows, cmd = [], result.get("command", "python benchmarks/runtime_bench.py")
    targets = result.get("targets", {})
    for r in result["results"]:
        m, ms = r["model"], r.get("ms_per_audio_s", {})
        tag = f"{m['name']} ({m['quantization']}, hop {m['hop_s']:g} s)"
        rows += [
            (f"{tag}: real-time factor, 1 thread", f"{r['real_time_factor']:.4f}",
             _bound(r["real_time_factor"], targets.get("real_time_factor"), "{}"), cmd),
        ]
        if ms:
            rows += [
                (f"{tag}: ms per audio second: whole process (start-up removed) / bare "
                 "invoke() loop", f"{ms['process']:.3f} / {ms['bare_invoke_loop']:.3f}", "",
                 cmd),
                (f"{tag}: ms per audio second in process: invoke() / front end alone / "
                 "window stitching + tensors / decoder",
                 f"{ms['invoke_in_process']:.3f} / {ms['frontend']:.3f} / "
                 f"{ms['window_stitching_and_tensors']:.3f} / {ms['decoder']:.3f}", "", cmd),
            ]
        if "birdnet_over_process" in r:
            rows.append((f"{tag}: BirdNET V2.4 FP32 bare invoke() / whole process",
                         f"{r['birdnet_over_process']:.1f}x",
                         _bound(r["birdnet_over_process"], targets.get("birdnet_over_process"),
                                "{}x", above=True), cmd))
        rows += [
            (f"{tag}: pipeline time / (invoke() + front end)",
             f"{r['e2e_over_invoke_plus_frontend']:.2f}x",
             _bound(r["e2e_over_invoke_plus_frontend"],
                    targets.get("e2e_over_invoke_plus_frontend"), "{}x"), cmd),
            (f"{tag}: peak RSS (VmHWM), edge-runtime", f"{r['peak_rss_mb']:.0f} MB",
             _bound(r["peak_rss_mb"], targets.get("peak_rss_mb"), "{} MB"), cmd),
        ]
        an = r.get("analyze_one_worker")
        if an:
            rows.append((f"{tag}: peak RSS (VmHWM), meerkit analyze --workers 1",
                         f"{an['peak_rss_mb']:.0f} MB",
                         _bound(an["peak_rss_mb"], targets.get("analyze_peak_rss_mb"), "{} MB"),
                         cmd))
        start = r.get("startup")
        if start:
            rows.append((f"{tag}: start-up, launch -> first window (median / max of "
                         f"{start['runs']})", f"{start['first_window_median_s']:.2f} / "
                         f"{start['first_window_max_s']:.2f} s",
                         _bound(start["first_window_max_s"], targets.get("startup_s"), "{} s"),
                         cmd))
        for lat in r.get("latency_profiles") or [r["latency"]]:
            median, worst = lat.get("latency_median_s"), lat.get("latency_max_s")
            if median is None:
                continue
            where = (f"hop {lat['hop_s']:g} s, block {lat['block_s']:g} s: "
                     if "hop_s" in lat else "")
            bound = lat.get("bound")
            why = (f" (bound {bound['structural_s']:.2f} s: frames final "
                   f"{bound['frames_final_s']:.2f} + merge gap {bound['merge_gap_s']:.2f})"
                   if bound else "")
            rows.append((f"{tag}: {where}call end -> MQTT arrival, median / max{why}",
                         f"{median:.2f} / {worst:.2f} s (n={lat['detections']})",
                         _bound(worst, targets.get("latency_s"), "{} s (max)"), cmd))
    for rate, cost in result.get("resampling", {}).get("ms_per_audio_s", {}).items():
        what = (f"resampling {int(rate) / 1000:g} kHz -> 16 kHz (soxr HQ), ms per audio second"
                if rate != "16000" else "conformer at the model's rate (pass-through), ms per "
                                        "audio second")
        rows.append((what, f"{cost:.3f}", "", cmd))
    birdnet = result.get("birdnet", {})
    if "invoke_ms_per_audio_s" in birdnet:
        rows.append(("BirdNET V2.4 FP32 bare invoke(), 1 thread, ms per audio second",
                     f"{birdnet['invoke_ms_per_audio_s']:.2f}", "", cmd))
    elif birdnet.get("skipped"):
        rows.append(("BirdNET V2.4 FP32 anchor", f"skipped: {birdnet['skipped']}", "", cmd))
    return rows


def train_rows(result: dict) -> list[Row]:
    """Hypotheses H1-H5 (benchmarks/README.md) as train_table.py judged them on paired
    bootstrap CIs, each row of its tables, and the best teacher against DESIGN.md's targets."""
    cmd = result.get("command", "python benchmarks/train_table.py")
    if not isinstance(result.get("rows"), dict) or "claims" not in result:
        return [("train table", "JSON from an older benchmarks/train_table.py", "rerun it", cmd)]
    setup = (f" (synth `{result['preset']}`, seeds {', '.join(map(str, result['seeds']))}, tiny "
             f"teacher, pretraining {result['pretrain_steps']} / finetuning "
             f"{result['finetune_steps']} steps: mean over seeds [95% paired bootstrap CI over "
             "files]" + ("; a --quick smoke run, its numbers mean little"
                         if result.get("quick") else "") + ")")
    rows: list[Row] = []
    shown = dict.fromkeys(key for table in result["tables"] for key in table["rows"])
    for key in shown:
        r = result["rows"][key]
        for split, cell in r["splits"].items():
            if "event_f1" in cell:
                what = "frame macro AP / event F1 / event recall >= 10 dB"
                value = " / ".join(format_interval(cell.get(k)) for k in (
                    "frame_macro_ap", "event_f1", "recall_high_snr"))
            else:
                what, value = "frame macro AP", format_interval(cell.get("frame_macro_ap"))
            rows.append((f"{r['title']}: {what} on `{split}`", value, "", cmd))
    recipe = result.get("recipe")
    if recipe:
        scores = ", ".join(f"{name} {c['val_macro_ap']:.3f}" if c["val_macro_ap"] is not None
                           else f"{name} n/a" for name, c in recipe["candidates"].items())
        rows.append(("from-pretrained recipe, chosen on `val` (frame macro AP)",
                     f"{recipe['chosen']} ({scores})", "", cmd))
    for c in result["claims"]:
        rows.append((f"{c['hypothesis']}: {c['claim']}", c["measured"], c["verdict"], cmd))
    for t in result.get("targets", []):
        rows.append((t["what"], format_interval(t),
                     f">= {t['bound']:g}: {CLAIM_VERDICTS[t['verdict']]}", cmd))
    if rows:
        rows[0] = (rows[0][0] + setup, *rows[0][1:])
    return rows


def soak_rows(result: dict) -> list[Row]:
    """benchmarks/soak.py: nothing lost or duplicated through broker outages and a kill -9,
    and memory that stays flat (DESIGN.md's reliability numbers)."""
    cmd = result.get("command", "python benchmarks/soak.py")
    s, ev = result["settings"], result["events"]
    setup = (f"{s['audio_minutes']:g} min of audio at {s['speed']:g}x, broker down "
             f"{len(s['outages'])} times, SIGKILL at {s['kill_audio_s']} s of audio")
    rows: list[Row] = [
        (f"soak ({setup}): events expected / published / received (distinct)",
         f"{ev['expected']} / {ev['published']} / {ev['received_distinct']}", "", cmd),
        ("soak: lost / duplicates after de-duplication", f"{ev['lost']} / "
         f"{ev['duplicates_after_dedup']}", f"0 / 0: {_verdict(not ev['lost'] and not ev['duplicates_after_dedup'])}", cmd),
        ("soak: outbox depth, max (PNG: benchmarks/out/soak/soak.png)",
         str(result["outbox_depth"]["max"]), "", cmd),
    ]
    for r in result["rss"]:
        rows.append((f"soak: edge-runtime #{r['process']} (exit {r['exit']}) RSS start / end / "
                     f"max, MB", f"{r['start_mb']:.1f} / {r['end_mb']:.1f} / {r['max_mb']:.1f}",
                     f"flat within 5 MB: {_verdict(r['flat'])}", cmd))
    return rows


def lookahead_rows(result: dict) -> list[Row]:
    """benchmarks/lookahead_bench.py: what a bounded lookahead (lower latency) costs."""
    cmd = result.get("command", "python benchmarks/lookahead_bench.py")
    rows: list[Row] = []
    for r in result["rows"]:
        ahead = "centred" if r["lookahead_s"] is None else f"{r['lookahead_s']:g} s"
        rows.append((f"lookahead {ahead} at hop {r['hop_s']:g} s ({result['split']}, "
                     f"{result['files']} files): frame macro AP / event F1 / latency bound",
                     f"{r['frame_macro_ap']:.3f} / {r['event_f1']:.3f} / "
                     f"{r['latency_bound_s']:.2f} s", "", cmd))
    return rows


def decoder_rows(result: dict) -> list[Row]:
    """benchmarks/decoder_table.py: per model and split, recall at >= 10 dB and event F1 with
    and without the cap, and the paired difference."""
    cmd = result.get("command", "python benchmarks/decoder_table.py")
    rows: list[Row] = []
    for model, by_split in result["metrics"].items():
        for split, cells in by_split.items():
            for name, c in cells.items():
                rows.append((f"{model} ({result['teacher_model']} run), {name} on `{split}`: "
                             f"uncapped -> capped at the {result['quantile']:g} quantile "
                             "(capped - uncapped)",
                             f"{format_interval(c['uncapped'])} -> {format_interval(c['capped'])} "
                             f"({format_interval(c['capped - uncapped'])})", "", cmd))
    return rows


SECTIONS = (  # title, JSON file(s) under out-dir, row builder
    ("training", ("train/train_table.json",), train_rows),
    # Session 9: the `small` teacher on a pulsed recorder imprint (`--model small
    # --whine-pulse-s 0.5`), the setup built for H2 and H3; session 7's tiny-teacher table
    # above stays.
    ("training, `small` teacher, pulsed imprint", ("train/train_table_small_pulse.json",),
     train_rows),
    ("export", ("export_table.json",), export_rows),
    # The same students from the 50-fps-token `small` teacher (session 8: both teachers were
    # run; neither is a choice made on `test`).
    ("export, `small` teacher", ("export_table_small_focal.json",), export_rows),
    # Session 9: students taught by the ensemble of both teachers (`--teacher-model
    # small+small100`); its teacher row is the ensemble.
    ("export, teacher ensemble", ("export_table_ensemble.json",), export_rows),
    # The same with students trained 3000 steps (`--distill-steps 3000`): both outgrow it.
    ("export, teacher ensemble, 3000-step students", ("export_table_ensemble_d3000.json",),
     export_rows),
    # Session 10: students taught by the `small` teacher together with the seed's own
    # label-only student (`--teacher-model small+baseline --distill-steps 3000`); the
    # teacher row is that ensemble, not the animal2vec teacher alone.
    ("export, teacher + label-only student ensemble, 3000-step students",
     ("export_table_cobase_d3000.json",), export_rows),
    # Session 12: the same, but the student starts from the seed's label-only student and is
    # taught 1500 more steps (`--warm-start-steps 1500`), beside the label-only student
    # continued as long without a teacher (the compute-matched control).
    ("export, warm start from the label-only student",
     ("export_table_warm_w1500.json",), export_rows),
    # The decoders of the ensemble run re-tuned on val with and without the duration cap.
    ("decoder duration cap", ("decoder_table.json",), decoder_rows),
    ("edge runtime", ("runtime_bench.json", "runtime_bench_hop0.2.json"), runtime_rows),
    # The 100-fps students (export table `--student-hop-length 160`): their own section, so
    # the 50-fps student's rows stay (carried) when only these are rerun.
    ("edge runtime, 100-fps student", ("runtime_bench_h160.json",), runtime_rows),
    ("latency vs lookahead", ("lookahead_bench.json",), lookahead_rows),
    ("reliability", ("soak/soak.json",), soak_rows),
)


NOT_MEASURED = (
    "GPU throughput (bf16, torchrun): no GPU was available to the sessions that produced "
    "this table.",
)


_CARRIED = "carried over unchanged from the RESULTS.md written "
_DATE = r"(\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC)"


def previous_rows(text: str) -> tuple[dict[str, list[Row]], dict[str, str]]:
    """The rows of an earlier RESULTS.md by section, their command labels resolved to the
    commands, and when each section was written (a carried section keeps its first date)."""
    commands = dict(re.findall(r"^- (C\d+): `(.*)`$", text, flags=re.M))
    written = re.search(r"Written by .*? on " + _DATE, text)
    rows: dict[str, list[Row]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 5 and cells[4] in commands:
            title, what, value, target, label = cells
            rows.setdefault(title, []).append((what, value, target, commands[label]))
    dates = {title: written.group(1) if written else "earlier" for title in rows}
    dates.update(re.findall(r"^- (.+?): " + _CARRIED + _DATE, text, flags=re.M))
    return rows, dates


def render(out_dir: Path, previous: str = "") -> str:
    """One table (a section column groups it); each row names its command, listed below.
    `previous`: the RESULTS.md being replaced, whose rows stand in for absent JSONs."""
    table = ["| section | what | measured | target | command |", "|---|---|---|---|---|"]
    commands: dict[str, str] = {}  # command -> label
    notes, missing = [], []
    carried, written = previous_rows(previous)
    for title, files, build in SECTIONS:
        found = [(f, r) for f, r in ((f, _load(out_dir / f)) for f in files) if r is not None]
        if not found and carried.get(title):
            for what, value, target, cmd in carried[title]:
                label = commands.setdefault(cmd, f"C{len(commands) + 1}")
                table.append(f"| {title} | {what} | {value} | {target} | {label} |")
            notes.append(f"{title}: {_CARRIED}{written[title]} (no `{out_dir / files[0]}` on "
                         "this machine; its command reruns it).")
            continue
        if not found:
            missing.append(f"{title}: not run (no `{out_dir / files[0]}`).")
            continue
        for f, result in found:
            for what, value, target, cmd in build(result):
                label = commands.setdefault(cmd, f"C{len(commands) + 1}")
                table.append(f"| {title} | {what} | {value} | {target} | {label} |")
            extra = []
            for key, scale in (("wall_s", 60), ("minutes", 1)):
                if key in result:  # both scripts reuse finished runs/artifacts in their folder
                    extra.append(f"its last invocation took {result[key] / scale:.0f} min "
                                 "(runs already on disk are reused, not redone)")
            machine = result.get("machine")
            if isinstance(machine, dict) and "load_average" in machine:
                extra.append(f"load average {machine['load_average'][0]:.1f}")
            if extra:
                notes.append(f"`{f}`: {', '.join(extra)}.")
    lines = [
        "# Measured results",
        "",
        f"Written by `python benchmarks/results.py` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from the JSON files in `{out_dir}` "
        f"({platform.machine()}, Python {platform.python_version()}). `make bench` reruns "
        "everything (several hours on a 2-core machine). Targets are DESIGN.md's.",
        "",
        *table,
        "",
        "Commands (run from the repository root):",
        "",
        *(f"- {label}: `{cmd}`" for cmd, label in commands.items()),
        "",
        *(f"- {note}" for note in notes + missing),
        "",
        "## Not measured",
        "",
        *(f"- {item}" for item in NOT_MEASURED),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--write", type=Path, default=Path("benchmarks/RESULTS.md"))
    parser.add_argument("--no-carry", action="store_true",
                        help="list sections without a JSON as not run, instead of keeping "
                             "their rows from the file being replaced")
    args = parser.parse_args(argv)
    previous = "" if args.no_carry or not args.write.is_file() else args.write.read_text()
    text = render(args.out_dir, previous)
    args.write.write_text(text)
    print(text)
    print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
