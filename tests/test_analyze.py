"""`meerkit analyze` (edge_runtime.batch, batch_cli): batch detection over a recorder card with
the tiny energy model (conftest): events equal the batch path (track + decode_events) and the
streaming runtime's, bad files are reported without stopping the run, reruns resume, the Raven
tables round-trip through the importer, and the flags share edge-runtime's names."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_runtime.batch import MANIFEST, AnalyzeConfig, analyze, read_manifest
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig, decode_events
from edge_runtime.contract.model import TFLiteModel, model_geometry
from edge_runtime.contract.wav import read_wav, write_wav
from edge_runtime.contract.windows import track
from meerkit.cli import main
from tests.conftest import burst_audio, regular_bursts
from train.data.importers import import_raven
from train.data.raven import read_raven_table

SR = 16000
AUDIOMOTH = "20250601_053000.WAV"
GOOD = [AUDIOMOTH, "clip.flac", "silence.wav", "sub/stereo.wav"]
BROKEN = {"bad.wav": "not a WAV file", "empty.wav": "no audio samples",
          "header_only.wav": "WAV"}


def write_card(root: Path, broken: bool = True) -> Path:
    """A recorder card: an AudioMoth file, FLAC, silence, a 48 kHz stereo file in a subfolder,
    and (broken=True) corrupt, empty, cut-header and truncated WAVs plus files to ignore."""
    root.mkdir(parents=True)
    write_wav(root / AUDIOMOTH, burst_audio(6.0, regular_bursts(6.0)), SR)
    sf.write(root / "clip.flac", burst_audio(3.0, [(0.5, 0.3, 0.3)], seed=1), SR)
    write_wav(root / "silence.wav", burst_audio(2.0, [], seed=2), SR)
    (root / "sub").mkdir()
    t = np.arange(3 * 48000) / 48000
    left = np.where((t >= 1.0) & (t < 1.4), 0.95 * np.sin(2 * np.pi * 1000 * t), 0.0)
    # mixed to mono: amplitude 0.475 -> 'loud' but not 'very_loud'
    write_wav(root / "sub" / "stereo.wav", np.stack([left, np.zeros_like(left)], 1), 48000)
    if broken:
        (root / "bad.wav").write_bytes(b"this is not audio\n" * 20)
        write_wav(root / "empty.wav", np.zeros(0), SR)
        write_wav(root / "whole.wav", burst_audio(2.0, [(0.5, 0.3, 0.3)], seed=3), SR)
        data = (root / "whole.wav").read_bytes()
        (root / "header_only.wav").write_bytes(data[:20])
        (root / "truncated.wav").write_bytes(data[: len(data) * 2 // 3])
        (root / "whole.wav").unlink()
        (root / ("._" + AUDIOMOTH)).write_bytes(b"\0" * 100)  # macOS resource fork: ignored
        (root / "notes.txt").write_text("deployment 3\n")
    return root


def batch_events(model: TFLiteModel, path: Path, rel: str):
    """The reference: whole-file track + decode_events, as `meerkit` evaluation does."""
    audio, _ = read_wav(path)
    probs = track(audio[:, 0], model_geometry(model.card), model.window_fn)
    cfg = DecoderConfig(threshold=list(model.card.thresholds), hysteresis=0.1)
    return decode_events(probs, model.card.labels, model.card.frame_rate_hz, cfg, file=rel)


def csv_rows(out: Path) -> list[dict[str, str]]:
    with open(out / "events.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def run(card: Path, out: Path, model: Path, **kw):
    return analyze([card], AnalyzeConfig(model=str(model), out=str(out), workers=kw.pop("workers", 1),
                                         recursive=True, progress=False, **kw))


def test_cli_analyses_the_card_and_reports_bad_files_without_stopping(energy_model, tmp_path,
                                                                         capsys):
    card = write_card(tmp_path / "card")
    out = tmp_path / "out"
    code = main(["analyze", str(card), "--model", str(energy_model), "--out", str(out),
                 "--recursive", "--workers", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1  # some files failed; the others are done
    for name, why in BROKEN.items():
        assert f"{card / name}" in err and why in err
    assert "truncated.wav: WAV data chunk is truncated" in err  # a warning, not a failure

    manifest = read_manifest(out / MANIFEST)
    status = {e["file"]: e["status"] for e in manifest.values()}
    assert status == {**dict.fromkeys([*GOOD, "truncated.wav"], "ok"),
                      **dict.fromkeys(BROKEN, "failed")}
    tables = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.selections.txt"))
    assert tables == sorted(f"{Path(f).parent / Path(f).stem}.Table.1.selections.txt"
                            for f in [*GOOD, "truncated.wav"])
    assert (out / "silence.Table.1.selections.txt").read_text().count("\n") == 1  # header only

    # Events of the AudioMoth file are exactly the batch reference, with absolute times.
    model = TFLiteModel(energy_model)
    ref = batch_events(model, card / AUDIOMOTH, AUDIOMOTH)
    rows = [r for r in csv_rows(out) if r["file"] == AUDIOMOTH]
    assert [(r["label"], float(r["start_s"]), float(r["end_s"])) for r in rows] == [
        (e.label, e.start_s, e.end_s) for e in ref]
    assert [float(r["confidence_mean"]) for r in rows] == pytest.approx(
        [e.confidence_mean for e in ref], rel=1e-6)
    bursts = regular_bursts(6.0)
    loud = [e for e in ref if e.label == "loud"]
    assert len(loud) == len(bursts) and sum(e.label == "very_loud" for e in ref) == len(bursts) // 2
    for e, (start, length, _) in zip(loud, bursts, strict=True):
        assert abs(e.start_s - start) <= 0.04 and abs(e.end_s - (start + length)) <= 0.04
    assert rows[0]["start_utc"] == f"2025-06-01T05:30:{float(rows[0]['start_s']):06.3f}Z"

    # The stereo 48 kHz file was mixed (0.95 -> 0.475: loud, not very loud) and resampled.
    stereo = [r for r in csv_rows(out) if r["file"] == "sub/stereo.wav"]
    assert [r["label"] for r in stereo] == ["loud"] and stereo[0]["start_utc"] == ""
    assert abs(float(stereo[0]["start_s"]) - 1.0) <= 0.04
    assert abs(float(stereo[0]["end_s"]) - 1.4) <= 0.04
    assert [r["label"] for r in csv_rows(out) if r["file"] == "clip.flac"] == ["loud"]


def test_rerun_skips_done_files_and_retries_touched_new_and_failed_ones(energy_model, tmp_path):
    card = write_card(tmp_path / "card")
    out = tmp_path / "out"
    first = run(card, out, energy_model)
    assert first.analysed == 8 and first.skipped == 0 and len(first.failed) == 3
    events_before = csv_rows(out)

    again = run(card, out, energy_model)  # only the failed files are tried again
    assert again.skipped == 5 and len(again.failed) == 3
    assert sorted(again.analysed_files) == sorted(BROKEN)
    assert csv_rows(out) == events_before  # skipped files keep their events

    os.utime(card / "silence.wav", ns=(1, 1))  # touched: analyse again
    write_wav(card / "new.wav", burst_audio(2.0, [(0.5, 0.3, 0.95)]), SR)
    shutil.copy(card / "truncated.wav", card / "bad.wav")  # a failed file, now readable
    third = run(card, out, energy_model)
    assert sorted(third.analysed_files) == ["bad.wav", "empty.wav", "header_only.wav",
                                            "new.wav", "silence.wav"]
    assert third.skipped == 4 and len(third.failed) == 2
    rows = csv_rows(out)
    assert {r["label"] for r in rows if r["file"] == "new.wav"} == {"loud", "very_loud"}
    assert [r for r in rows if r["file"] == "bad.wav"] == [
        dict(r, file="bad.wav") for r in rows if r["file"] == "truncated.wav"]
    # one manifest line per file after the run (compacted), whatever the number of reruns
    assert len((out / MANIFEST).read_text().splitlines()) == 9

    (card / "silence.wav").write_bytes(b"RIFF")  # done before, corrupt now: no stale table
    assert run(card, out, energy_model).analysed_files == ["empty.wav", "header_only.wav",
                                                           "silence.wav"]
    assert not (out / "silence.Table.1.selections.txt").exists()
    write_wav(card / "silence.wav", burst_audio(2.0, [], seed=2), SR)

    changed = run(card, out, energy_model, threshold=0.9)  # other settings: everything again
    assert changed.skipped == 0 and changed.analysed == 9
    assert run(card, out, energy_model, threshold=0.9, force=True).skipped == 0


def test_parallel_workers_give_the_serial_result(energy_model, tmp_path):
    card = write_card(tmp_path / "card", broken=False)
    serial = run(card, tmp_path / "serial", energy_model, workers=1)
    parallel = run(card, tmp_path / "parallel", energy_model, workers=2)
    assert serial.ok and parallel.ok and parallel.analysed == len(GOOD)
    assert csv_rows(tmp_path / "parallel") == csv_rows(tmp_path / "serial")
    for table in (tmp_path / "serial").rglob("*.selections.txt"):
        twin = tmp_path / "parallel" / table.relative_to(tmp_path / "serial")
        assert twin.read_text() == table.read_text()


def test_raven_tables_round_trip_through_the_importer(energy_model, tmp_path):
    card = write_card(tmp_path / "card", broken=False)
    out = tmp_path / "out"
    assert run(card, out, energy_model).ok
    rows = csv_rows(out)
    assert len(rows) >= 8
    by_file = {f: sorted((float(r["start_s"]), float(r["end_s"]), r["label"])
                         for r in rows if r["file"] == f) for f in GOOD}

    for f in GOOD:
        table = out / Path(f).parent / (Path(f).stem + ".Table.1.selections.txt")
        selections = read_raven_table(table)
        assert sorted((s.start_s, s.end_s, s.label) for s in selections) == by_file[f]
        conf = {(float(r["start_s"]), r["label"]): float(r["confidence_max"])
                for r in rows if r["file"] == f}
        assert all(s.confidence == conf[(s.start_s, s.label)] for s in selections)
        rate = sf.info(str(card / f)).samplerate
        assert all(s.low_hz == 0 and s.high_hz == rate / 2 for s in selections)

    ds = import_raven([out], card, tmp_path / "ds", link=True)
    assert sorted(ds.files) == sorted(GOOD)  # header-only tables import as files without events
    for f in GOOD:
        assert sorted((a.start_s, a.end_s, a.label) for a in ds.annotations(f)) == by_file[f]


def test_user_errors_name_the_problem(energy_model, tmp_path):
    card = write_card(tmp_path / "card", broken=False)
    (tmp_path / "empty").mkdir()
    nocard = energy_model.with_name(energy_model.stem + "-nocard.tflite")

    def cfg(**kw) -> AnalyzeConfig:
        return AnalyzeConfig(model=str(kw.pop("model", energy_model)), out=str(tmp_path / "out"),
                             progress=False, workers=1, **kw)

    for inputs, config, message in [
        ([tmp_path / "nowhere"], cfg(), "nowhere: no such file or folder"),
        ([tmp_path / "empty"], cfg(), "no .wav/.flac files in"),
        ([card / "sub" / "stereo.wav", tmp_path / "x.txt"], cfg(), "x.txt: no such file"),
        ([card], cfg(model=nocard), "energy-nocard.tflite"),
        ([card], cfg(threshold=1.5), "--model-thresholds 1.5: must be in [0, 1]"),
        ([card], cfg(thresholds={"loud": -0.1}), "--model-thresholds loud=-0.1: must be in"),
        ([card], cfg(thresholds={"lowd": 0.3}),
         "--model-thresholds: the model has no label 'lowd' (did you mean 'loud'?)"),
        ([card], cfg(channel="left"), "--audio-channel 'left'"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            analyze(inputs, config)

    assert analyze([card], cfg()).files == 4  # subfolders are searched by default
    assert analyze([card], cfg(recursive=False)).files == 3  # --no-recursive: sub/ is not
    one_channel = analyze([card / "sub" / "stereo.wav", card / "clip.flac"], cfg(channel="1"))
    assert one_channel.failed == [(str(card / "clip.flac"), f"{card / 'clip.flac'}: "
                                   "--audio-channel 1: the file has 1 channel(s) (0-based index)")]
    with open(tmp_path / "out" / ".lock", "w") as fh:  # a second analyze on the same folder
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another `meerkit analyze` is writing"):
            analyze([card], cfg())


def test_parquet_matches_the_csv(energy_model, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="events.parquet is written with pyarrow")
    card = write_card(tmp_path / "card", broken=False)
    assert run(card, tmp_path / "out", energy_model, rtypes="raven,csv,parquet").ok
    table = pq.read_table(tmp_path / "out" / "events.parquet").to_pylist()
    assert [(r["file"], r["label"], r["start_s"], r["end_s"], r["start_utc"] or "")
            for r in table] == [(r["file"], r["label"], float(r["start_s"]), float(r["end_s"]),
                                 r["start_utc"]) for r in csv_rows(tmp_path / "out")]


def analyze_cli(out: Path, *flags: str, audio: Path, model: Path) -> list[tuple[str, ...]]:
    assert main(["analyze", str(audio), "--model", str(model), "--out", str(out), "--workers",
                 "1", "--no-progress", *flags]) == 0
    return [(r["label"], r["start_s"], r["end_s"]) for r in csv_rows(out)]


def test_flags_share_edge_runtime_names_and_old_spellings_still_work(energy_model, tmp_path,
                                                                    capsys):
    wav = tmp_path / "a.wav"
    write_wav(wav, burst_audio(4.0, regular_bursts(4.0)), SR)
    run_ = lambda name, *flags: analyze_cli(tmp_path / name, *flags, audio=wav,  # noqa: E731
                                            model=energy_model)
    every = run_("default")
    assert {e[0] for e in every} == {"loud", "very_loud"}
    capsys.readouterr()
    # one label off (a threshold of 1.0 is never reached), the other at the card's
    assert run_("one", "--model-thresholds", "very_loud=1.0") == [e for e in every
                                                                   if e[0] == "loud"]
    assert run_("all", "--model-thresholds", "1.0", "--model-thresholds", "loud=0.5") == [
        e for e in every if e[0] == "loud"]
    assert "deprecated" not in capsys.readouterr().err
    # the old spelling: same result, one warning naming the new flag, hidden from --help
    assert run_("old", "--threshold", "1.0") == run_("new", "--model-thresholds", "1.0") == []
    assert run_("gap", "--merge-gap", "1.0", "--channel", "0") == run_(
        "gap2", "--model-merge-gap-s", "1.0", "--audio-channel", "0")
    err = capsys.readouterr().err
    assert err.count("--threshold is deprecated; use --model-thresholds") == 1
    assert err.count("--merge-gap is deprecated; use --model-merge-gap-s") == 1
    assert err.count("--channel is deprecated; use --audio-channel") == 1
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    assert "--model-thresholds" in text and "--audio-channel" in text
    assert "--threshold " not in text and "--channel " not in text and "--merge-gap " not in text
    with pytest.raises(SystemExit):
        main(["analyze", str(wav), "--model", str(energy_model), "--out", str(tmp_path / "x"),
              "--model-thresholds", "loud=high"])
    assert "expected X or LABEL=X" in capsys.readouterr().err


def test_batch_and_streaming_give_the_same_events(energy_model, tmp_path, capsys):
    """`meerkit analyze` and `edge-runtime` replaying the same 48 kHz stereo AudioMoth file
    (the same Detector behind both) report the same events: labels, times (to the ms of the
    messages), confidences."""
    from edge_runtime.cli import main as edge_runtime

    mono = burst_audio(6.0, regular_bursts(6.0), sample_rate=48000)
    path = tmp_path / "20240101_000000.WAV"
    write_wav(path, np.stack([mono, 0.8 * mono], 1), 48000, bits=24)
    assert analyze([path], AnalyzeConfig(model=str(energy_model), out=str(tmp_path / "out"),
                                         workers=1, progress=False)).ok
    batch = sorted((r["label"], r["start_utc"], round(float(r["end_s"]) - float(r["start_s"]), 3),
                    round(float(r["confidence_max"]), 6), round(float(r["confidence_mean"]), 6))
                   for r in csv_rows(tmp_path / "out"))
    capsys.readouterr()
    assert edge_runtime(["--no-mqtt", "--start-time", "filename", "--model", str(energy_model),
                         "--input", str(path)]) == 0
    stream = sorted((m["label"], m["start"], round(m["duration_s"], 3), m["confidence"]["max"],
                     m["confidence"]["mean"])
                    for m in map(json.loads, capsys.readouterr().out.splitlines()))
    assert {e[0] for e in batch} == {"loud", "very_loud"}
    assert stream == batch
