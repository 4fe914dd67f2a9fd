"""The runtime decodes with the card's per-label settings and does not emit the labels the card
marks undetectable unless asked (`--emit-undetectable`, `[model] emit_undetectable`), in
`edge-runtime` and `meerkit analyze`; `--check` and the start-up log say what is suppressed."""

import csv
import dataclasses
import json
import shutil

import pytest
from conftest import burst_audio, regular_bursts

from edge_runtime.cli import main
from edge_runtime.contract.card import LabelDecoder, UndetectableLabel, read_card
from edge_runtime.contract.wav import write_wav
from meerkit.cli import main as meerkit

T0 = "2024-01-01T00:00:00Z"
REASON = "best event F1 0.100 on the tuning files is below 0.2"
MERGED_LOUD = ("loud", "2024-01-01T00:00:00.300Z", "2024-01-01T00:00:03.600Z")
VERY_LOUD = [("very_loud", "2024-01-01T00:00:01.300Z", "2024-01-01T00:00:01.600Z"),
             ("very_loud", "2024-01-01T00:00:03.300Z", "2024-01-01T00:00:03.600Z")]


@pytest.fixture(scope="module")
def tuned_model(energy_model, tmp_path_factory):
    """The energy model with a sidecar card: 'loud' merges over 1 s gaps (its four 0.3 s bursts,
    1 s apart, become one event); 'very_loud' is undetectable."""
    root = tmp_path_factory.mktemp("tuned")
    path = root / "tuned.tflite"
    shutil.copy(energy_model.with_name(energy_model.stem + "-nocard.tflite"), path)
    card = dataclasses.replace(
        read_card(energy_model),
        decoder=(LabelDecoder("loud", 0.5, 0.1, 0.0, 1.0), LabelDecoder("very_loud", 0.5, 0.1)),
        undetectable_labels=(UndetectableLabel("very_loud", REASON, 0.1),))
    path.with_suffix(".json").write_text(card.to_json())
    return path


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "bursts.wav"
    write_wav(path, burst_audio(4.0, regular_bursts(4.0)), 16000)
    return path


def run(capsys, *args):
    code = main(["--no-mqtt", "--start-time", T0, *args])
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return code, sorted((e["label"], e["start"], e["end"]) for e in events), err


def test_undetectable_labels_are_not_emitted_by_default(tuned_model, wav, capsys):
    code, events, err = run(capsys, "--model", str(tuned_model), "--input", str(wav))
    assert code == 0, err
    assert events == [MERGED_LOUD]  # the card's merge gap for 'loud'; no 'very_loud'
    assert "very_loud" in err and REASON in err and "--emit-undetectable" in err


def test_the_option_emits_them(tuned_model, wav, tmp_path, capsys):
    code, events, err = run(capsys, "--model", str(tuned_model), "--input", str(wav),
                            "--emit-undetectable")
    assert code == 0, err
    assert events == [MERGED_LOUD, *VERY_LOUD]  # each label with its own settings
    assert REASON not in err
    config = tmp_path / "r.toml"
    config.write_text(f'[model]\npath = "{tuned_model}"\nemit_undetectable = true\n')
    code, events, err = run(capsys, "--config", str(config), "--input", str(wav))
    assert code == 0, err
    assert events == [MERGED_LOUD, *VERY_LOUD]
    # a setting given in the config replaces the card's for every label
    code, events, err = run(capsys, "--config", str(config), "--input", str(wav),
                            "--model-merge-gap-s", "0")
    assert [e for e in events if e[0] == "loud"] == [
        ("loud", f"2024-01-01T00:00:0{s}.300Z", f"2024-01-01T00:00:0{s}.600Z") for s in range(4)]


def test_check_says_which_labels_are_suppressed(tuned_model, wav, capsys):
    assert main(["--check", "--no-mqtt", "--model", str(tuned_model), "--input", str(wav)]) == 0
    out = capsys.readouterr().out
    assert f"[ok] labels: not emitted (undetectable; --emit-undetectable emits them): " \
           f"very_loud ({REASON})" in out
    assert main(["--check", "--no-mqtt", "--model", str(tuned_model), "--input", str(wav),
                 "--emit-undetectable"]) == 0
    assert "[ok] labels: every label is emitted" in capsys.readouterr().out


def test_analyze_reports_them_only_when_asked(tuned_model, wav, tmp_path, capsys):
    def labels(out, *flags):
        assert meerkit(["analyze", str(wav), "--model", str(tuned_model), "--out", str(out),
                        "--workers", "1", "--no-progress", *flags]) == 0
        with open(out / "events.csv", newline="") as fh:
            return sorted((r["label"], r["start_s"], r["end_s"]) for r in csv.DictReader(fh))

    assert labels(tmp_path / "a") == [("loud", "0.3", "3.6")]
    assert REASON in capsys.readouterr().err
    assert labels(tmp_path / "b", "--emit-undetectable") == [
        ("loud", "0.3", "3.6"), ("very_loud", "1.3", "1.6"), ("very_loud", "3.3", "3.6")]
    # the manifest knows the setting: rerunning the first folder with it analyses again
    assert len(labels(tmp_path / "a", "--emit-undetectable")) == 3
