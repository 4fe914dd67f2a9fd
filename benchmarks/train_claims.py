"""The pure half of `train_table.py`: per-file tracks -> per-seed reports, seed means with
paired bootstrap CIs over files, the H1-H5 verdicts, the DESIGN targets and the markdown
table. No training here, so tests exercise it on constructed tracks."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from benchmarks.scoring import Scored, finite, interval, judge
from benchmarks.stats import (
    VERDICTS,
    event_f1_micro,
    event_recall_high_snr,
    format_ci,
    format_interval,
    frame_macro_ap,
    paired_bootstrap_diff,
)
from edge_runtime.contract.metrics import HIGH_SNR_KEY, frame_average_precision
from train.evaluate import json_safe

SPLITS = ("test", "shift")
BUDGET_TITLES = {"train_1pct": "1 %", "train_5pct": "5 %", "train_10pct": "10 %",
                 "train_25pct": "25 %", "train": "100 %"}
HEADS = {"none": (), "standard": ("location", "time_of_day", "day_of_year"),
         "adversarial": ("recorder_id=adversarial",)}  # `meerkit train finetune --meta` specs
MISSING_FRACS = (0.5, 0.9)
AP_TARGET = 0.75  # DESIGN.md: best teacher frame macro AP on `test`
RECALL_TARGET = 0.95  # DESIGN.md: best teacher event recall at >= 10 dB SNR on `test`
NO_GATE = "not evidence: probe gate failed"
# What train_table.py chooses among on `val` (at its smallest label budget) to finetune a
# pretrained model: overrides of `FinetuneConfig.from_pretrained()`, the preset first.
PRETRAINED_CANDIDATES: dict[str, dict[str, Any]] = {
    "llrd": {},
    "uniform_lr": {"layer_lr_decay": 1.0},
    "frozen_frontend": {"train_feature_encoder": False},
}


def seed_report(run: Scored, labels: Sequence[str]) -> dict[str, Any]:
    """One seed's figures on all files: what `train.evaluate.score_files` reports (frame AP
    macro and per class, event P / R / F1 micro, recall at >= 10 dB), from the per-file items."""
    files = list(run.frames)
    truth = np.concatenate([run.frames[f][1] for f in files])
    scores = np.concatenate([run.frames[f][0] for f in files])
    ap = frame_average_precision(truth, scores, labels)
    out: dict[str, Any] = {"frame_macro_ap": ap["macro"], "per_class_ap": ap["per_class"]}
    if run.events is not None:
        tp, fp, fn = (int(v) for v in sum(c.per_class for c in run.events.values()).sum(0))
        n, matched = (int(v) for v in sum(c.high_snr for c in run.events.values()))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        out.update(event_precision=precision, event_recall=recall,
                   event_f1=2 * precision * recall / (precision + recall) if tp else 0.0,
                   recall_high_snr=matched / n if n else math.nan)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(kept) if kept else None


def summarise(runs: Sequence[Scored], labels: Sequence[str], n_boot: int,
              boot_seed: int = 0) -> dict[str, Any]:
    """One row on one split: frame macro AP, event F1 and recall at >= 10 dB as the mean over
    seeds with a bootstrap CI over files; event P / R and per-class AP as means over seeds."""
    reports = [seed_report(r, labels) for r in runs]
    cell: dict[str, Any] = {
        "frame_macro_ap": interval([r.frames for r in runs], frame_macro_ap, n_boot, boot_seed),
        "per_class_ap": {k: _mean([rep["per_class_ap"][k] for rep in reports]) for k in labels}}
    if all(r.events is not None for r in runs):
        events = [r.events for r in runs]
        cell["event_f1"] = interval(events, event_f1_micro, n_boot, boot_seed)
        cell["recall_high_snr"] = interval(events, event_recall_high_snr, n_boot, boot_seed)
        for key in ("event_precision", "event_recall"):
            cell[key] = _mean([rep[key] for rep in reports])
    return cell


def direction(lo: float | None, hi: float | None) -> str:
    """Where a difference's CI lies: 'positive', 'negative', 'spans 0' or 'undefined'."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "undefined"
    if lo > 0:
        return "positive"
    if hi < 0:
        return "negative"
    return "spans 0"


def compare(a: Sequence[Scored], b: Sequence[Scored], n_boot: int, boot_seed: int = 0
            ) -> dict[str, Any]:
    """AP(a) - AP(b) (frame macro AP), both averaged over their seeds, on shared file draws."""
    d = paired_bootstrap_diff([r.frames for r in a], [r.frames for r in b], frame_macro_ap,
                              n_boot, boot_seed)
    lo, hi = finite(d.lo), finite(d.hi)
    return {"mean": finite(d.mean), "lo": lo, "hi": hi,
            "frac_positive": finite(d.frac_positive), "mean_a": finite(d.mean_a),
            "mean_b": finite(d.mean_b), "direction": direction(lo, hi)}


def choose_recipe(val_scores: Mapping[str, float | None]) -> str:
    """The candidate with the highest val AP; ties and undefined scores go to the earlier one."""
    if not val_scores:
        raise ValueError("no recipe candidates")
    ranked = [(-(v if v is not None and not math.isnan(v) else -math.inf), k)
              for k, v in enumerate(val_scores.values())]
    return list(val_scores)[min(ranked)[1]]


# ====================================================================== pure: the result ==
@dataclass
class System:
    """One row: a model kind trained the same way over seeds, scored per split and seed."""

    title: str
    kind: str  # "probe" | "teacher" | "student"
    command: str  # key into the commands
    seeds: list[int]
    runs: dict[str, list[Scored]]  # split -> one per seed, in `seeds` order
    val_macro_ap: list[float | None] = field(default_factory=list)  # its own model selection

    def on(self, split: str, seeds: Sequence[int]) -> list[Scored]:
        return [self.runs[split][self.seeds.index(s)] for s in seeds]


def layout(budgets: Sequence[str], fracs: Sequence[float] = MISSING_FRACS
           ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(tables, comparisons) over system keys: probe/*, <budget>/{scratch,pretrained,
    labels_only}, meta/<heads>[@<frac>]. "train/scratch" is also the no-heads row."""
    none = "train/scratch"
    tables = [
        {"name": "probe", "title": "H1 probe gate: linear probe of frozen features",
         "rows": ["probe/pretrained", "probe/random"], "splits": ["test"]},
        {"name": "budget", "title": "H2 label budgets: from scratch vs from the pretrained "
         "model, and the label-only student",
         "rows": [f"{b}/{k}" for b in budgets for k in ("scratch", "pretrained", "labels_only")],
         "splits": ["test"]},
        {"name": "metadata", "title": "H3/H4 metadata heads (100 % labels, from scratch)",
         "rows": [none, "meta/standard", "meta/adversarial", "train/labels_only"],
         "splits": list(SPLITS)},
        {"name": "missing", "title": "H5 metadata heads with metadata hidden",
         "rows": [none, *(f"meta/{h}{'' if not f else f'@{f:g}'}" for h in ("standard",
                  "adversarial") for f in (0.0, *fracs))],
         "splits": list(SPLITS)},
    ]
    comparisons = [{"hypothesis": "H1", "a": "probe/pretrained", "b": "probe/random",
                    "split": "test", "claim": True}]
    for k, b in enumerate(budgets):
        comparisons.append({"hypothesis": "H2", "a": f"{b}/pretrained", "b": f"{b}/scratch",
                            "split": "test", "claim": k == 0})
    for hyp, heads in (("H3", "adversarial"), ("H4", "standard")):
        for split in SPLITS:
            comparisons.append({"hypothesis": hyp, "a": f"meta/{heads}", "b": none,
                                "split": split, "claim": split == "shift"})
    for heads in ("standard", "adversarial"):
        for f in fracs:
            for split in SPLITS:
                comparisons.append({"hypothesis": "H5", "a": f"meta/{heads}@{f:g}", "b": none,
                                    "split": split, "claim": True})
    return tables, comparisons


CLAIM_TEXT = {
    "H1": "pretrained features probe better than random-init features",
    "H2": "finetuning from the pretrained model beats training from scratch",
    "H3": "an adversarial recorder head beats no heads",
    "H4": "standard location/time heads beat no heads",
    "H5": "with metadata hidden, the heads train stably and are no worse than no heads",
}
VERDICT_TEXT = {"positive": "holds", "negative": "reversed", "spans 0": "not shown (CI spans 0)",
                "undefined": "undefined (nothing to score)"}


def _verdict(comparison: Mapping[str, Any], gate_passed: bool) -> str:
    """The claim's verdict from where its CI lies (see the module docstring)."""
    hyp, side = comparison["hypothesis"], comparison["direction"]
    if hyp == "H1":
        return "gate passed" if side == "positive" else "gate failed"
    if comparison.get("unstable"):
        return f"unstable: {comparison['unstable']}"
    if hyp == "H5":  # stable: defined, and not worse than no heads beyond the CI
        return {"negative": "worse than no heads", "undefined": "unstable (undefined AP)"
                }.get(side, "stable, not worse than no heads")
    if hyp == "H2" and not gate_passed:
        return NO_GATE
    if not comparison["claim"]:
        return f"reported: {VERDICT_TEXT[side]}"
    return VERDICT_TEXT[side]


def _trend(values: Sequence[float | None]) -> str:
    """'shrinks' when each value moves toward 0 from the one before, or past it: a gain that
    falls (+0.015, 0.000, -0.005 shrinks) or a loss that rises (point estimates)."""
    if any(v is None for v in values):
        return "undefined"
    shrinking = all(b <= a if a >= 0 else b >= a for a, b in pairwise(values))
    return "shrinks" if shrinking else "does not shrink"


def assemble(systems: Mapping[str, System], labels: Sequence[str], budgets: Sequence[str],
             n_boot: int, fracs: Sequence[float] = MISSING_FRACS, boot_seed: int = 0,
             unstable: Mapping[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    """The JSON this script writes (and benchmarks/results.py reads), from scored systems.
    Tables and comparisons whose systems are absent are left out, except H5 runs that
    stopped on a non-finite loss (`unstable`: system key -> what happened): H5's verdict."""
    unstable = dict(unstable or {})
    tables, planned = layout(budgets, fracs)
    rows: dict[str, Any] = {}
    for key, s in systems.items():
        rows[key] = {"title": s.title, "kind": s.kind, "command": s.command, "seeds": s.seeds,
                     "val_macro_ap": _mean(s.val_macro_ap),
                     "splits": {split: summarise(runs, labels, n_boot, boot_seed)
                                for split, runs in s.runs.items()}}
    comparisons = []
    for c in planned:
        if c["a"] in unstable:
            comparisons.append({**c, "mean": None, "lo": None, "hi": None, "frac_positive": None,
                                "mean_a": None, "mean_b": None, "direction": "undefined",
                                "seeds": [], "title": f"{c['a']} - {c['b']}",
                                "unstable": unstable[c["a"]]})
            continue
        a, b = systems.get(c["a"]), systems.get(c["b"])
        if a is None or b is None or c["split"] not in a.runs or c["split"] not in b.runs:
            continue
        seeds = [s for s in a.seeds if s in b.seeds]
        if not seeds:
            continue
        d = compare(a.on(c["split"], seeds), b.on(c["split"], seeds), n_boot, boot_seed)
        comparisons.append({**c, **d, "seeds": seeds,
                            "title": f"{a.title} - {b.title}"})
    gate = next((c for c in comparisons if c["hypothesis"] == "H1"), None)
    gate_passed = gate is not None and gate["direction"] == "positive"
    for c in comparisons:
        c["verdict"] = _verdict(c, gate_passed)
        c["measured"] = _diff_text(c)
    claims = [{"hypothesis": c["hypothesis"], "claim": _claim_text(c), "measured": c["measured"],
               "verdict": c["verdict"]} for c in comparisons if c["claim"]]
    claims += _trends(comparisons, budgets, fracs, gate_passed)
    claims.sort(key=lambda c: c["hypothesis"])  # stable: trends follow their comparisons
    tables = [{**t, "rows": [k for k in t["rows"] if k in rows]} for t in tables]
    result = {**meta, "n_boot": n_boot, "alpha": 0.05, "labels": list(labels),
              "budgets": list(budgets), "missing_fracs": list(fracs),
              "tables": [t for t in tables if t["rows"]], "rows": rows,
              "comparisons": comparisons,
              "gate": {"passed": gate_passed, **({k: gate[k] for k in ("mean", "lo", "hi")}
                                                  if gate else {})},
              "claims": claims, "targets": targets(rows)}
    return json_safe(result)


def pct(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def _split_of(c: Mapping[str, Any]) -> str:
    return f"`{c['split']}`"


def _claim_text(c: Mapping[str, Any]) -> str:
    what = CLAIM_TEXT[c["hypothesis"]]
    if c["hypothesis"] == "H2":
        budget = c["a"].split("/")[0]
        what += f" at {BUDGET_TITLES.get(budget, budget)} labels"
    if c["hypothesis"] == "H5":
        heads, frac = c["a"].removeprefix("meta/").split("@")
        what = (f"{heads} heads with {pct(float(frac))} of the metadata hidden: train stably, "
                "no worse than no heads")
    return f"{what} on {_split_of(c)} (frame macro AP, paired difference)"


def _diff_text(c: Mapping[str, Any]) -> str:
    if c["mean"] is None:
        return "n/a"
    ci = (format_ci(c["mean"], c["lo"], c["hi"]) if c["lo"] is not None
          else f"{c['mean']:.3f}")
    return f"{ci} ({c['mean_a']:.3f} vs {c['mean_b']:.3f})" if c["mean_a"] is not None and \
        c["mean_b"] is not None else ci


def _trends(comparisons: Sequence[Mapping[str, Any]], budgets: Sequence[str],
            fracs: Sequence[float], gate_passed: bool) -> list[dict[str, Any]]:
    """H2's gap over budgets and H5's gain over missing fractions: point estimates."""
    by = {(c["a"], c["split"]): c["mean"] for c in comparisons}
    out = []
    gaps = [by.get((f"{b}/pretrained", "test")) for b in budgets]
    if len(budgets) > 1 and any(g is not None for g in gaps):
        trend = _trend(gaps)
        out.append({"hypothesis": "H2", "claim": "the gap shrinks as the label budget grows "
                    "(pretrained - scratch on `test`, point estimates)",
                    "measured": ", ".join(f"{BUDGET_TITLES.get(b, b)}: "
                                          f"{'n/a' if g is None else f'{g:+.3f}'}"
                                          for b, g in zip(budgets, gaps, strict=True)),
                    "verdict": trend if gate_passed else NO_GATE})
    for heads in ("standard", "adversarial"):
        gains = [by.get((f"meta/{heads}{'' if not f else f'@{f:g}'}", "shift"))
                 for f in (0.0, *fracs)]
        if all(g is None for g in gains[1:]):
            continue
        out.append({"hypothesis": "H5", "claim": f"the {heads} heads' gain over no heads on "
                    "`shift` shrinks as metadata goes missing (point estimates)",
                    "measured": ", ".join(
                        f"{pct(f)} missing: {'n/a' if g is None else f'{g:+.3f}'}"
                        for f, g in zip((0.0, *fracs), gains, strict=True)),
                    "verdict": _trend(gains)})
    return out


def targets(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """DESIGN.md's quality targets for the best teacher, chosen by its mean `val` AP among the
    teacher rows trained with every seed."""
    most = max((len(r["seeds"]) for r in rows.values()), default=0)
    teachers = {k: r for k, r in rows.items()  # rows with fewer seeds (H5) are not compared
                if r["kind"] == "teacher" and "test" in r["splits"]
                and r.get("val_macro_ap") is not None and len(r["seeds"]) == most}
    if not teachers:
        return []
    key = max(teachers, key=lambda k: teachers[k]["val_macro_ap"])
    test = teachers[key]["splits"]["test"]
    out = []
    for metric, bound, what in (("frame_macro_ap", AP_TARGET, "frame macro AP"),
                                ("recall_high_snr", RECALL_TARGET,
                                 f"event recall at {HIGH_SNR_KEY} SNR")):
        cell = test.get(metric) or {}
        out.append({"what": f"best teacher on `val` ({teachers[key]['title']}): {what} on "
                    "`test`", "row": key, "metric": metric, "mean": cell.get("mean"),
                    "lo": cell.get("lo"), "hi": cell.get("hi"), "bound": bound,
                    "verdict": judge(cell.get("lo"), cell.get("hi"), bound, inclusive=True)})
    return out


# ========================================================================= pure: formatting ==


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_markdown(result: Mapping[str, Any]) -> str:
    """The tables this script prints: one per hypothesis, per-class AP, the comparisons and
    claims, the targets, the recipe choice and the commands."""
    label = {key: f"C{k}" for k, key in enumerate(result["commands"], start=1)}
    rows, labels = result["rows"], result["labels"]
    seeds = ", ".join(map(str, result["seeds"]))
    model = result.get("model", "tiny")
    pulse = result.get("whine_pulse_s") or 0
    synth = f"`{result['preset']}`" + (f" with the whine pulsed (~{pulse:g} s)" if pulse else "")
    lines = [f"Synth {synth}, training seeds {seeds} ({model} teacher, "
             f"{result['clip_s']:g} s clips; pretraining {result['pretrain_steps']}, "
             f"finetuning {result['finetune_steps']}, students {result['distill_steps']} steps"
             f"{'; a --quick smoke run: its numbers mean little' if result.get('quick') else ''}"
             f"): mean over seeds [95 % paired bootstrap CI over files, {result['n_boot']} "
             "replicates]."]
    for t in result["tables"]:
        lines += ["", f"### {t['title']}", "",
                  "| system | split | frame macro AP | event P / R / F1 | event recall >= 10 dB "
                  "| val AP | seeds | run |", "|---|---|---|---|---|---|---|---|"]
        for key in t["rows"]:
            r = rows[key]
            for split in t["splits"]:
                cell = r["splits"].get(split)
                if cell is None:
                    continue
                events = (f"{_num(cell['event_precision'])} / {_num(cell['event_recall'])} / "
                          f"{format_interval(cell['event_f1'])}" if "event_f1" in cell else "-")
                lines.append(f"| {r['title']} | `{split}` | "
                             f"{format_interval(cell['frame_macro_ap'])} | {events} | "
                             f"{format_interval(cell.get('recall_high_snr'))} | "
                             f"{_num(r['val_macro_ap'])} | {len(r['seeds'])} | "
                             f"{label[r['command']]} |")
    lines += ["", "### Per-class frame AP (mean over seeds)", "",
              "| system | split | " + " | ".join(labels) + " |",
              "|---|---|" + "---|" * len(labels)]
    shown = dict.fromkeys(k for t in result["tables"] for k in t["rows"])
    for key in shown:
        for split, cell in rows[key]["splits"].items():
            lines.append(f"| {rows[key]['title']} | `{split}` | "
                         + " | ".join(_num(cell["per_class_ap"].get(k)) for k in labels) + " |")
    lines += ["", "### Paired differences (frame macro AP, a - b)", "",
              "| hyp. | a - b | split | difference (a vs b) | share of replicates > 0 | seeds "
              "| verdict |", "|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        share = "n/a" if c["frac_positive"] is None else f"{c['frac_positive']:.2f}"
        lines.append(f"| {c['hypothesis']} | {c['title']} | `{c['split']}` | {c['measured']} | "
                     f"{share} | {len(c['seeds'])} | {c['verdict']} |")
    lines += ["", "### Claims", "", "| hyp. | claim | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {c['hypothesis']} | {c['claim']} | {c['measured']} | {c['verdict']} |"
              for c in result["claims"]]
    if result["targets"]:
        lines += ["", "### DESIGN.md targets", "", "| target | measured | bound | verdict |",
                  "|---|---|---|---|"]
        lines += [f"| {t['what']} | {format_interval(t)} | >= {t['bound']:g} | "
                  f"{VERDICTS[t['verdict']]} |" for t in result["targets"]]
    recipe = result.get("recipe")
    if recipe:
        scores = ", ".join(f"{name} {_num(c['val_macro_ap'])}"
                           for name, c in recipe["candidates"].items())
        if recipe.get("given"):  # a per-seed partial run: --recipe
            lines += ["", f"From-pretrained recipe: **{recipe['chosen']}**, given (--recipe)."]
        else:
            lines += ["", f"From-pretrained recipe: **{recipe['chosen']}**, chosen on `val` at "
                      f"{BUDGET_TITLES.get(recipe['budget'], recipe['budget'])} labels, seed "
                      f"{recipe['seed']} (val frame macro AP: {scores})."]
    lines += ["", "Commands (from the repository root; `$s` is the seed). The figures, "
              f"intervals and verdicts come from this script: `{result['command']}`", ""]
    lines += [f"- {label[key]} ({key}): `{cmd}`" for key, cmd in result["commands"].items()]
    return "\n".join(lines)
