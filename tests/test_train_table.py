"""benchmarks/train_table.py: scoring, aggregation over seeds, paired comparisons and the
verdicts on H1-H5, on synthetic per-file tracks (no training); and that the printed commands
rebuild the configs the benchmark trains with."""

import argparse
import math
import shlex
import subprocess

import numpy as np
import pytest

from benchmarks.scoring import judge, score_tracks
from benchmarks.train_claims import (
    NO_GATE,
    PRETRAINED_CANDIDATES,
    System,
    assemble,
    choose_recipe,
    compare,
    direction,
    render_markdown,
    seed_report,
    summarise,
)
from benchmarks.train_plan import Plan
from edge_runtime.contract.events import Event, decode_events, events_to_frames
from edge_runtime.contract.metrics import event_recall_by_snr, event_scores, frame_average_precision
from train.config import FinetuneConfig, ModelConfig

LABELS = ("up", "down")
FR = 10.0  # frames per second
FRAMES = 60


def world(n_files=16, seed=0):
    """Two calls per file (one per class, 1 s each) with SNRs: (events, snr, targets)."""
    rng = np.random.default_rng(seed)
    events, snr, targets = [], [], {}
    for k in range(n_files):
        f = f"f{k:02d}.wav"
        calls = [Event(label, start, start + 1.0, file=f)
                 for label, start in zip(LABELS, rng.integers(0, 45, 2) / FR, strict=True)]
        targets[f] = events_to_frames(calls, LABELS, FRAMES, FR)
        events += calls
        snr += [float(rng.choice([3.0, 15.0])) for _ in calls]
    return events, snr, targets


def tracks(targets, skill, seed):
    """Probabilities that carry `skill` (0..1) about the targets."""
    rng = np.random.default_rng(seed)
    return {f: np.round(np.clip((1 - skill) * rng.random(t.shape) + skill * t, 0, 1), 3)
            .astype(np.float32) for f, t in targets.items()}


def scored(skill, seed, split_seed=0, events=True):
    ref, snr, targets = world(seed=split_seed)
    return score_tracks(tracks(targets, skill, seed), targets, LABELS, FR, ref, snr,
                        events=events)


def system(title, skills, kind="teacher", val=None, splits=("test",), seeds=None):
    seeds = list(range(len(skills))) if seeds is None else seeds
    runs = {s: [scored(k, 100 * i + 7, split_seed=j, events=kind != "probe")
                for i, k in zip(seeds, skills, strict=True)] for j, s in enumerate(splits)}
    return System(title, kind, title, seeds, runs, list(val or [None] * len(skills)))


def test_seed_report_matches_the_evaluation_code_on_the_same_tracks():
    ref, snr, targets = world()
    probs = tracks(targets, 0.5, 1)
    run = score_tracks(probs, targets, LABELS, FR, ref, snr)
    report = seed_report(run, LABELS)
    truth = np.concatenate(list(targets.values()))
    ap = frame_average_precision(truth, np.concatenate(list(probs.values())), LABELS)
    predicted = [e for f in probs for e in decode_events(probs[f], LABELS, FR, None, file=f)]
    events = event_scores(ref, predicted, iou=0.0, labels=LABELS)["micro"]
    high = event_recall_by_snr(ref, snr, predicted, iou=0.0, labels=LABELS)[">=10 dB"]
    assert report["frame_macro_ap"] == pytest.approx(ap["macro"])
    assert report["per_class_ap"] == pytest.approx(ap["per_class"])
    for key in ("precision", "recall", "f1"):
        assert report[f"event_{key}"] == pytest.approx(events[key])
    assert report["recall_high_snr"] == pytest.approx(high["recall"])
    assert 0 < report["event_f1"] < 1  # neither trivially perfect nor empty


def test_summary_is_the_mean_over_seeds_with_an_interval_around_it():
    runs = [scored(0.4, 1), scored(0.6, 2)]
    cell = summarise(runs, LABELS, n_boot=200)
    per_seed = [seed_report(r, LABELS) for r in runs]
    ap = cell["frame_macro_ap"]
    assert ap["per_seed"] == pytest.approx([r["frame_macro_ap"] for r in per_seed])
    assert ap["mean"] == pytest.approx(np.mean(ap["per_seed"]))
    assert ap["lo"] < ap["mean"] < ap["hi"]
    assert cell["event_precision"] == pytest.approx(np.mean([r["event_precision"]
                                                             for r in per_seed]))
    for label in LABELS:
        assert cell["per_class_ap"][label] == pytest.approx(
            np.mean([r["per_class_ap"][label] for r in per_seed]))
    probe = summarise([scored(0.4, 1, events=False)], LABELS, n_boot=50)
    assert "event_f1" not in probe and "recall_high_snr" not in probe


def test_a_paired_difference_says_which_side_of_zero_it_is_on():
    good, bad = [scored(0.7, 1), scored(0.7, 2)], [scored(0.2, 3), scored(0.2, 4)]
    better = compare(good, bad, n_boot=200)
    assert better["direction"] == "positive" and better["lo"] > 0
    assert better["mean"] == pytest.approx(better["mean_a"] - better["mean_b"])
    assert compare(bad, good, n_boot=200)["direction"] == "negative"
    same = compare(good, good, n_boot=50)
    assert same["mean"] == 0 and same["direction"] == "spans 0"
    assert direction(-0.1, 0.2) == "spans 0" and direction(None, 0.2) == "undefined"
    assert direction(math.nan, 0.2) == "undefined"


def test_targets_are_judged_on_the_interval():
    # The training targets count the bound itself as met (train_claims.targets).
    assert judge(0.76, 0.80, 0.75, inclusive=True) == "met"
    assert judge(0.75, 0.80, 0.75, inclusive=True) == "met"
    assert judge(0.60, 0.74, 0.75, inclusive=True) == "missed"
    assert judge(0.70, 0.80, 0.75, inclusive=True) == "inconclusive"
    assert judge(None, None, 0.75, inclusive=True) == "undefined"


def test_recipe_choice_takes_the_best_val_score_and_the_first_of_ties():
    assert choose_recipe({"llrd": 0.3, "uniform_lr": 0.5, "frozen_frontend": 0.1}) == "uniform_lr"
    assert choose_recipe({"llrd": 0.5, "uniform_lr": 0.5}) == "llrd"
    assert choose_recipe({"llrd": None, "uniform_lr": math.nan, "frozen": 0.0}) == "frozen"
    assert choose_recipe({"llrd": None, "uniform_lr": None}) == "llrd"


def systems(probe_gain: float):
    """A full set of rows: pretraining helps at the smallest budget; the adversarial head
    helps on `shift`; heads with metadata hidden sit at the no-heads level."""
    both = ("test", "shift")
    out = {"probe/pretrained": system("probe pre", [0.3 + probe_gain] * 2, "probe"),
           "probe/random": system("probe rnd", [0.3, 0.3], "probe")}
    for budget, gain in (("train_10pct", 0.4), ("train", 0.0)):
        splits = both if budget == "train" else ("test",)
        out[f"{budget}/scratch"] = system(f"scratch {budget}", [0.2, 0.2], val=[0.5, 0.5],
                                          splits=splits)
        out[f"{budget}/pretrained"] = system(f"pre {budget}", [0.2 + gain] * 2,
                                             val=[0.4, 0.4])
        out[f"{budget}/labels_only"] = system(f"student {budget}", [0.1, 0.1], "student",
                                              val=[0.9, 0.9], splits=splits)
    out["meta/standard"] = system("standard", [0.2, 0.2], val=[0.1, 0.1], splits=both)
    out["meta/adversarial"] = system("adversarial", [0.6, 0.6], val=[0.1, 0.1], splits=both)
    for heads in ("standard", "adversarial"):
        for frac in (0.5, 0.9):  # one seed only, compared with the same seed of no heads
            out[f"meta/{heads}@{frac:g}"] = system(f"{heads} {frac}", [0.2], splits=both)
    return out


def claims_by(result):
    return {(c["hypothesis"], c["claim"]): c for c in result["claims"]}


@pytest.mark.parametrize("probe_gain", [0.5, 0.0])
def test_verdicts_follow_the_intervals_and_the_probe_gate(probe_gain):
    result = assemble(systems(probe_gain), LABELS, ("train_10pct", "train"), n_boot=200,
                      commands={k: k for k in ("probe pre", "probe rnd")})
    by = {(c["hypothesis"], c["a"], c["split"]): c for c in result["comparisons"]}
    gate = by[("H1", "probe/pretrained", "test")]
    passed = probe_gain > 0
    assert result["gate"]["passed"] is passed
    assert gate["verdict"] == ("gate passed" if passed else "gate failed")
    h2 = by[("H2", "train_10pct/pretrained", "test")]
    assert h2["direction"] == "positive"
    assert h2["verdict"] == ("holds" if passed else NO_GATE)  # measured, but not evidence
    assert by[("H2", "train/pretrained", "test")]["verdict"] == (
        "reported: not shown (CI spans 0)" if passed else NO_GATE)
    h3 = by[("H3", "meta/adversarial", "shift")]
    assert h3["verdict"] == "holds" and h3["claim"]
    assert by[("H3", "meta/adversarial", "test")]["verdict"] == "reported: holds"
    assert by[("H4", "meta/standard", "shift")]["verdict"] == "not shown (CI spans 0)"
    h5 = by[("H5", "meta/standard@0.9", "shift")]
    assert h5["seeds"] == [0] and h5["verdict"] == "stable, not worse than no heads"
    claims = [c for c in result["claims"] if c["hypothesis"] == "H2"]
    assert claims[0]["verdict"] == h2["verdict"] and "10 %" in claims[0]["claim"]
    assert claims[-1]["verdict"] == ("shrinks" if passed else NO_GATE)  # +0.4 then ~0
    # the best teacher is chosen on val (the 10 % scratch row), not on test
    assert [t["row"] for t in result["targets"]] == ["train_10pct/scratch"] * 2
    assert result["targets"][0]["verdict"] == "missed"  # AP ~0.2 against 0.75


def test_a_run_that_stopped_on_a_non_finite_loss_is_h5s_verdict():
    rows = {k: v for k, v in systems(0.5).items() if k != "meta/standard@0.9"}
    why = "seed 0: non-finite loss nan at step 12"
    result = assemble(rows, LABELS, ("train_10pct", "train"), n_boot=50,
                      unstable={"meta/standard@0.9": why})
    stopped = [c for c in result["comparisons"] if c["a"] == "meta/standard@0.9"]
    assert [c["split"] for c in stopped] == ["test", "shift"]
    assert all(c["verdict"] == f"unstable: {why}" and c["mean"] is None for c in stopped)
    assert "meta/standard@0.9" not in result["rows"]
    trend = next(c for c in result["claims"] if "standard heads' gain" in c["claim"])
    assert "90 % missing: n/a" in trend["measured"] and trend["verdict"] == "undefined"


def test_rows_of_absent_systems_are_left_out_and_the_markdown_names_every_command():
    some = {k: v for k, v in systems(0.5).items() if not k.startswith(("meta/", "train/"))}
    commands = {"probe pre": "meerkit train probe --model P", "probe rnd": "meerkit train "
                "probe --random-init", **{s.command: f"cmd {s.command}" for s in some.values()}}
    result = assemble(some, LABELS, ("train_10pct", "train"), n_boot=50, command="python x",
                      preset="tiny", seeds=[0, 1], clip_s=2.0, pretrain_steps=10,
                      finetune_steps=10, distill_steps=10, commands=commands,
                      recipe={"budget": "train_10pct", "seed": 0, "chosen": "llrd",
                              "candidates": {"llrd": {"val_macro_ap": 0.4},
                                             "uniform_lr": {"val_macro_ap": None}}})
    assert [t["name"] for t in result["tables"]] == ["probe", "budget"]
    assert {c["hypothesis"] for c in result["comparisons"]} == {"H1", "H2"}
    text = render_markdown(result)
    assert "| probe pre | `test` |" in text and "| H2 | pre train_10pct - scratch" in text
    assert "**llrd**" in text and "uniform_lr n/a" in text
    for k, cmd in enumerate(commands.values(), start=1):
        assert f"- C{k} (" in text and cmd in text
    # a per-seed partial run that was given the recipe says so instead of scoring candidates
    given = assemble(some, LABELS, ("train_10pct", "train"), n_boot=50, command="python x",
                     preset="tiny", seeds=[1], clip_s=2.0, pretrain_steps=10,
                     finetune_steps=10, distill_steps=10, commands=commands,
                     recipe={"budget": "train_10pct", "seed": 1, "chosen": "llrd",
                             "given": True, "candidates": {"llrd": {"val_macro_ap": None}}})
    text = render_markdown(given)
    assert "**llrd**, given (--recipe)" in text and "chosen on `val`" not in text


def test_an_unknown_recipe_is_refused_before_anything_runs(capsys):
    import benchmarks.train_table as tt

    with pytest.raises(SystemExit) as stop:
        tt.main(["--recipe", "bogus", "--work", "/nonexistent"])
    assert stop.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


def test_printed_commands_rebuild_the_configs_the_benchmark_trains_with(tmp_path):
    from train.cli import _configs, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    plan = Plan(tmp_path, "tiny", 2.0, 16, 40, 30, 20)
    runs = [(None, "none", 0.0), (None, "standard", 0.5), (None, "adversarial", 0.9),
            *((r, "none", 0.0) for r in PRETRAINED_CANDIDATES)]
    for recipe, heads, frac in runs:
        args = parser.parse_args(shlex.split(plan.finetune_command("train_10pct", 3, recipe,
                                                                   heads, frac))[1:])
        assert _configs(args, "finetune")[1] == plan.finetune_config(recipe, heads, frac)
        assert (args.seed, args.splits, args.clip_s) == (3, "subset:train_10pct", 2.0)
        assert (args.init is not None) == (recipe is not None)
    args = parser.parse_args(shlex.split(plan.pretrain_command(3))[1:])
    assert _configs(args, "pretrain")[1] == plan.pretrain_config()
    assert args.splits == "pretrain,train"


def test_the_teacher_model_names_its_runs_and_commands(tmp_path):
    from train.cli import _configs, register

    tiny = Plan(tmp_path, "default", 2.0, 16, 1500, 600, 1500)
    small = Plan(tmp_path, "default", 2.0, 16, 1500, 600, 1500, model="small")
    # tiny keeps the folder names of runs made before the option existed
    assert tiny.pretrained(0).parts[-4] == "default_pre1500"
    assert small.pretrained(0).parts[-4] == "default_small_pre1500"
    assert small.teacher("train", 0).parts[-4] == "default_small_ft600"
    assert small.teacher("train", 0, "llrd").parts[-4] == "default_small_pre1500_ft600"
    assert tiny.student("train", 0) == small.student("train", 0)  # no teacher involved
    assert small.model_config() == ModelConfig.small()
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    for recipe in (None, "llrd"):
        args = parser.parse_args(shlex.split(small.finetune_command("train", 0, recipe))[1:])
        assert _configs(args, "finetune")[0] == ModelConfig.small()
        assert _configs(args, "finetune")[1] == small.finetune_config(recipe)
    args = parser.parse_args(shlex.split(small.pretrain_command(0))[1:])
    assert _configs(args, "pretrain") == (ModelConfig.small(), small.pretrain_config())
    assert "--preset small" in small.probe_command("random", 0)
    pulsed = Plan(tmp_path, "default", 2.0, 16, 1500, 600, 1500, "tcn_small", "small", 0.5)
    assert pulsed.data.name == "synth_default_pulse0.5"
    assert pulsed.synth_config().whine_pulse_s == 0.5 and tiny.synth_config().whine_pulse_s == 0
    assert pulsed.pretrained(0).parts[-4] == "default_pulse0.5_small_pre1500"
    assert pulsed.student("train", 0).parts[-4] == "default_pulse0.5_labels_only_tcn_small_d1500"
    assert pulsed.synth_command().endswith("--whine-pulse-s 0.5")
    assert "--whine-pulse-s" not in tiny.synth_command()


def test_the_printed_loops_expand_the_seed_in_a_shell(tmp_path):
    plan = Plan(tmp_path, "tiny", 2.0, 16, 40, 30, 20)
    for make in (lambda s: plan.finetune_command("train_10pct", s, "llrd", "adversarial", 0.5),
                 lambda s: plan.probe_command("pretrained", s),
                 lambda s: plan.distill_command("train", s)):
        shown = make("$s")
        out = subprocess.run(["bash", "-c", f"s=3; printf '%s\\n' {shown}"], check=True,
                             capture_output=True, text=True).stdout.splitlines()
        assert out == shlex.split(make(3))


def test_the_from_pretrained_recipe_and_the_init_flag():
    from train.cli import _configs, register

    config = FinetuneConfig.from_pretrained(steps=400)
    assert (config.freeze_encoder_steps, config.layer_lr_decay) == (40, 0.75)
    assert config.train_feature_encoder
    assert FinetuneConfig.from_pretrained(steps=400, layer_lr_decay=1.0).layer_lr_decay == 1.0
    with pytest.raises(Exception, match="metadata_missing_frac"):
        FinetuneConfig(metadata_missing_frac=1.5)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    base = ["train", "finetune", "--data", "d", "--out", "o", "--steps", "200"]
    plain = _configs(parser.parse_args(base), "finetune")[1]
    assert plain.layer_lr_decay == 1.0  # from scratch: the scratch recipe
    init = _configs(parser.parse_args([*base, "--init", "pre.pt"]), "finetune")[1]
    assert (init.freeze_encoder_steps, init.layer_lr_decay) == (20, 0.75)
    assert init.steps == 200 and init.lr == plain.lr  # the schedule still applies
    mine = _configs(parser.parse_args([*base, "--init", "pre.pt", "--set",
                                       "freeze_encoder_steps=5", "--set", "layer_lr_decay=1"]),
                    "finetune")[1]
    assert (mine.freeze_encoder_steps, mine.layer_lr_decay) == (5, 1.0)


def test_a_gain_that_falls_past_zero_shrinks():
    from benchmarks.train_claims import _trend

    assert _trend([0.015, 0.0, -0.005]) == "shrinks"  # H5's heads: the gain goes, then turns
    assert _trend([-0.02, -0.01, 0.0]) == "shrinks"  # a loss that goes away
    assert _trend([0.002, 0.004, -0.004]) == "does not shrink"  # H2 here: up before down
    assert _trend([0.01, None]) == "undefined"
