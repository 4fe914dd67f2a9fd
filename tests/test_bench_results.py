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


def test_training_claims_compare_against_their_baselines(tmp_path):
    rows = [("a", "1% labels, scratch", "test", 0.10), ("a", "1% labels, pretrained", "test", 0.20),
            ("b", "metadata heads: none", "shift", 0.30),
            ("b", "metadata heads: adversarial", "shift", 0.25)]
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "train_table.json").write_text(json.dumps({
        "preset": "tiny", "pretrain_steps": 10, "finetune_steps": 10, "minutes": 1.0,
        "rows": [{"claim": c, "setting": s, "split": sp, "macro_ap": ap, "command": f"cmd {s}"}
                 for c, s, sp, ap in rows]}))
    lines = render(tmp_path).splitlines()
    pretrained = next(line for line in lines if "pretrained" in line and "| training" in line)
    adversarial = next(line for line in lines if "adversarial" in line and "| training" in line)
    assert "> from scratch (0.100): met" in pretrained
    assert "> no heads (0.300): **MISSED**" in adversarial
