"""benchmarks/results.py: every figure gets its command, targets are judged, absent runs say so."""

import json

from benchmarks.results import render


def _ci(mean: float, lo: float, hi: float) -> dict:
    return {"mean": mean, "lo": lo, "hi": hi, "per_seed": [mean]}


def _model(title: str, ap: float, kind: str = "fp32 weights") -> dict:
    cell = {"frame_macro_ap": _ci(ap, ap - 0.02, ap + 0.02), "event_f1": _ci(0.5, 0.4, 0.6),
            "recall_high_snr": {"mean": None, "lo": None, "hi": None, "per_seed": [None]}}
    return {"title": title, "parameters": 1000, "size_bytes": 2_048_000, "size_kind": kind,
            "splits": {"test": cell, "shift": cell}, "command": "teacher"}


def _claim(name: str, verdict: str) -> dict:
    return {"claim": name, "statistic": "AP(int8) - 0.95 x AP(teacher), paired", "verdict": verdict,
            "measured": "0.010 [-0.020, 0.040]", "target": ">= 0"}


def test_targets_are_judged_and_commands_listed(tmp_path):
    int8 = {**_model("student int8 (TFLite)", 0.30, "int8 .tflite file"),
            "latency": {"total_ms_per_audio_s": 1.5, "model_ms_per_audio_s": 0.5,
                        "frontend_ms_per_audio_s": 1.0}}
    (tmp_path / "export_table.json").write_text(json.dumps({
        "command": "python benchmarks/export_table.py --seeds 0,1,2", "preset": "default",
        "seeds": [0, 1, 2], "minutes": 3.0,
        "models": {"teacher": _model("teacher (tiny)", 0.40), "student_int8": int8},
        "claims": [_claim("int8 AP >= 95% of the teacher's on `test`", "inconclusive"),
                   _claim("int8 AP >= the label-only student's on `test`", "met"),
                   _claim("int8 student file <= 1 MB", "missed")]}))
    text = render(tmp_path)
    export = [line for line in text.splitlines() if line.startswith("| export |")]
    quality = next(line for line in export if "student int8" in line and "`test`" in line)
    assert "0.300 [0.280, 0.320] / 0.500 [0.400, 0.600] / n/a" in quality
    assert "mean over seeds [95% paired bootstrap CI over files]" in export[0]
    verdicts = {key: next(line for line in export if key in line)
                for key in ("95% of the teacher", "label-only", "1 MB")}
    assert "inconclusive" in verdicts["95% of the teacher"]
    assert "0.010 [-0.020, 0.040]" in verdicts["95% of the teacher"]
    assert ">= 0: met |" in verdicts["label-only"]
    assert "**MISSED**" in verdicts["1 MB"]
    assert "1.50 (0.50 + 1.00)" in next(line for line in export if "ms per audio" in line)
    assert "- C1: `python benchmarks/export_table.py --seeds 0,1,2`" in text
    assert all(line.endswith("| C1 |") for line in export)
    assert "training: not run" in text and "edge runtime: not run" in text


def test_stale_export_json_asks_for_a_rerun(tmp_path):
    (tmp_path / "export_table.json").write_text(json.dumps({"rows": {}, "command": "old"}))
    assert "| export | export table | JSON from an older" in render(tmp_path)


def _train_result() -> dict:
    """What benchmarks/train_table.py writes, from two seeds of synthetic tracks."""
    import numpy as np

    from benchmarks.train_claims import Scored, System, assemble

    rng = np.random.default_rng(0)
    targets = {f"f{k}.wav": (rng.random((40, 2)) < 0.2).astype(np.float32) for k in range(12)}

    def runs(skill: float) -> list:
        return [Scored({f: (np.clip(skill * t + (1 - skill) * rng.random(t.shape), 0, 1), t)
                        for f, t in targets.items()}, None) for _ in range(2)]

    systems = {"probe/pretrained": System("probe: pretrained", "probe", "probe_pretrained",
                                          [0, 1], {"test": runs(0.6)}),
               "probe/random": System("probe: random", "probe", "probe_random", [0, 1],
                                      {"test": runs(0.1)})}
    result = assemble(systems, ["a", "b"], ("train_10pct", "train"), n_boot=100,
                      command="python benchmarks/train_table.py --seeds 0,1", preset="default",
                      seeds=[0, 1], pretrain_steps=1500, finetune_steps=600,
                      recipe={"budget": "train_10pct", "seed": 0, "chosen": "llrd",
                              "candidates": {"llrd": {"val_macro_ap": 0.41},
                                             "uniform_lr": {"val_macro_ap": None}}})
    return json.loads(json.dumps(result))


def test_training_claims_show_their_intervals_and_verdicts(tmp_path):
    (tmp_path / "train").mkdir()
    result = _train_result()
    result["targets"] = [{"what": "best teacher on `val` (x): frame macro AP on `test`",
                          "mean": 0.5, "lo": 0.45, "hi": 0.55, "bound": 0.75,
                          "verdict": "missed"}]
    (tmp_path / "train" / "train_table.json").write_text(json.dumps(result))
    lines = [line for line in render(tmp_path).splitlines() if line.startswith("| training |")]
    gate = next(line for line in lines if "| H1:" in line)
    assert "gate passed" in gate and "[" in gate  # the difference with its CI
    assert "seeds 0, 1" in lines[0] and "paired bootstrap CI" in lines[0]
    assert any("probe: random: frame macro AP on `test`" in line for line in lines)
    assert any("llrd (llrd 0.410, uniform_lr n/a)" in line for line in lines)
    target = next(line for line in lines if "best teacher" in line)
    assert "0.500 [0.450, 0.550]" in target and ">= 0.75: **MISSED**" in target
    assert all(line.endswith("| C1 |") for line in lines)


def test_stale_training_json_asks_for_a_rerun(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train_table.json").write_text(json.dumps({
        "preset": "tiny", "pretrain_steps": 10, "finetune_steps": 10, "minutes": 1.0,
        "rows": [{"claim": "a", "setting": "1% labels, scratch", "split": "test",
                  "macro_ap": 0.1, "command": "cmd"}]}))
    assert "| training | train table | JSON from an older" in render(tmp_path)


def test_lookahead_rows_name_the_setting_and_the_command(tmp_path):
    rows = [{"hop_s": 0.5, "lookahead_s": None, "lookahead_frames": 38, "frame_macro_ap": 0.61,
             "event_precision": 0.5, "event_recall": 0.6, "event_f1": 0.54,
             "latency_bound_s": 1.38},
            {"hop_s": 0.5, "lookahead_s": 0.2, "lookahead_frames": 10, "frame_macro_ap": 0.6,
             "event_precision": 0.5, "event_recall": 0.6, "event_f1": 0.53,
             "latency_bound_s": 0.82}]
    (tmp_path / "lookahead_bench.json").write_text(json.dumps({
        "command": "python benchmarks/lookahead_bench.py --model m.tflite", "split": "test",
        "files": 32, "rows": rows}))
    lines = [line for line in render(tmp_path).splitlines()
             if line.startswith("| latency vs lookahead |")]
    assert len(lines) == 2
    assert "lookahead centred at hop 0.5 s (test, 32 files)" in lines[0]
    assert "0.600 / 0.530 / 0.82 s" in lines[1]


def test_sections_without_json_keep_their_previous_rows(tmp_path):
    """benchmarks/out is not in git: a fresh checkout regenerating RESULTS.md keeps the rows of
    sections it did not rerun, with their commands, and says they are carried over."""
    lookahead = {"command": "python benchmarks/lookahead_bench.py --model m.tflite",
                 "files": 4, "split": "test",
                 "rows": [{"hop_s": 0.5, "lookahead_s": None, "frame_macro_ap": 0.6,
                           "event_f1": 0.7, "latency_bound_s": 1.2}]}
    (tmp_path / "lookahead_bench.json").write_text(json.dumps(lookahead))
    previous = "\n".join([
        "Written by `python benchmarks/results.py` on 2026-12-01 08:00 UTC from ...", "",
        "| section | what | measured | target | command |", "|---|---|---|---|---|",
        "| export | claim: int8 file <= 1 MB | 229 KiB | <= 1 MB: met | C1 |",
        "| reliability | soak: lost / duplicates | 0 / 0 | 0 / 0: met | C2 |",
        "| latency vs lookahead | old row | 0.1 | | C3 |", "",
        "- C1: `python benchmarks/export_table.py --seeds 0,1,2`",
        "- C2: `python benchmarks/soak.py`", "- C3: `python benchmarks/lookahead_bench.py`"])
    text = render(tmp_path, previous)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert "| export | claim: int8 file <= 1 MB | 229 KiB | <= 1 MB: met | C" in text
    assert "| reliability | soak: lost / duplicates | 0 / 0 | 0 / 0: met |" in text
    assert not any("old row" in line for line in rows)  # a section with its JSON is rebuilt
    assert "`python benchmarks/export_table.py --seeds 0,1,2`" in text
    assert "export: carried over unchanged from the RESULTS.md written 2026-12-01 08:00 UTC" in text
    assert "training: not run" in text  # nothing to carry
    again = render(tmp_path, text.replace("Written by `python benchmarks/results.py` on 2026-12-01",
                                          "Written by `python benchmarks/results.py` on 2026-12-05"))
    assert "export: carried over unchanged from the RESULTS.md written 2026-12-01 08:00" in again
    assert "export: carried" not in render(tmp_path)  # without a previous file: not run
    assert "export: not run" in render(tmp_path)
