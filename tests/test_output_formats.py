"""Every `--rtype` table of a card-like tree of nested folders parses back to the same events;
the combined Raven table round-trips through the dataset importer (`meerkit data import raven`)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from edge_runtime.output_formats import (
    COMBINED_COLUMNS,
    COMBINED_LIST,
    COMBINED_TABLE,
    EVENTS_CSV,
    EVENTS_PARQUET,
    KALEIDOSCOPE_CSV,
    AnalysedFile,
    EventRow,
    combined_raven_table,
    default_rtypes,
    parse_rtypes,
    write_outputs,
)

RATE = 16000
# (rel path, duration s)
CARD = [("20250603/20250603_210000.WAV", 3.0), ("20250603/20250603_220000.WAV", 2.5),
        ("20250604/20250604_010000.WAV", 4.0)]


@pytest.fixture
def card(tmp_path):
    root = tmp_path / "card"
    files = []
    for rel, duration in CARD:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, np.zeros(int(duration * RATE), np.float32), RATE)
        files.append(AnalysedFile(str(path), rel, duration, RATE))
    f1, _, f3 = files
    rows = [
        EventRow(f3.file, f3.rel, "owl", 0.5, 1.25, 0.9, 0.7, "2025-06-03T23:00:00.500Z", "guano",
                 "20250604/20250604_010000_0.500s-1.250s_owl.wav"),
        EventRow(f1.file, f1.rel, "frog", 1.5, 2.75, 0.8125, 0.5, "2025-06-03T19:00:01.500Z",
                 "audiomoth-comment"),
        EventRow(f1.file, f1.rel, "owl", 0.25, 1.0, 0.625, 0.6, "", "unknown"),
    ]
    return root, files, rows


def _key(file: str, start: float, end: float, label: str) -> tuple:
    return (Path(file).name, round(start, 6), round(end, 6), label)


def _expected(rows):
    return sorted(_key(r.rel, r.start_s, r.end_s, r.label) for r in rows)


def test_combined_raven_round_trips_through_the_importer(card, tmp_path):
    from train.data.importers import import_raven

    root, files, rows = card
    written = write_outputs(tmp_path / "out", ["raven-combined"], rows, files)
    table = tmp_path / "out" / COMBINED_TABLE
    assert written == [table, tmp_path / "out" / COMBINED_LIST]
    dataset = import_raven([table], root, tmp_path / "ds")
    got = sorted(_key(a.file, a.start_s, a.end_s, a.label)
                 for f in dataset.files for a in dataset.annotations(f))
    assert got == _expected(rows)
    assert sorted(dataset.files) == sorted([CARD[0][0], CARD[2][0]])


def test_combined_table_counts_time_across_the_sequence(card):
    _, files, rows = card
    lines = [line.split("\t") for line in combined_raven_table(rows, files).splitlines()]
    assert tuple(lines[0]) == COMBINED_COLUMNS
    col = {name: i for i, name in enumerate(lines[0])}
    body = [dict((name, cells[i]) for name, i in col.items()) for cells in lines[1:]]
    assert [b["Selection"] for b in body] == ["1", "2", "3"]
    # File 1's events, then file 3's, shifted by files 1 and 2 (3.0 + 2.5 s) although file 2
    # has no events: Raven's sequence contains it.
    assert [(b["Begin Time (s)"], b["End Time (s)"], b["File Offset (s)"]) for b in body] == [
        ("0.25", "1", "0.25"), ("1.5", "2.75", "1.5"), ("6", "6.75", "0.5")]
    assert [b["Begin File"] for b in body] == ["20250603_210000.WAV", "20250603_210000.WAV",
                                               "20250604_010000.WAV"]
    assert body[2]["Begin Path"] == files[2].file and Path(body[2]["Begin Path"]).is_absolute()
    assert [b["Time Source"] for b in body] == ["unknown", "audiomoth-comment", "guano"]
    assert body[1]["Start UTC"] == "2025-06-03T19:00:01.500Z" and body[0]["Start UTC"] == ""
    assert {b["High Freq (Hz)"] for b in body} == {"8000"}
    assert [b["Clip"] for b in body] == ["", "", "20250604/20250604_010000_0.500s-1.250s_owl.wav"]


def test_combined_list_names_every_file_in_order(card, tmp_path):
    _, files, rows = card
    write_outputs(tmp_path, ["raven-combined"], rows, files)
    assert (tmp_path / COMBINED_LIST).read_text().splitlines() == [f.file for f in files]


def test_per_file_raven_tables_mirror_the_folders(card, tmp_path):
    from train.data.importers import import_raven
    from train.data.raven import read_raven_table

    root, files, rows = card
    written = write_outputs(tmp_path / "out", ["raven"], rows, files)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in written] == [
        "20250603/20250603_210000.Table.1.selections.txt",
        "20250603/20250603_220000.Table.1.selections.txt",
        "20250604/20250604_010000.Table.1.selections.txt"]
    assert read_raven_table(written[1]) == []  # header only: analysed, nothing found
    first = read_raven_table(written[0])
    assert [(s.start_s, s.end_s, s.label, s.confidence) for s in first] == [
        (0.25, 1.0, "owl", 0.625), (1.5, 2.75, "frog", 0.8125)]
    dataset = import_raven([tmp_path / "out"], root, tmp_path / "ds")
    got = sorted(_key(a.file, a.start_s, a.end_s, a.label)
                 for f in dataset.files for a in dataset.annotations(f))
    assert got == _expected(rows)


def test_audacity_label_tracks_round_trip(card, tmp_path):
    from train.data.importers import import_audacity

    root, files, rows = card
    written = write_outputs(tmp_path / "out", ["audacity"], rows, files)
    assert written[0].read_text() == "0.25\t1\towl\n1.5\t2.75\tfrog\n"
    assert written[1].read_text() == ""
    dataset = import_audacity([written[0], written[2]], root, tmp_path / "ds")
    got = sorted(_key(a.file, a.start_s, a.end_s, a.label)
                 for f in dataset.files for a in dataset.annotations(f))
    assert got == _expected(rows)


def test_kaleidoscope_csv(card, tmp_path):
    root, files, rows = card
    write_outputs(tmp_path, ["kaleidoscope"], rows, files)
    with open(tmp_path / KALEIDOSCOPE_CSV, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [(g["INDIR"], g["FOLDER"], g["IN FILE"], g["OFFSET"], g["DURATION"], g["TOP1MATCH"],
             g["TOP1DIST"], g["TIME SOURCE"]) for g in got] == [
        (str(root), "20250603", "20250603_210000.WAV", "0.25", "0.75", "owl", "0.625", "unknown"),
        (str(root), "20250603", "20250603_210000.WAV", "1.5", "1.25", "frog", "0.8125",
         "audiomoth-comment"),
        (str(root), "20250604", "20250604_010000.WAV", "0.5", "0.75", "owl", "0.9", "guano")]


def test_csv_and_parquet_parse_back(card, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _, files, rows = card
    written = write_outputs(tmp_path, "csv,parquet", rows, files)
    assert written == [tmp_path / EVENTS_CSV, tmp_path / EVENTS_PARQUET]
    with open(tmp_path / EVENTS_CSV, newline="") as fh:
        from_csv = list(csv.DictReader(fh))
    from_parquet = pq.read_table(tmp_path / EVENTS_PARQUET).to_pylist()
    assert len(from_csv) == len(from_parquet) == 3
    for c, p, r in zip(from_csv, from_parquet,
                       sorted(rows, key=lambda r: (r.rel, r.start_s)), strict=True):
        assert c["file"] == p["file"] == r.rel
        assert c["label"] == p["label"] == r.label
        for k in ("start_s", "end_s", "confidence_max", "confidence_mean"):
            assert float(c[k]) == p[k] == getattr(r, k)
        assert c["start_utc"] == (p["start_utc"] or "") == r.start_utc
        assert c["time_source"] == p["time_source"] == r.time_source
        assert c["clip"] == (p["clip"] or "") == r.clip


def test_parquet_without_pyarrow_names_the_extra(card, tmp_path, monkeypatch):
    _, files, rows = card
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match=r"meerkit\[analyze\]"):
        write_outputs(tmp_path, ["parquet"], rows, files)
    assert default_rtypes() == ["raven", "csv"]


def test_labels_cannot_break_tab_separated_tables(tmp_path):
    f = AnalysedFile(str(tmp_path / "a.wav"), "a.wav", 10.0, 8000)
    row = EventRow(f.file, f.rel, "bad\tlabel\nname", 1.0, 2.0, 0.5, 0.5)
    text = combined_raven_table([row], [f])
    assert text.splitlines()[1].split("\t")[7] == "bad label name"
    write_outputs(tmp_path / "out", ["audacity"], [row], [f])
    assert (tmp_path / "out" / "a.labels.txt").read_text() == "1\t2\tbad label name\n"


def test_events_of_unknown_files_are_a_bug(tmp_path):
    row = EventRow("x.wav", "x.wav", "owl", 1.0, 2.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="not in the run"):
        write_outputs(tmp_path, ["raven"], [row], [])


def test_default_rtypes_do_not_depend_on_pyarrow():
    """parquet only when asked: the same command writes the same files on every install."""
    pytest.importorskip("pyarrow.parquet")
    assert default_rtypes() == ["raven", "csv"]


def test_parse_rtypes():
    assert parse_rtypes("raven, CSV,raven") == ["raven", "csv"]
    with pytest.raises(UserError, match="--rtype 'table'"):
        parse_rtypes("table")
    with pytest.raises(UserError, match="at least one"):
        parse_rtypes([])


def test_atomic_text_writes_leave_no_temporary_and_invent_no_folder(tmp_path):
    from edge_runtime.contract.atomic import write_text_atomic

    target = tmp_path / "a" / "t.csv"
    with pytest.raises(OSError):
        write_text_atomic(target, "x\n")  # the folder is the caller's to make
    assert write_text_atomic(target, "a,b\r\n", newline="", make_folder=True) == target
    write_text_atomic(target, "c,d\r\n", newline="")  # replaces
    assert target.read_bytes() == b"c,d\r\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["t.csv"]
