"""Importers (Raven, Audacity, MeerKAT-style) produce valid dataset folders holding every
source row; Raven -> dataset -> Raven keeps every selection."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import Event
from train.data.annotations import Annotation
from train.data.dataset import Dataset, DatasetError
from train.data.importers import import_audacity, import_meerkat, import_raven
from train.data.raven import RavenSelection, export_raven, read_raven_table, write_raven_table

ROOT = Path(__file__).resolve().parents[1]
SR = 8000
HEADER = ("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\t"
          "High Freq (Hz)\tDelta Time (s)\tSpecies\tNotes")


def write_audio(path: Path, seconds: float = 3.0, sr: int = SR, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.random.default_rng(0).standard_normal((round(seconds * sr), channels))
    sf.write(path, x.astype(np.float32), sr)


def raven_rows(selections):
    """Table lines as Raven writes them: each selection in the Waveform and Spectrogram view."""
    lines = [HEADER]
    for n, (start, end, low, high, label) in enumerate(selections, start=1):
        # The waveform view row carries a full-band box; the spectrogram row is the drawn one.
        lines.append(f"{n}\tWaveform 1\t1\t{start:.6f}\t{end:.6f}\t0.000\t{SR / 2:.3f}\t"
                     f"{end - start:.6f}\t{label}\t")
        lines.append(f"{n}\tSpectrogram 1\t1\t{start:.6f}\t{end:.6f}\t{low}\t{high}\t"
                     f"{end - start:.6f}\t{label}\tseen")
    return "\n".join(lines) + "\n"


SELECTIONS = {
    "rec1": [(0.512, 0.873, 1200.5, 3400.25, "AMRO"), (1.25, 1.5, 300.0, 900.0, "WOTH"),
             (1.3, 2.9, 0.0, 4000.0, "AMRO")],
    "rec2": [(0.0, 0.25, 2000.0, 3000.0, "WOTH")],
}


@pytest.fixture
def raven_src(tmp_path):
    write_audio(tmp_path / "rec" / "rec1.wav")
    write_audio(tmp_path / "rec" / "night" / "rec2.flac", seconds=1.0, channels=2)
    write_audio(tmp_path / "rec" / "unannotated.wav")
    tables = tmp_path / "tables"
    tables.mkdir()
    for stem, sels in SELECTIONS.items():
        (tables / f"{stem}.Table.1.selections.txt").write_text(raven_rows(sels))
    return tmp_path


def as_tuples(rows):
    return sorted((r.start_s, r.end_s, r.low_hz, r.high_hz, r.label) for r in rows)


def test_raven_round_trip_keeps_every_selection(raven_src, tmp_path):
    ds = import_raven([raven_src / "tables"], raven_src / "rec", tmp_path / "ds")
    assert ds.files == ["night/rec2.flac", "rec1.wav"]  # unannotated audio is not imported
    assert ds.labels == ["AMRO", "WOTH"] and ds.problems == []
    assert as_tuples(ds.annotations("rec1.wav")) == sorted(SELECTIONS["rec1"])
    assert (tmp_path / "ds" / "metadata.csv").read_text().splitlines()[0] == "file"
    assert (tmp_path / "ds" / "labels.txt").read_text() == "AMRO\nWOTH\n"
    Dataset(tmp_path / "ds")  # the written folder validates on its own

    written = export_raven(ds, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "night/rec2.Table.1.selections.txt", "rec1.Table.1.selections.txt"]
    for stem, sels in SELECTIONS.items():
        table = next(p for p in written if p.name.startswith(stem + "."))
        back = read_raven_table(table)
        assert as_tuples(back) == sorted(sels)
        assert [s.selection for s in back] == list(range(1, len(sels) + 1))
        assert table.read_text().splitlines()[0].split("\t") == [
            "Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
            "Low Freq (Hz)", "High Freq (Hz)", "Species"]

    # ... and the exported tables import again to the same annotations.
    again = import_raven(written, tmp_path / "ds" / "audio", tmp_path / "ds2")
    for f in ds.files:
        assert again.annotations(f) == ds.annotations(f)


def test_raven_duplicate_views_keep_the_spectrogram_box(raven_src):
    rows = read_raven_table(raven_src / "tables" / "rec1.Table.1.selections.txt")
    assert len(rows) == 3
    assert rows[0] == RavenSelection(1, 0.512, 0.873, "AMRO", 1200.5, 3400.25, 1, None, None)
    assert rows[0].line == 3  # the spectrogram row's line


def test_raven_multi_file_table_uses_begin_path_and_file_offset(raven_src, tmp_path):
    table = tmp_path / "all.txt"  # any name: the Begin Path column names the audio
    table.write_text(
        "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\t"
        "High Freq (Hz)\tBegin Path\tFile Offset (s)\tCall Type\n"
        "1\tSpectrogram 1\t1\t0.5\t0.75\t100\t200\tC:\\field\\rec1.wav\t0.5\tsong\n"
        "2\tSpectrogram 1\t1\t3.25\t3.5\t100\t200\tC:\\field\\night\\rec2.flac\t0.25\tcall\n")
    ds = import_raven([table], raven_src / "rec", tmp_path / "ds")
    assert ds.annotations("night/rec2.flac") == [
        Annotation("night/rec2.flac", 0.25, 0.5, "call", 100.0, 200.0)]
    assert ds.annotations("rec1.wav")[0].label == "song"  # "Call Type" found as label column


def test_raven_label_column_option_and_missing_label_column(raven_src, tmp_path):
    table = raven_src / "tables" / "rec1.Table.1.selections.txt"
    ds = import_raven([table], raven_src / "rec", tmp_path / "ds", label_column="notes")
    assert ds.labels == ["seen"]
    table.write_text(raven_rows(SELECTIONS["rec1"]).replace("\tSpecies\t", "\tWho\t"))
    with pytest.raises(DatasetError, match=r"rec1\.Table\.1\.selections\.txt:1: no label column"):
        import_raven([table], raven_src / "rec", tmp_path / "ds2")


def test_raven_errors_name_table_and_line(raven_src, tmp_path):
    tables = raven_src / "tables"
    (tables / "ghost.Table.1.selections.txt").write_text(raven_rows([(0, 1, 0, 1, "x")]))
    with pytest.raises(DatasetError, match=r"ghost\.Table\.1\.selections\.txt: no audio file "
                                           r"'ghost\.wav' or 'ghost\.flac'"):
        import_raven([tables], raven_src / "rec", tmp_path / "ds")
    (tables / "ghost.Table.1.selections.txt").unlink()

    text = raven_rows(SELECTIONS["rec1"]).splitlines()
    text[4] = text[4].replace("1.250000\t1.500000", "1.250000\tsoon")  # selection 2, spectrogram
    for i in (5, 6):  # selection 3 (both views) starts past the end of the 3 s file
        text[i] = text[i].replace("1.300000\t2.900000", "3.500000\t3.900000")
    (tables / "rec1.Table.1.selections.txt").write_text("\n".join(text) + "\n")
    with pytest.raises(DatasetError, match=r"rec1\.Table\.1\.selections\.txt:5: "
                                           r"End Time \(s\) 'soon' is not a number"):
        import_raven([tables], raven_src / "rec", tmp_path / "ds")

    ds = import_raven([tables], raven_src / "rec", tmp_path / "ds", lenient=True)
    assert [p.split(str(tables) + "/")[1] for p in ds.problems] == [
        "rec1.Table.1.selections.txt:5: End Time (s) 'soon' is not a number",
        "rec1.Table.1.selections.txt:7: start 3.5 s is past the end of rec1.wav (3 s long)",
    ]
    # Selection 2's waveform row (line 4) stands in for its broken spectrogram row.
    assert as_tuples(ds.annotations("rec1.wav")) == [
        (0.512, 0.873, 1200.5, 3400.25, "AMRO"), (1.25, 1.5, 0.0, 4000.0, "WOTH")]
    Dataset(tmp_path / "ds")  # what was written is strictly valid


def test_import_refuses_a_non_empty_output_and_can_link(raven_src, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        import_raven([raven_src / "tables"], raven_src / "rec", tmp_path / "busy")
    ds = import_raven([raven_src / "tables"], raven_src / "rec", tmp_path / "ds", link=True)
    linked = tmp_path / "ds" / "audio" / "rec1.wav"
    assert linked.is_symlink() and linked.resolve() == (raven_src / "rec" / "rec1.wav").resolve()
    assert ds.load("rec1.wav")[0].shape == (3 * SR,)


def test_write_raven_table_from_events_adds_confidence(tmp_path):
    events = [Event("bark", 0.5, 0.75, confidence_max=0.91, confidence_mean=0.5, file="a.wav"),
              Event("chirp", 1.0, 1.02, confidence_max=0.6)]
    path = tmp_path / "det.txt"
    write_raven_table(path, events, nyquist_hz=8000)
    rows = read_raven_table(path)
    assert [(r.label, r.start_s, r.end_s, r.low_hz, r.high_hz, r.confidence) for r in rows] == [
        ("bark", 0.5, 0.75, 0.0, 8000.0, 0.91), ("chirp", 1.0, 1.02, 0.0, 8000.0, 0.6)]
    with pytest.raises(ValueError, match="nyquist_hz"):
        write_raven_table(path, events)


def test_audacity_labels_with_spectral_selections(tmp_path):
    write_audio(tmp_path / "rec" / "pond.wav")
    write_audio(tmp_path / "rec" / "creek.flac")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "pond.txt").write_text(
        "0.500000\t0.873000\tbark\n"
        "\\\t1200.000000\t3400.500000\n"
        "1,250000\t1,500000\tchirp\n"  # decimal commas from a European-locale Audacity
        "2.000000\t2.500000\tcroak call\n"
        "\\\t-1.000000\t-1.000000\n")
    (labels / "creek_labels.txt").write_text("0.1\t0.2\tbark\n")
    ds = import_audacity([labels], tmp_path / "rec", tmp_path / "ds")
    assert ds.annotations("pond.wav") == [
        Annotation("pond.wav", 0.5, 0.873, "bark", 1200.0, 3400.5),
        Annotation("pond.wav", 1.25, 1.5, "chirp"),
        Annotation("pond.wav", 2.0, 2.5, "croak call")]
    assert ds.annotations("creek.flac") == [Annotation("creek.flac", 0.1, 0.2, "bark")]

    (labels / "pond.txt").write_text("0.5\t0.5\tbark\n\\\t1\t2\n1\t2\tchirp\n")
    with pytest.raises(DatasetError, match=r"pond\.txt:1: point label at 0\.5 s"):
        import_audacity([labels], tmp_path / "rec", tmp_path / "ds2")
    ds = import_audacity([labels], tmp_path / "rec", tmp_path / "ds3", lenient=True)
    assert len(ds.problems) == 1 and "pond.txt:1: point label" in ds.problems[0]
    assert ds.annotations("pond.wav") == [Annotation("pond.wav", 1.0, 2.0, "chirp")]


def test_meerkat_clip_folder(tmp_path):
    clips = tmp_path / "clips"
    for name in ("c1", "c2", "c3", "c4", "c5"):
        write_audio(clips / f"{name}.wav", seconds=10.0, sr=SR)
    (clips / "c1.csv").write_text(  # the MeerKAT release form (Audition markers)
        "Name,Start,Duration,Time Format,Type,Description\n"
        "cc,0:01.250,0:00.300,decimal,Cue,\n"
        "sn,2.5,0.125,decimal,Cue,\n"
        "agg,0:09.900,0:00.500,decimal,Cue,\n")  # runs past the clip end: kept
    (clips / "c2.txt").write_text("0.5\t1.0\tal\n")  # headerless start, end, label
    (clips / "c3.csv").write_text("start,end,label\n3,3.5,cc\n")
    (clips / "c5.csv").write_text("")  # annotated, nothing there: a negative clip
    ds = import_meerkat(clips, tmp_path / "ds")
    assert ds.files == ["c1.wav", "c2.wav", "c3.wav", "c5.wav"]  # c4 has no label file
    assert [(a.label, a.start_s, round(a.end_s, 9)) for a in ds.annotations("c1.wav")] == [
        ("cc", 1.25, 1.55), ("sn", 2.5, 2.625), ("agg", 9.9, 10.4)]
    assert ds.annotations("c2.wav") == [Annotation("c2.wav", 0.5, 1.0, "al")]
    assert ds.annotations("c3.wav") == [Annotation("c3.wav", 3.0, 3.5, "cc")]
    assert ds.annotations("c5.wav") == [] and ds.labels == ["agg", "al", "cc", "sn"]

    (clips / "c3.csv").write_text("Name,Start,Duration\ncc,0:0x.5,0.3\n")
    with pytest.raises(DatasetError, match=r"c3\.csv:2: start '0:0x\.5' is not a time"):
        import_meerkat(clips, tmp_path / "ds2")


def test_import_cli_end_to_end(tmp_path):
    clips = tmp_path / "clips"
    write_audio(clips / "c1.wav", seconds=2.0)
    (clips / "c1.csv").write_text("Name,Start,Duration\ncc,0:00.500,0:00.250\n")
    cmd = [sys.executable, "-m", "meerkit.cli", "data", "import", "meerkat", str(clips),
           "--out", str(tmp_path / "ds")]
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "labels: 1, annotations: 1" in ok.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines() == [
        f"meerkit: error: {tmp_path / 'ds'}: already exists and is not empty; "
        "choose a new --out folder"]
    out = subprocess.run([sys.executable, "-m", "meerkit.cli", "data", "to-raven",
                          str(tmp_path / "ds"), "--out", str(tmp_path / "raven")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    back = read_raven_table(tmp_path / "raven" / "c1.Table.1.selections.txt")
    assert [(s.label, s.start_s, s.end_s) for s in back] == [("cc", 0.5, 0.75)]
