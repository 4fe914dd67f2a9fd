"""benchmarks/export_table.py without training: synthetic per-file tracks go through the same
scoring, bootstrap, claims and tables as the real runs, and the verdicts follow the CIs."""

import json

import numpy as np
import pytest

from benchmarks import export_claims as ec
from benchmarks import export_table as et
from benchmarks import export_tracks as tracks
from benchmarks.results import render
from benchmarks.scoring import Scored, judge, score_tracks
from benchmarks.stats import VERDICTS, format_interval, frame_macro_ap
from edge_runtime.contract.events import Event, events_to_frames

LABELS = ("up", "trill")
RATE = 50.0
FRAMES = 250  # 5 s files
N_BOOT = 200


def _world(n_files: int = 24, seed: int = 0):
    """Files with three calls each (15 dB SNR), their frame targets and reference events."""
    rng = np.random.default_rng(seed)
    targets, reference = {}, []
    for k in range(n_files):
        file = f"test/{k:02d}.wav"
        events = [Event(LABELS[(k + j) % 2], s, s + 0.3, file=file)
                  for j, s in enumerate(1.4 * np.arange(3) + rng.uniform(0.1, 0.5))]
        targets[file] = events_to_frames(events, LABELS, FRAMES, RATE)
        reference += events
    return targets, reference, [15.0] * len(reference)


WORLD = _world()


def _scored(noise: float, seed: int) -> Scored:
    """A model whose probabilities are the targets blurred by `noise`."""
    targets, reference, snr = WORLD
    rng = np.random.default_rng(seed)
    probs = {f: np.clip(0.1 + 0.8 * t + noise * rng.standard_normal(t.shape), 0, 1)
             .astype(np.float32) for f, t in targets.items()}
    return score_tracks(probs, targets, LABELS, RATE, reference, snr)


def _system(noise: float, seed: int, seeds: int = 2) -> dict[str, list[Scored]]:
    return {split: [_scored(noise, 1000 * seed + 10 * s + k) for s in range(seeds)]
            for k, split in enumerate(ec.SPLITS)}


def _claim(claims: list[dict], start: str, split: str = "test") -> dict:
    return next(c for c in claims if c["claim"].startswith(start) and c.get("split", split) == split)


@pytest.mark.parametrize(("lo", "hi", "bound", "at_least", "exact", "verdict"), [
    (0.01, 0.20, 0.0, True, False, "met"), (0.0, 0.20, 0.0, True, False, "inconclusive"),
    (-0.01, 0.20, 0.0, True, False, "inconclusive"), (-0.20, -0.01, 0.0, True, False, "missed"),
    (0.70, 0.80, 0.75, True, False, "inconclusive"), (0.76, 0.80, 0.75, True, False, "met"),
    (0.9e6, 1.1e6, 1e6, False, False, "inconclusive"), (0.5e6, 0.9e6, 1e6, False, False, "met"),
    (1e6, 1e6, 1e6, False, True, "met"), (1.1e6, 1.1e6, 1e6, False, True, "missed"),
    (0.98, 0.98, 0.98, True, True, "met"), (0.97, 0.97, 0.98, True, True, "missed"),
    (None, 0.1, 0.0, True, False, "undefined"), (float("nan"), 0.1, 0.0, True, False, "undefined")])
def test_judge_follows_the_interval_not_the_point(lo, hi, bound, at_least, exact, verdict):
    assert judge(lo, hi, bound, at_least, exact) == verdict


def test_perfect_tracks_score_one_and_meet_the_event_targets():
    targets, reference, snr = WORLD
    perfect = score_tracks(targets, targets, LABELS, RATE, reference, snr)
    system = {s: [perfect] for s in ec.SPLITS}
    metrics = ec.model_metrics({"teacher": system, "student_int8": system}, N_BOOT)
    cell = metrics["student_int8"]["test"]
    for key in ("frame_macro_ap", "event_f1", "recall_high_snr"):
        assert cell[key]["mean"] == pytest.approx(1.0)
        assert cell[key]["lo"] == pytest.approx(1.0) and cell[key]["hi"] == pytest.approx(1.0)
    claims = ec.quality_claims({"teacher": system, "student_int8": system}, metrics, N_BOOT)
    assert _claim(claims, "int8 student event F1")["verdict"] == "met"
    assert _claim(claims, "teacher event recall")["verdict"] == "met"
    ratio = _claim(claims, "int8 student frame macro AP >= 95%")
    assert ratio["mean"] == pytest.approx(0.05) and ratio["ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize(("int8_noise", "int8_seed", "verdict"), [
    (0.4, 1, "met"),  # the teacher's own tracks: AP - 0.95 AP = 0.05 AP > 0 in every replicate
    (0.4, 2, "inconclusive"),  # as noisy as the teacher: ratio ~0.98, the CI straddles 0
    (0.5, 2, "missed")])  # noisier: ratio ~0.7, the whole CI below 0
def test_share_of_teacher_claim_flips_where_the_interval_crosses_zero(int8_noise, int8_seed,
                                                                      verdict):
    scored = {"teacher": _system(0.4, 1), "student_int8": _system(int8_noise, int8_seed)}
    metrics = ec.model_metrics(scored, N_BOOT)
    share = _claim(ec.quality_claims(scored, metrics, N_BOOT), "int8 student frame macro AP")
    assert share["verdict"] == verdict
    assert {"met": share["lo"] > 0, "missed": share["hi"] < 0,
            "inconclusive": share["lo"] < 0 < share["hi"]}[verdict]
    aps = [metrics[m]["test"]["frame_macro_ap"]["mean"] for m in ("teacher", "student_int8")]
    assert share["mean"] == pytest.approx(aps[1] - 0.95 * aps[0])
    assert share["ratio"] == pytest.approx(aps[1] / aps[0])


def test_baseline_and_event_claims_follow_their_intervals():
    good, bad = _system(0.15, 1), _system(0.8, 2)  # clean tracks; nearly noise
    rival = _system(0.15, 3)  # as good as `good`, other noise: the difference straddles 0
    scored = {"student_int8": good, "baseline": rival}
    claims = ec.quality_claims(scored, ec.model_metrics(scored, N_BOOT), N_BOOT)
    versus = _claim(claims, "int8 student frame macro AP >= the label-only")
    assert versus["lo"] < 0 < versus["hi"] and versus["verdict"] == "inconclusive"
    assert _claim(claims, "int8 student event F1")["lo"] >= 0.75
    assert _claim(claims, "int8 student event F1")["verdict"] == "met"

    scored = {"student_int8": bad, "baseline": good, "teacher": good}
    claims = ec.quality_claims(scored, ec.model_metrics(scored, N_BOOT), N_BOOT)
    for split in ec.SPLITS:
        versus = _claim(claims, "int8 student frame macro AP >= the label-only", split)
        assert versus["hi"] < 0 and versus["verdict"] == "missed"
        # the teacher's own comparison: identical tracks, a difference of exactly 0
        teacher = _claim(claims, "teacher frame macro AP >= the label-only", split)
        assert teacher["mean"] == pytest.approx(0.0) and teacher["lo"] == pytest.approx(0.0)
    assert _claim(claims, "int8 student event F1")["verdict"] == "missed"


def test_margin_difference_is_paired_on_the_same_draws():
    """AP(a) - 0.95 AP(b) per replicate: the CI is narrower than the spread of either AP."""
    scored = {"teacher": _system(0.3, 4), "student_int8": _system(0.3, 4)}
    metrics = ec.model_metrics(scored, N_BOOT)
    share = _claim(ec.quality_claims(scored, metrics, N_BOOT), "int8 student frame macro AP")
    ap = metrics["teacher"]["test"]["frame_macro_ap"]
    # identical tracks: every replicate's difference is 0.05 x that replicate's AP
    assert share["lo"] == pytest.approx(0.05 * ap["lo"], rel=1e-6)
    assert share["hi"] == pytest.approx(0.05 * ap["hi"], rel=1e-6)
    assert share["hi"] - share["lo"] < ap["hi"] - ap["lo"]
    ones = np.ones((1, len(WORLD[0])), dtype=np.int64)
    per_seed = [frame_macro_ap(list(r.frames.values()), ones)[0]
                for r in scored["teacher"]["test"]]
    assert ap["mean"] == pytest.approx(np.mean(per_seed))


def test_artifact_claims_are_exact():
    size, gate = ec.artifact_claims([900_000, 950_000], {"test": [0.99, 0.985], "shift": [0.99]})
    assert (size["verdict"], gate["verdict"]) == ("met", "met")
    assert ec.claim_texts(size) == ("928 KiB", "<= 1 MB")
    size, gate = ec.artifact_claims([900_000, 1_100_000], {"test": [0.99], "shift": [0.97]})
    assert (size["verdict"], gate["verdict"]) == ("missed", "missed")
    assert ec.claim_texts(gate) == ("97.00 %", ">= 98 %")


def test_result_tables_and_results_md(tmp_path):
    scored = {"teacher": _system(0.15, 5), "student_fp32": _system(0.2, 6),
              "student_int8": _system(0.2, 7), "baseline": _system(0.4, 8)}
    footprints = {m: {"parameters": 139_000, "size_bytes": 556_000, "size_kind": "fp32 weights"}
                  for m in ec.MODELS}
    plan = et.Plan(tmp_path / "work", "tiny", "tcn_small", 30, 40, 2.0, 16)
    latency = [{"model_ms_per_audio_s": 0.2, "frontend_ms_per_audio_s": 1.0,
                "total_ms_per_audio_s": 1.2}] * 2
    result = ec.assemble(scored, {"test": [0.99, 0.995], "shift": [0.985, 0.99]},
                         [120_000, 125_000], latency, footprints, plan.commands([0, 1]), N_BOOT,
                         command="python benchmarks/export_table.py --quick", preset="tiny",
                         seeds=[0, 1], arch="tcn_small", teacher_steps=30, distill_steps=40)
    json.dumps(result, allow_nan=False)  # nan became null: strict JSON
    assert result["files"] == {"test": 24, "shift": 24}
    assert result["models"]["student_int8"]["size_bytes"] == 125_000
    table = ec.render_markdown(result)
    int8 = result["models"]["student_int8"]["splits"]["shift"]["frame_macro_ap"]
    assert format_interval(int8) in table
    assert "for s in 0 1; do meerkit export distill --labels-only" in table
    assert "seed$s" in result["commands"]["teacher"] and "--seed $s" in result["commands"]["teacher"]
    assert {c["verdict"] for c in result["claims"]} <= set(VERDICTS)
    assert len(result["claims"]) == 11  # 9 targets + teacher vs label-only on 2 splits

    (tmp_path / "export_table.json").write_text(json.dumps(result))
    export = [line for line in render(tmp_path).splitlines() if line.startswith("| export |")]
    assert sum("claim:" in line for line in export) == 11
    assert any(format_interval(int8) in line and "`shift`" in line for line in export)


def test_an_ensembles_members_are_shown_alone_with_the_int8_share_of_each(tmp_path):
    """`members`: each finetuned member of an ensemble teacher scored alone gets its rows and
    its own share claim per split, judged like the teacher's (here the member is the
    teacher's own tracks, so both claims agree exactly)."""
    scored = {"teacher": _system(0.4, 1), "student_fp32": _system(0.4, 2),
              "student_int8": _system(0.4, 1), "baseline": _system(0.4, 3)}
    footprints = {m: {"parameters": 1, "size_bytes": 4, "size_kind": "fp32 weights"}
                  for m in ec.MODELS}
    plan = et.Plan(tmp_path, "tiny", "tcn_small", 30, 40, 2.0, 16, "small+baseline")
    result = ec.assemble(scored, {"test": [0.99], "shift": [0.99]}, [1000], [], footprints,
                         plan.commands([0]), N_BOOT, members={"small": scored["teacher"]},
                         command="x", preset="tiny", seeds=[0, 1], arch="tcn_small",
                         teacher_steps=30, distill_steps=40, teacher_model="small+baseline")
    member = result["members"]["small"]
    assert member["title"] == "ensemble member alone: small"
    assert member["splits"] == result["models"]["teacher"]["splits"]
    for split in ec.SPLITS:
        mine = _claim(result["claims"], "int8 student frame macro AP >= 95% of the ensemble's "
                      "small member's", split)
        theirs = _claim(result["claims"], "int8 student frame macro AP >= 95% of the teacher's",
                        split)
        assert (mine["lo"], mine["hi"], mine["verdict"]) == (theirs["lo"], theirs["hi"], "met")
        assert mine["statistic"] == "AP(int8) - 0.95 x AP(small), paired"
    ap = format_interval(member["splits"]["shift"]["frame_macro_ap"])
    assert f"| ensemble member alone: small | `shift` | {ap} |" in ec.render_markdown(result)
    (tmp_path / "export_table.json").write_text(json.dumps(result))
    assert any("ensemble member alone: small" in line and ap in line
               for line in render(tmp_path).splitlines())


def test_teacher_model_names_its_runs_and_commands(tmp_path):
    tiny = et.Plan(tmp_path, "default", "tcn_small", 2000, 1500, 2.0, 16)
    small = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, "small")
    # tiny keeps the folder names of the runs made before the option existed
    assert tiny.path("teacher", 0).parts[-4] == "default_teacher_t2000"
    assert small.path("teacher", 0).parts[-4] == "default_teacher_small_t3000"
    assert "--preset small" in small.commands([0])["teacher"]
    # the label-only baseline does not depend on the teacher: both plans share it
    assert tiny.path("baseline", 1) == small.path("baseline", 1)


def test_the_printed_teacher_command_rebuilds_the_teacher_it_trains(tmp_path):
    import argparse
    import shlex

    from train.cli import _configs, register
    from train.config import FinetuneConfig, ModelConfig

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    for model, config in (("small", ModelConfig.small()), ("small100", ModelConfig.small100())):
        plan = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, model)
        loop = plan.commands([0])["teacher"]
        one = loop.split("do ", 1)[1].rsplit("; done", 1)[0].replace("$s", "0")
        args = parser.parse_args(shlex.split(one)[1:])
        # what build_runs trains with (export_table.py, `train_teacher`)
        expected = FinetuneConfig(steps=3000, warmup_steps=300, batch_size=16, lr=1e-3,
                                  freeze_encoder_steps=0, amp="fp32")
        assert _configs(args, "finetune")[:2] == (config, expected)
    assert ModelConfig.small100().total_stride * 2 == ModelConfig.small().total_stride


def test_student_hop_length_names_its_runs_and_commands(tmp_path):
    fifty = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, "small")
    hundred = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, "small", 160)
    assert fifty.path("student_int8", 0).parts[-2] == "tcn_small_d1500"  # older runs' names
    assert hundred.path("student_int8", 0).parts[-2] == "tcn_small_d1500_h160"
    assert hundred.path("baseline", 0).parts[-3] == "default_labels_only_tcn_small_d1500_h160"
    assert hundred.path("teacher", 0) == fifty.path("teacher", 0)  # one teacher serves both
    commands = hundred.commands([0])
    assert "--steps 1500 --hop-length 160 --seed $s" in commands["student_fp32"]
    assert "--steps 1500 --hop-length 160 --seed $s" in commands["baseline"]
    assert "--hop-length" not in fifty.commands([0])["student_fp32"]
    focal = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, "small", 160, "focal")
    assert focal.path("student_int8", 0).parts[-2] == "tcn_small_d1500_h160_kfocal"
    assert focal.path("baseline", 0) == hundred.path("baseline", 0)  # no teacher term there
    assert "--kd-loss focal --temperature 1 --seed $s" in focal.commands([0])["student_fp32"]
    assert "--kd-loss" not in focal.commands([0])["baseline"]


def test_an_ensemble_teacher_reuses_its_members_runs_and_teaches_with_all(tmp_path):
    import argparse
    import shlex

    from export.cli import register

    ensemble = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, "small+small100",
                       160, "focal")
    members = [et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, m, 160, "focal")
               for m in ("small", "small100")]
    assert ensemble.members == members  # each member is exactly its own table's run
    assert ensemble.teachers(0) == [m.path("teacher", 0) for m in members]
    assert members[0].members == [members[0]] and members[0].teachers(0) == [
        members[0].path("teacher", 0)]
    student = ensemble.path("student_int8", 1)
    assert student.parts[-3:-1] == ("seed1", "tcn_small_d1500_h160_kfocal")
    assert student.parts[-4] == "default_teacher_small+small100_t3000"
    assert ensemble.path("baseline", 1) == members[0].path("baseline", 1)
    commands = ensemble.commands([0])
    assert commands["teacher"] == " ; ".join(m.commands([0])["teacher"] for m in members)
    assert "teacher_ensemble" in commands and "teacher_ensemble" not in members[0].commands([0])
    # the printed distil command parses to both teachers, in member order
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    one = commands["student_fp32"].split("do ", 1)[1].rsplit("; done", 1)[0].replace("$s", "0")
    args = parser.parse_args(shlex.split(one)[1:])
    assert args.teacher == ensemble.teachers(0) and args.out == ensemble.path("student_fp32", 0)
    assert f"--teacher {members[0].path('teacher', '$s')} " in commands["verify"]


def test_the_label_only_student_can_be_an_ensemble_member(tmp_path):
    """`small+baseline`: only the small teacher is trained; the second member is the seed's
    own label-only student, so the distil command teaches with teacher/model.pt and
    baseline.pt, and the ensemble row reads the baseline's own tracks."""
    plan = et.Plan(tmp_path, "default", "tcn_small", 3000, 3000, 2.0, 16, "small+baseline",
                   160, "focal")
    small = et.Plan(tmp_path, "default", "tcn_small", 3000, 3000, 2.0, 16, "small", 160,
                    "focal")
    assert plan.trained_members == [small]
    assert [plan.member_model(m) for m in plan.members] == ["teacher", "baseline"]
    assert plan.teachers(2) == [small.path("teacher", 2), plan.path("baseline", 2)]
    commands = plan.commands([0])
    assert commands["teacher"] == small.commands([0])["teacher"]
    assert (f"--teacher {small.path('teacher', '$s')} --teacher {plan.path('baseline', '$s')} "
            in commands["student_fp32"])
    assert plan.path("student_fp32", 0).parts[-4] == "default_teacher_small+baseline_t3000"


def test_decoder_table_compares_the_same_tracks_under_two_decoders():
    """benchmarks/decoder_table.py: the capped decoder here keeps every call (threshold 0.5)
    and the uncapped one loses them (threshold 0.95, above every probability): the paired
    difference in recall is +1 with a CI at +1, and the table says so."""
    from benchmarks import decoder_table as dt
    from edge_runtime.contract.events import DecoderConfig

    targets, reference, snr = WORLD
    probs = {f: (0.1 + 0.8 * t).astype(np.float32) for f, t in targets.items()}

    def scored(threshold: float) -> Scored:
        decoder = DecoderConfig(threshold=[threshold] * len(LABELS))
        return score_tracks(probs, targets, LABELS, RATE, reference, snr, decoder)

    runs = {"capped": {"test": [scored(0.5)] * 2}, "uncapped": {"test": [scored(0.95)] * 2}}
    result = dt.compare({"teacher": runs}, N_BOOT)
    recall = result["teacher"]["test"]["recall_high_snr"]
    assert recall["capped"]["mean"] == 1.0 and recall["uncapped"]["mean"] == 0.0
    assert recall["capped - uncapped"] == {"mean": 1.0, "lo": 1.0, "hi": 1.0}
    table = dt.render_markdown({"quantile": 0.05, "seeds": [0, 1], "metrics": result})
    assert "| teacher | test | recall_high_snr | 0.000 [0.000, 0.000] | 1.000 [1.000, 1.000] |" \
        in table


def test_the_ensemble_row_averages_its_members_at_the_finest_frame_rate(tmp_path, monkeypatch):
    """ensemble_tracks: a 50-fps and a 100-fps member of constant logits give, at 100 fps, the
    logit of their mean probability; the card is the finer member's with summed parameters
    (the members' tracks and the val re-tuning are stood in for: they are the verify machinery
    and decoder_search, tested elsewhere)."""
    from edge_runtime.contract.card import ModelCard

    plan = et.Plan(tmp_path, "default", "tcn_small", 3000, 1500, 2.0, 16, "small+small100")
    cards = {name: ModelCard(name, "1", "0" * 64, 16000, 2.0, 1.0, rate, LABELS, (0.5, 0.5),
                             lineage={"parameters": n})
             for name, rate, n in (("small", 50.0, 3), ("small100", 100.0, 4))}
    logit = {"small": np.log(0.2 / 0.8), "small100": np.log(0.6 / 0.4)}

    def member_tracks(member, model, seed, split, progress):
        assert model == "teacher" and seed == 1
        rate = cards[member.teacher_model].frame_rate_hz
        track = np.full((int(2 * rate), len(LABELS)), logit[member.teacher_model], np.float32)
        return {"a.wav": track}, cards[member.teacher_model], 1.5

    seen = {}

    def retuned(plan_, card, val_logits, duration_quantile=None):
        seen["val"] = val_logits
        return card

    monkeypatch.setattr(tracks, "model_tracks", member_tracks)
    monkeypatch.setattr(tracks, "retuned", retuned)
    logits, card, minutes = tracks.ensemble_tracks(plan, 1, "test", progress=False)
    assert logits["a.wav"].shape == (200, len(LABELS))
    assert np.allclose(1 / (1 + np.exp(-logits["a.wav"])), 0.4, atol=1e-5)  # (0.2 + 0.6) / 2
    assert card.frame_rate_hz == 100.0 and card.lineage["parameters"] == 7
    assert card.lineage["teacher_name"] == "ensemble of small+small100"
    assert set(seen["val"]) == {"a.wav"} and minutes == 4 * 1.5  # test and val, two members


def test_a_warm_start_names_its_runs_and_adds_its_compute_matched_control(tmp_path):
    """`--warm-start-steps`: the student starts from the label-only student and is taught
    N steps; the label-only student continued N steps without a teacher is the control. The
    printed commands parse to exactly that, and the control gets its own row and claims."""
    import argparse
    import shlex

    from export.cli import register

    cold = et.Plan(tmp_path, "default", "tcn_small", 3000, 3000, 2.0, 16, "small+baseline", 160,
                   "focal")
    warm = et.Plan(tmp_path, "default", "tcn_small", 3000, 3000, 2.0, 16, "small+baseline", 160,
                   "focal", 1500, 1e-3)
    assert cold.models == ec.MODELS and warm.models == ec.MODELS + ("baseline_continued",)
    assert warm.path("student_int8", 0).parts[-2] == "tcn_small_d3000_h160_kfocal_w1500"
    assert warm.path("baseline", 0) == cold.path("baseline", 0)  # the start is the cold plan's
    assert warm.path("baseline_continued", 0) == warm.path("baseline", 0).with_name(
        "baseline_w1500.pt")
    assert "baseline_continued" not in cold.commands([0])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))

    def parsed(command: str) -> argparse.Namespace:
        one = command.split("do ", 1)[1].rsplit("; done", 1)[0].replace("$s", "0")
        return parser.parse_args(shlex.split(one)[1:])

    commands = warm.commands([0])
    student, control = parsed(commands["student_fp32"]), parsed(commands["baseline_continued"])
    for args in (student, control):
        assert (args.init, args.steps, args.lr) == (warm.path("baseline", 0), 1500, 1e-3)
        assert args.hop_length == 160
    assert student.teacher == warm.teachers(0) and student.kd_loss == "focal"
    assert control.labels_only and control.teacher is None
    assert control.out == warm.path("baseline_continued", 0)
    assert parsed(cold.commands([0])["student_fp32"]).init is None

    scored = {"teacher": _system(0.15, 5), "student_fp32": _system(0.2, 6),
              "student_int8": _system(0.2, 7), "baseline": _system(0.4, 8),
              "baseline_continued": _system(0.2, 7)}  # the int8 student's own tracks
    footprints = {m: {"parameters": 1, "size_bytes": 4, "size_kind": "fp32 weights"}
                  for m in warm.models}
    result = ec.assemble(scored, {"test": [0.99], "shift": [0.99]}, [1000], [], footprints,
                         commands, N_BOOT, command="x", preset="default", seeds=[0, 1],
                         arch="tcn_small", teacher_steps=3000, distill_steps=3000,
                         warm_steps=1500, warm_lr=1e-3)
    assert len(result["claims"]) == 13  # 11 as before + int8 vs the control on 2 splits
    for split in ec.SPLITS:
        versus = _claim(result["claims"], "int8 student frame macro AP >= the label-only "
                        "student's continued for as many steps", split)
        assert versus["statistic"] == "AP(int8) - AP(label-only continued), paired"
        assert versus["mean"] == 0.0 and versus["verdict"] == "inconclusive"  # same tracks
        assert _claim(result["claims"], "int8 student frame macro AP >= the label-only "
                      "student's on", split)["verdict"] == "met"
    table = ec.render_markdown(result)
    assert "| label-only student fp32, continued (compute-matched) | `test` |" in table
    assert "warm-started from the label-only student and taught 1500 steps at lr 0.001" in table
