"""benchmarks/results.py: every figure gets its command, targets are judged, absent runs say so."""

import json

from benchmarks.results import render


def _export_row(kb: float, ap_test: float, ap_shift: float) -> dict:
    return {"parameters": 1000, "file_kb": kb, "total_ms_per_audio_s": 1.0,
            "model_ms_per_audio_s": 0.5, "frontend_ms_per_audio_s": 0.5,
            "macro_ap_test": ap_test, "macro_ap_shift": ap_shift}


def test_targets_are_judged_and_commands_listed(tmp_path):
    (tmp_path / "export_table.json").write_text(json.dumps({
        "command": "python benchmarks/export_table.py --preset small",
        "rows": {"teacher fp32": _export_row(900, 0.40, 0.30),
                 "student int8": _export_row(2000, 0.30, 0.29)}}))
    text = render(tmp_path)
    int8 = [line for line in text.splitlines() if line.startswith("| export | student int8")]
    size, ap_test, ap_shift = (next(line for line in int8 if key in line)
                               for key in ("file size", "`test`", "`shift`"))
    assert "**MISSED**" in size  # 2000 KiB > 1 MB
    assert "**MISSED**" in ap_test and "0.300" in ap_test  # 0.30 < 0.95 * 0.40
    assert "met" in ap_shift and "MISSED" not in ap_shift  # 0.29 >= 0.95 * 0.30
    assert "- C1: `python benchmarks/export_table.py --preset small`" in text
    assert all(line.endswith("| C1 |") for line in int8)
    assert "training: not run" in text and "edge runtime: not run" in text


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
