"""`meerkit analyze` on a card as field users have it: nested daily folders, an AudioMoth file
named in local time with a timezone in its comment, a GUANO file, a file with no time at all.
Every output type is written, every event's UTC time is exact and says where it came from, the
combined Raven table round-trips through `meerkit data import raven`, and clips cut per
detection hold exactly the recording's samples."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from edge_runtime.batch import MANIFEST, AnalyzeConfig, analyze, read_manifest
from edge_runtime.batch_clips import ClipSettings, clip_name
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.times import iso_utc
from edge_runtime.contract.wav import read_wav, write_wav
from edge_runtime.output_formats import RTYPES
from meerkit.cli import main
from tests.conftest import burst_audio, regular_bursts
from tests.test_recorder_time import write_recorder_wav

SR = 16000
UTC = timezone.utc
MOTH = "20250601/20250601_053000.WAV"  # local time, UTC+2 per its comment
GUANO = "sm4/20250601_220000.wav"  # GUANO says 22:00 at UTC-4: the header wins over the name
PLAIN = "20250601/plain.wav"  # no header, no time in the name
MOTH_COMMENT = ("Recorded at 05:30:00 01/06/2025 (UTC+2) by AudioMoth 24F319055FDF3F2B at medium "
                "gain while battery was 4.1V and temperature was 18.3C.")
GUANO_TEXT = ("GUANO|Version:1.0\nMake:Wildlife Acoustics\nModel:SM4\nSerial:S4U12345\n"
              "Timestamp:2025-06-01T22:00:00-04:00\nSamplerate:16000\n")
STARTS = {MOTH: (datetime(2025, 6, 1, 3, 30, tzinfo=UTC), "audiomoth-comment"),
          GUANO: (datetime(2025, 6, 2, 2, 0, tzinfo=UTC), "guano"),
          PLAIN: (None, "unknown")}


def write_card(root: Path) -> Path:
    (root / "20250601").mkdir(parents=True)
    (root / "sm4").mkdir()
    write_recorder_wav(root / MOTH, MOTH_COMMENT, artist="AudioMoth 24F319055FDF3F2B",
                       audio=burst_audio(4.0, regular_bursts(4.0)), rate=SR)
    write_recorder_wav(root / GUANO, guano=GUANO_TEXT, rate=SR,
                       audio=burst_audio(3.0, [(0.5, 0.4, 0.3), (2.0, 0.3, 0.95)], seed=1))
    write_wav(root / PLAIN, burst_audio(2.5, [(1.0, 0.5, 0.3)], seed=2), SR)
    return root


def analyze_cli(card: Path, out: Path, model: Path, *flags: str) -> int:
    return main(["analyze", str(card), "--model", str(model), "--out", str(out), "--workers",
                 "1", "--no-progress", *flags])


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def analysed(energy_model, tmp_path, capsys):
    card = write_card(tmp_path / "card")
    out = tmp_path / "out"
    rtypes = [r for r in RTYPES if r != "parquet" or _has_pyarrow()]
    code = analyze_cli(card, out, energy_model, "--rtype", ",".join(rtypes), "--clips",
                       str(out / "clips"), "--clips-pre-s", "0.5", "--clips-post-s", "0.25")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return card, out, captured


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_event_has_its_exact_utc_time_and_source(analysed):
    card, out, captured = analysed
    rows = csv_rows(out / "events.csv")
    assert {r["file"] for r in rows} == set(STARTS)  # found one folder down, recursively
    for r in rows:
        start, source = STARTS[r["file"]]
        assert r["time_source"] == source
        expected = iso_utc(start.timestamp() + float(r["start_s"])) if start else ""
        assert r["start_utc"] == expected
    first = next(r for r in rows if r["file"] == MOTH)
    assert first["start_utc"].startswith("2025-06-01T03:30:00.")  # 05:30 local at UTC+2
    # the file with no time says so instead of guessing, and the run still succeeds
    assert f"{card / PLAIN}: recording time unknown" in captured.out + captured.err
    manifest = {e["file"]: e for e in read_manifest(out / MANIFEST).values()}
    assert manifest[MOTH]["device_id"] == "24F319055FDF3F2B"
    assert manifest[MOTH]["tz_offset_s"] == 7200 and manifest[GUANO]["tz_offset_s"] == -14400
    assert manifest[PLAIN]["start_unix"] is None and manifest[PLAIN]["warning"]


def test_an_explicit_start_time_fills_only_the_files_without_one(energy_model, tmp_path, capsys):
    card = write_card(tmp_path / "card")
    assert analyze_cli(card, tmp_path / "out", energy_model, "--rtype", "csv",
                       "--audio-start-time", "2025-06-03T08:00:00+02:00") == 0
    rows = csv_rows(tmp_path / "out" / "events.csv")
    plain = [r for r in rows if r["file"] == PLAIN]
    assert plain and all(r["time_source"] == "explicit" for r in plain)
    assert plain[0]["start_utc"] == iso_utc(datetime(2025, 6, 3, 6, tzinfo=UTC).timestamp()
                                            + float(plain[0]["start_s"]))
    assert {r["time_source"] for r in rows if r["file"] != PLAIN} == {"audiomoth-comment",
                                                                      "guano"}
    assert "recording time unknown" not in capsys.readouterr().err


def test_timezone_reads_names_without_a_header_in_local_time(energy_model, tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    write_wav(card / "20250115_060000.WAV", burst_audio(2.0, [(0.5, 0.4, 0.3)]), SR)
    for zone, hour in (("UTC", 6), ("Europe/Berlin", 5)):  # CET in January: UTC+1
        out = tmp_path / zone.replace("/", "_")
        flags = ["--rtype", "csv"] + (["--timezone", zone] if zone != "UTC" else [])
        assert analyze_cli(card, out, energy_model, *flags) == 0
        (row,) = csv_rows(out / "events.csv")
        assert row["time_source"] == "filename"
        assert row["start_utc"] == iso_utc(datetime(2025, 1, 15, hour, tzinfo=UTC).timestamp()
                                           + float(row["start_s"]))


def test_every_output_type_holds_the_same_events(analysed):
    card, out, _ = analysed
    rows = csv_rows(out / "events.csv")
    want = sorted((r["file"], float(r["start_s"]), float(r["end_s"]), r["label"]) for r in rows)
    assert len(want) >= 6
    # raven and audacity: one file per recording, mirroring the card's folders
    per_file, labels = [], []
    for rel in STARTS:
        p = PurePosixPath(rel)
        table = out / p.parent / f"{p.stem}.Table.1.selections.txt"
        for line in table.read_text().splitlines()[1:]:
            cells = line.split("\t")
            per_file.append((rel, float(cells[3]), float(cells[4]), cells[7]))
        for line in (out / p.parent / f"{p.stem}.labels.txt").read_text().splitlines():
            start, end, label = line.split("\t")
            labels.append((rel, float(start), float(end), label))
    assert sorted(per_file) == sorted(labels) == want
    # kaleidoscope: INDIR the card, FOLDER the sub-folder, IN FILE the name
    kal = csv_rows(out / "kaleidoscope.csv")
    assert {k["INDIR"] for k in kal} == {str(card.resolve())}
    assert sorted((f"{k['FOLDER']}/{k['IN FILE']}", float(k["OFFSET"]),
                   round(float(k["OFFSET"]) + float(k["DURATION"]), 3), k["TOP1MATCH"])
                  for k in kal) == want
    assert {k["START UTC"] for k in kal} == {r["start_utc"] for r in rows}
    # the combined table: File Offset is the time in the file, Begin Time runs on across files
    combined = csv_rows_tsv(out / "combined.selections.txt")
    assert sorted((_rel(card, c["Begin Path"]), float(c["File Offset (s)"]),
                   round(float(c["File Offset (s)"]) + float(c["End Time (s)"])
                         - float(c["Begin Time (s)"]), 3), c["Species"])
                  for c in combined) == want
    durations = {MOTH: 4.0, PLAIN: 2.5, GUANO: 3.0}  # the card's order: 20250601/, then sm4/
    offsets = {MOTH: 0.0, PLAIN: 4.0, GUANO: 6.5}
    for c in combined:
        rel = _rel(card, c["Begin Path"])
        assert float(c["Begin Time (s)"]) == pytest.approx(offsets[rel]
                                                           + float(c["File Offset (s)"]))
        assert float(c["File Offset (s)"]) < durations[rel]
    assert (out / "combined.list.txt").read_text().split() == [str(card.resolve() / f) for f
                                                               in (MOTH, PLAIN, GUANO)]
    if _has_pyarrow():
        import pyarrow.parquet as pq

        table = pq.read_table(out / "events.parquet").to_pylist()
        assert [(t["file"], t["start_s"], t["end_s"], t["label"], t["start_utc"] or "",
                 t["time_source"], t["clip"]) for t in table] == [
            (r["file"], float(r["start_s"]), float(r["end_s"]), r["label"], r["start_utc"],
             r["time_source"], r["clip"]) for r in rows]


def csv_rows_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _rel(card: Path, path: str) -> str:
    return Path(path).relative_to(card.resolve()).as_posix()


def test_combined_raven_table_round_trips_through_meerkit_data_import(analysed, tmp_path):
    """`meerkit data import raven` finds each row's recording by `Begin File` (the name only:
    a combined table over two cards with equal file names would be ambiguous to it)."""
    from train.data.dataset import Dataset

    card, out, _ = analysed
    assert main(["data", "import", "raven", str(out / "combined.selections.txt"), "--audio",
                 str(card), "--out", str(tmp_path / "ds"), "--link"]) == 0
    ds = Dataset(tmp_path / "ds")
    rows = csv_rows(out / "events.csv")
    assert sorted(ds.files) == sorted({r["file"] for r in rows})
    for f in ds.files:
        # the importer computes end = File Offset + (End - Begin Time): float noise only
        assert sorted((a.start_s, round(a.end_s, 6), a.label) for a in ds.annotations(f)) == \
            sorted((float(r["start_s"]), float(r["end_s"]), r["label"])
                   for r in rows if r["file"] == f)


def test_clips_hold_the_recordings_samples_and_are_named_in_the_rows(analysed):
    card, out, _ = analysed
    rows = csv_rows(out / "events.csv")
    combined = csv_rows_tsv(out / "combined.selections.txt")
    assert sorted(c["Clip"] for c in combined) == sorted(r["clip"] for r in rows)
    clips = out / "clips"
    assert sorted(p.relative_to(clips).as_posix() for p in clips.rglob("*.wav")) == sorted(
        r["clip"] for r in rows)  # one per detection, nothing else
    for r in rows:
        start, end = float(r["start_s"]), float(r["end_s"])
        assert r["clip"] == clip_name(r["file"], r["label"], start, end, "wav")
        audio, info = read_wav(card / r["file"])
        rate = info.sample_rate
        lo = max(0, round((start - 0.5) * rate))
        hi = min(len(audio), round((end + 0.25) * rate))
        clip, clip_info = read_wav(clips / r["clip"])
        assert clip_info.sample_rate == rate and clip_info.bits_per_sample == 16
        assert len(clip) == hi - lo > 0
        np.testing.assert_array_equal(clip, audio[lo:hi])


def test_flac_clips_keep_the_samples(energy_model, tmp_path):
    sf = pytest.importorskip("soundfile")
    card = write_card(tmp_path / "card")
    out = tmp_path / "out"
    assert analyze_cli(card / "sm4", out, energy_model, "--rtype", "csv", "--clips",
                       str(out / "clips"), "--clips-format", "flac") == 0
    rows = csv_rows(out / "events.csv")
    assert rows and all(r["clip"].endswith(".flac") for r in rows)
    source, rate = sf.read(card / GUANO, dtype="int16")
    for r in rows:
        clip, clip_rate = sf.read(out / "clips" / r["clip"], dtype="int16")
        lo = max(0, round((float(r["start_s"]) - 1.0) * rate))
        hi = min(len(source), round((float(r["end_s"]) + 1.0) * rate))
        assert clip_rate == rate
        np.testing.assert_array_equal(clip, source[lo:hi])


def test_resume_redoes_what_the_new_settings_need(energy_model, tmp_path, capsys):
    card = write_card(tmp_path / "card")
    out = tmp_path / "out"

    def run(**kw):
        return analyze([card], AnalyzeConfig(model=str(energy_model), out=str(out), workers=1,
                                             progress=False, **kw))

    first = run(rtypes=["csv"])
    assert first.analysed == 3 and not (out / "kaleidoscope.csv").exists()
    # other outputs: written from the manifest, nothing analysed again
    other = run(rtypes=["kaleidoscope", "audacity"])
    assert other.analysed == 0 and other.skipped == 3
    assert len(csv_rows(out / "kaleidoscope.csv")) == len(csv_rows(out / "events.csv"))
    # another overlap (or hop), another start time, clips: analysed again
    hop = run(rtypes=["csv"], overlap_s=0.5)
    assert hop.analysed == 3
    assert {e["settings"]["hop_s"] for e in read_manifest(out / MANIFEST).values()} == {0.5}
    assert run(rtypes=["csv"], hop_s=0.5).analysed == 0  # the same hop, by its other name
    assert run(rtypes=["csv"], hop_s=0.5, audio_start_time="2025-06-03T06:00:00Z").analysed == 3
    clips = ClipSettings(str(out / "clips"))
    assert run(rtypes=["csv"], hop_s=0.5, audio_start_time="2025-06-03T06:00:00Z",
               clips=clips).analysed == 3
    again = dict(rtypes=["csv"], hop_s=0.5, audio_start_time="2025-06-03T06:00:00Z", clips=clips)
    assert run(**again).analysed == 0
    # a clip deleted by hand: that file is cut again
    manifest = {e["file"]: e for e in read_manifest(out / MANIFEST).values()}
    (out / "clips" / manifest[MOTH]["clips"][0]).unlink()
    assert run(**again).analysed_files == [MOTH]
    assert (out / "clips" / manifest[MOTH]["clips"][0]).is_file()
    lines = (out / MANIFEST).read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_overlap_and_hop_flags(energy_model, tmp_path, capsys):
    card = write_card(tmp_path / "card")
    default = tmp_path / "default"
    assert analyze_cli(card, default, energy_model, "--rtype", "csv") == 0
    # the card's hop is 0.2 s of a 1 s window: an overlap of 0.8 s is the same analysis
    same = tmp_path / "same"
    assert analyze_cli(card, same, energy_model, "--rtype", "csv", "--overlap", "0.8",
                       "--model-hop-s", "0.2") == 0
    assert csv_rows(same / "events.csv") == csv_rows(default / "events.csv")
    for flags, message in [
        (["--overlap", "0.5", "--model-hop-s", "0.2"], "--overlap 0.5 means a hop of 0.5 s"),
        (["--overlap", "1.0"], "--overlap 1: must be >= 0 and below the model's window"),
        (["--model-hop-s", "0.21"], "not a whole number of output frames"),
        (["--rtype", "raven,excel"], "--rtype 'excel': choose from raven, raven-combined"),
        (["--timezone", "Mars/Olympus"], "--timezone 'Mars/Olympus': not an IANA time zone"),
        (["--audio-start-time", "2025-06-01T05:30:00"], "has no time zone; add Z or +hh:mm"),
        (["--clips", str(tmp_path / "c"), "--clips-pre-s", "-1"], "--clips-pre-s -1: must be"),
    ]:
        assert analyze_cli(card, tmp_path / "x", energy_model, *flags) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (flags, err)


def test_recursion_is_the_default_and_can_be_turned_off(energy_model, tmp_path, capsys):
    card = write_card(tmp_path / "card")
    assert analyze_cli(card, tmp_path / "a", energy_model, "--rtype", "csv") == 0
    assert analyze_cli(card, tmp_path / "b", energy_model, "--rtype", "csv", "-r") == 0
    assert csv_rows(tmp_path / "a" / "events.csv") == csv_rows(tmp_path / "b" / "events.csv")
    capsys.readouterr()
    assert analyze_cli(card, tmp_path / "c", energy_model, "--no-recursive") == 2
    err = capsys.readouterr().err
    assert "no .wav/.flac files" in err and "--no-recursive" in err
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    assert "--no-recursive" in text and "--recursive" not in text.replace("--no-recursive", "")
    for flag in ("--rtype", "--overlap", "--model-hop-s", "--clips", "--clips-pre-s",
                 "--clips-post-s", "--clips-format", "--audio-start-time", "--timezone"):
        assert flag in text


def test_flac_clips_without_soundfile_name_the_extra(energy_model, tmp_path, monkeypatch):
    card = write_card(tmp_path / "card")
    monkeypatch.setitem(__import__("sys").modules, "soundfile", None)  # as if not installed
    with pytest.raises(UserError, match=r"--clips-format flac needs the soundfile package "
                                        r"\(pip install soundfile, or pip install "
                                        r"'meerkit\[analyze\]'\)"):
        analyze([card], AnalyzeConfig(model=str(energy_model), out=str(tmp_path / "out"),
                                      workers=1, progress=False,
                                      clips=ClipSettings(str(tmp_path / "c"), format="flac")))
