"""The dataset contract: a valid folder reads back exactly; every broken rule is one
DatasetError naming file and line; lenient mode skips and reports; clips carry the right
frame targets."""

import argparse
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge_runtime.contract.errors import UserError
from train.data import cli
from train.data.annotations import Annotation, read_annotations, write_annotations
from train.data.audio_io import RESAMPLER
from train.data.dataset import Dataset, DatasetError, read_splits, write_splits
from train.data.metadata import METADATA_FIELDS, Metadata, read_metadata, write_metadata

ROOT = Path(__file__).resolve().parents[1]
SR = 8000

ANNOTATIONS = """file,start_s,end_s,label,low_hz,high_hz,focal
a.wav,0.5,1.0,bark,300,2000,1
a.wav,2.0,2.5,chirp,,,
sub/b.flac,1.0,1.5,bark,,,no
"""
METADATA = """file,lat,lon,elevation_m,recorded_at,recorder_id,site,habitat,individual
a.wav,-25.5,31.25,512,2024-05-01T06:30:00+02:00,R1,K1,savanna,VHM001
sub/b.flac,,,,2024-05-02T18:00:00Z,R2,,,
"""
SPLITS = "file,split\na.wav,train\nsub/b.flac,val\nc.wav,test\n"


def write_audio(path: Path, seconds: float = 3.0, sr: int = SR, channels: int = 1) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    x = (0.1 * rng.standard_normal((round(seconds * sr), channels))).astype(np.float32)
    sf.write(path, x, sr, subtype="FLOAT" if path.suffix == ".wav" else "PCM_24")
    return x


def make_dataset(root: Path, annotations=ANNOTATIONS, metadata=METADATA, splits=SPLITS,
                 labels=None) -> Path:
    write_audio(root / "audio" / "a.wav")
    write_audio(root / "audio" / "sub" / "b.flac")
    write_audio(root / "audio" / "c.wav", seconds=1.0)
    for name, text in [("annotations.csv", annotations), ("metadata.csv", metadata),
                       ("splits.csv", splits), ("labels.txt", labels)]:
        if text is not None:
            (root / name).write_text(text)
    return root


def test_valid_dataset_reads_back(tmp_path):
    ds = Dataset(make_dataset(tmp_path))
    assert ds.files == ["a.wav", "c.wav", "sub/b.flac"]
    assert ds.labels == ["bark", "chirp"] and ds.sample_rate == SR
    assert ds.annotations("a.wav") == [
        Annotation("a.wav", 0.5, 1.0, "bark", 300.0, 2000.0, True),
        Annotation("a.wav", 2.0, 2.5, "chirp")]
    assert ds.annotations("sub/b.flac")[0].focal is False
    assert ds.annotations("c.wav") == []  # an unannotated file is a negative
    ev = ds.events("a.wav")[1]
    assert (ev.label, ev.start_s, ev.end_s, ev.file) == ("chirp", 2.0, 2.5, "a.wav")
    meta = ds.metadata("a.wav")
    assert (meta.lat, meta.lon, meta.elevation_m, meta.site, meta.individual) == (
        -25.5, 31.25, 512.0, "K1", "VHM001")
    assert meta.recorded_at == datetime(2024, 5, 1, 4, 30, tzinfo=timezone.utc)
    b = ds.metadata("sub/b.flac")
    assert b.is_missing("lat") and not b.is_missing("recorded_at") and b.site is None
    assert b.recorded_at.utcoffset() == timedelta(0)
    assert ds.metadata("c.wav") == Metadata(file="c.wav")  # not in metadata.csv: all missing
    assert ds.splits == {"a.wav": "train", "sub/b.flac": "val", "c.wav": "test"}
    assert ds.files_in("val") == ["sub/b.flac"]
    info = ds.info("c.wav")
    assert (info.sample_rate, info.frames, info.channels, info.duration_s) == (SR, SR, 1, 1.0)
    with pytest.raises(DatasetError, match="split 'shift'.*splits: test, train, val"):
        ds.files_in("shift")


def test_labels_txt_sets_order_and_may_hold_unused_labels(tmp_path):
    ds = Dataset(make_dataset(tmp_path, labels="chirp\n\nbark\ngrunt\n"))
    assert ds.labels == ["chirp", "bark", "grunt"]
    assert Dataset(tmp_path, labels=["bark", "chirp", "x"]).labels == ["bark", "chirp", "x"]


# (file to write, its text, expected "path:line" suffix, expected words in the message)
BAD = {
    "end before start": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,0,1,bark\na.wav,3.4,1.2,bark\n",
        "annotations.csv:3", "end_s 1.2 is before start_s 3.4"),
    "zero length": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,1,1,bark\n",
        "annotations.csv:2", "end_s 1 equals start_s 1"),
    "negative start": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,-0.5,1,bark\n",
        "annotations.csv:2", "start_s -0.5 is negative"),
    "start past end of file": (
        "annotations.csv", "file,start_s,end_s,label\nc.wav,1.5,1.8,bark\n",
        "annotations.csv:2", "past the end of c.wav (1 s long)"),
    "missing audio": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,0,1,bark\nnope.wav,0,1,bark\n",
        "annotations.csv:3", "file 'nope.wav' is not in audio/"),
    "audio/ prefix": (
        "annotations.csv", "file,start_s,end_s,label\naudio/a.wav,0,1,bark\n",
        "annotations.csv:2", "drop the 'audio/' prefix"),
    "absolute path": (
        "annotations.csv", "file,start_s,end_s,label\n/x/a.wav,0,1,bark\n",
        "annotations.csv:2", "must be a path relative to audio/"),
    "non-numeric": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,0,1.0s,bark\n",
        "annotations.csv:2", "end_s '1.0s' is not a number"),
    "non-numeric optional": (
        "annotations.csv", "file,start_s,end_s,label,low_hz\na.wav,0,1,bark,low\n",
        "annotations.csv:2", "low_hz 'low' is not a number"),
    "unknown column": (
        "annotations.csv", "file,start_s,end_s,label,species\na.wav,0,1,bark,x\n",
        "annotations.csv:1", "unknown column 'species'"),
    "missing column": (
        "annotations.csv", "file,start_s,label\na.wav,0,bark\n",
        "annotations.csv:1", "missing required column(s) end_s"),
    "empty label": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,0,1,\n",
        "annotations.csv:2", "label is empty"),
    "extra cell": (
        "annotations.csv", "file,start_s,end_s,label\na.wav,0,1,bark,extra\n",
        "annotations.csv:2", "5 cells but the header names 4"),
    "bad focal": (
        "annotations.csv", "file,start_s,end_s,label,focal\na.wav,0,1,bark,maybe\n",
        "annotations.csv:2", "focal 'maybe'"),
    "high below low": (
        "annotations.csv", "file,start_s,end_s,label,low_hz,high_hz\na.wav,0,1,bark,900,100\n",
        "annotations.csv:2", "high_hz 100 is below low_hz 900"),
    "label outside labels.txt": (
        "labels.txt", "bark\n", "annotations.csv:3", "label 'chirp' is not in the label set"),
    "labels.txt repeats": ("labels.txt", "bark\nchirp\nbark\n", "labels.txt:3", "repeats line 1"),
    "metadata duplicate": (
        "metadata.csv", "file,site\na.wav,K1\nc.wav,K2\na.wav,K3\n",
        "metadata.csv:4", "'a.wav' is listed twice (first on line 2)"),
    "metadata naive time": (
        "metadata.csv", "file,recorded_at\na.wav,2024-05-01T06:30:00\n",
        "metadata.csv:2", "has no time zone"),
    "metadata bad time": (
        "metadata.csv", "file,recorded_at\na.wav,yesterday\n",
        "metadata.csv:2", "not an ISO 8601 date-time"),
    "metadata lat range": (
        "metadata.csv", "file,lat,lon\na.wav,95,10\n", "metadata.csv:2", "lat 95 is outside"),
    "metadata lon range": (
        "metadata.csv", "file,lat,lon\na.wav,10,-181\n", "metadata.csv:2", "lon -181 is outside"),
    "metadata non-numeric": (
        "metadata.csv", "file,elevation_m\na.wav,high\n",
        "metadata.csv:2", "elevation_m 'high' is not a number"),
    "metadata unknown column": (
        "metadata.csv", "file,notes\na.wav,hi\n", "metadata.csv:1", "unknown column 'notes'"),
    "metadata missing audio": (
        "metadata.csv", "file,site\ngone.wav,K1\n", "metadata.csv:2", "'gone.wav' is not in audio/"),
    "splits duplicate": (
        "splits.csv", "file,split\na.wav,train\na.wav,val\n",
        "splits.csv:3", "'a.wav' is listed twice"),
    "splits bad name": (
        "splits.csv", "file,split\na.wav,Train\n", "splits.csv:2", "did you mean 'train'"),
    "splits odd name": (
        "splits.csv", "file,split\na.wav,hold out\n", "splits.csv:2", "not a lowercase name"),
    "splits missing column": (
        "splits.csv", "file,fold\na.wav,1\n", "splits.csv:1", "unknown column 'fold'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_broken_rule_is_one_error_naming_file_and_line(tmp_path, case):
    name, text, where, words = BAD[case]
    make_dataset(tmp_path)
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError) as err:
        Dataset(tmp_path)
    message = str(err.value)
    assert message.startswith(str(tmp_path / where) + ":"), message
    assert words in message
    assert "\n" not in message
    assert isinstance(err.value, UserError)


def test_unreadable_audio_names_the_file(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF....WAVEjunk" * 4)
    with pytest.raises(DatasetError, match=r"broken\.wav: unreadable audio"):
        Dataset(tmp_path)


def test_mixed_sample_rates_need_a_target_rate(tmp_path):
    make_dataset(tmp_path)
    write_audio(tmp_path / "audio" / "fast.wav", 1.0, sr=16000)
    with pytest.raises(DatasetError, match=r"different sample rates \[8000 Hz \(a\.wav\), "
                                           r"16000 Hz \(fast\.wav\)\]"):
        Dataset(tmp_path)
    ds = Dataset(tmp_path, sample_rate=16000)
    audio, sr = ds.load("a.wav")
    assert sr == 16000 and audio.shape == (3 * 16000,)


@pytest.mark.parametrize("missing", ["annotations.csv", "audio"])
def test_fatal_problems_raise_even_when_lenient(tmp_path, missing):
    make_dataset(tmp_path)
    target = tmp_path / missing
    if target.is_dir():
        for p in sorted(target.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DatasetError, match=missing):
        Dataset(tmp_path, lenient=True)


def test_missing_required_column_raises_even_when_lenient(tmp_path):
    make_dataset(tmp_path, annotations="file,start_s,label\na.wav,0,bark\n")
    with pytest.raises(DatasetError, match="missing required column"):
        Dataset(tmp_path, lenient=True)


def test_lenient_skips_bad_rows_and_reports_them(tmp_path):
    annotations = ("file,start_s,end_s,label,comment\n"
                   "a.wav,0.5,1.0,bark,ok\n"
                   "a.wav,3.4,1.2,bark,backwards\n"
                   "nope.wav,0,1,bark,missing\n"
                   "a.wav,x,1,bark,text\n"
                   "broken.wav,0,1,bark,unreadable\n"
                   "c.wav,0.1,0.2,chirp,ok\n")
    metadata = "file,site\na.wav,K1\na.wav,K2\nbroken.wav,K3\n"
    make_dataset(tmp_path, annotations=annotations, metadata=metadata,
                 splits="file,split\na.wav,train\nc.wav,Test\n")
    (tmp_path / "audio" / "broken.wav").write_bytes(b"not audio at all")
    ds = Dataset(tmp_path, lenient=True)
    assert ds.files == ["a.wav", "c.wav", "sub/b.flac"]
    assert [(a.file, a.label) for f in ds.files for a in ds.annotations(f)] == [
        ("a.wav", "bark"), ("c.wav", "chirp")]
    assert ds.metadata("a.wav").site == "K1"
    assert ds.splits == {"a.wav": "train"}
    where = str(tmp_path)
    expected = [
        "broken.wav: unreadable audio",  # reported once, not again for its rows
        "annotations.csv:1: unknown column 'comment'",
        "annotations.csv:3: end_s 1.2 is before start_s 3.4",
        "annotations.csv:4: file 'nope.wav' is not in audio/",
        "annotations.csv:5: start_s 'x' is not a number",
        "metadata.csv:3: file 'a.wav' is listed twice",
        "splits.csv:3: split 'Test'",
    ]
    assert len(ds.problems) == len(expected), ds.problems
    for problem, words in zip(ds.problems, expected, strict=True):
        assert problem.startswith(where) and words in problem, (problem, words)


def test_clips_carry_frame_targets_of_known_annotation(tmp_path):
    (tmp_path / "audio").mkdir()
    x = write_audio(tmp_path / "audio" / "a.wav", seconds=3.0)
    (tmp_path / "annotations.csv").write_text(
        "file,start_s,end_s,label\na.wav,1.0,1.5,bark\na.wav,2.21,2.23,chirp\n")
    ds = Dataset(tmp_path)
    clips = list(ds.clips(clip_s=2.0, hop_s=1.0, frame_rate_hz=50.0))
    assert [c.offset_s for c in clips] == [0.0, 1.0]  # the second clip reaches the end
    for c in clips:
        assert c.audio.dtype == np.float32 and c.audio.shape == (2 * SR,)
        assert c.targets.dtype == np.float32 and c.targets.shape == (100, 2)
        assert c.sample_rate == SR and c.file == "a.wav"
    np.testing.assert_array_equal(clips[0].audio, x[: 2 * SR, 0])
    bark, chirp = clips[0].targets.T
    assert np.flatnonzero(bark).tolist() == list(range(50, 75))  # [1.0, 1.5) s at 50 fps
    assert chirp.sum() == 0  # 2.21 s is past this clip
    bark, chirp = clips[1].targets.T
    assert np.flatnonzero(bark).tolist() == list(range(0, 25))
    assert np.flatnonzero(chirp).tolist() == [60, 61]  # 1.21-1.23 s overlaps frames 60 and 61

    # A hop that does not divide the file: the last clip is zero-padded.
    clips = list(ds.clips(clip_s=2.0, hop_s=2.0))
    assert [c.offset_s for c in clips] == [0.0, 2.0]
    np.testing.assert_array_equal(clips[1].audio[:SR], x[2 * SR :, 0])
    assert not clips[1].audio[SR:].any()
    assert np.flatnonzero(clips[1].targets[:, 1]).tolist() == [10, 11]


def test_clips_of_one_split_and_short_files(tmp_path):
    ds = Dataset(make_dataset(tmp_path))
    clips = list(ds.clips(clip_s=10.0, split="test"))  # c.wav is 1 s long
    assert len(clips) == 1 and clips[0].file == "c.wav"
    assert clips[0].audio.shape == (10 * SR,) and not clips[0].audio[SR:].any()
    assert clips[0].metadata == Metadata(file="c.wav")
    assert clips[0].targets.shape == (500, 2)


def test_multichannel_is_mixed_to_mono_and_resampled(tmp_path):
    (tmp_path / "audio").mkdir()
    t = np.arange(2 * SR) / SR
    left, right = np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 300 * t)
    sf.write(tmp_path / "audio" / "st.wav", np.stack([left, right], 1).astype(np.float32), SR,
             subtype="FLOAT")
    (tmp_path / "annotations.csv").write_text("file,start_s,end_s,label\n")
    ds = Dataset(tmp_path)
    assert ds.info("st.wav").channels == 2 and ds.labels == []
    mono, sr = ds.load("st.wav")
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)

    up = Dataset(tmp_path, sample_rate=16000)
    audio, sr = up.load("st.wav")
    assert sr == 16000 and audio.dtype == np.float32 and audio.shape == (4 * SR,)
    t2 = np.arange(4 * SR) / 16000
    ref = (np.sin(2 * np.pi * 440 * t2) + 0.5 * np.sin(2 * np.pi * 300 * t2)) / 2
    mid = slice(1000, -1000)  # away from the filter's edge effects
    assert np.max(np.abs(audio[mid] - ref[mid])) < 1e-2, RESAMPLER
    clip = next(up.clips(clip_s=1.0))
    assert clip.sample_rate == 16000 and clip.audio.shape == (16000,)


def test_annotation_and_metadata_files_round_trip(tmp_path):
    rows = [Annotation("a.wav", 0.1, 0.30000000000000004, "bark", 1e-5, 4000.0, True),
            Annotation("sub/b.flac", 2.0, 3.0, "chirp")]
    write_annotations(tmp_path / "annotations.csv", rows)
    assert "e-" not in (tmp_path / "annotations.csv").read_text()
    assert read_annotations(tmp_path / "annotations.csv") == rows
    meta = [Metadata("a.wav", lat=-25.0, recorded_at=datetime(2024, 1, 2, 3, 4, 5,
                                                                tzinfo=timezone.utc), site="K1"),
            Metadata("b.wav", elevation_m=12.5)]
    write_metadata(tmp_path / "metadata.csv", meta)
    assert read_metadata(tmp_path / "metadata.csv") == {m.file: m for m in meta}
    write_splits(tmp_path / "splits.csv", {"a.wav": "train", "b.wav": "shift"})
    assert read_splits(tmp_path / "splits.csv") == {"a.wav": "train", "b.wav": "shift"}
    assert set(METADATA_FIELDS) | {"file"} == set(Metadata.__dataclass_fields__)
    with pytest.raises(KeyError):
        Metadata().is_missing("latitude")


def test_validate_summary(tmp_path, capsys):
    make_dataset(tmp_path)
    args = argparse.Namespace(root=tmp_path, lenient=False, sample_rate=None)
    assert cli.validate_command(args) == 0
    out = capsys.readouterr().out
    assert "files: 3, 0.00 h (sample rate 8000 Hz)" in out
    assert "labels: 2, annotations: 3" in out
    # 3 events of 0.5 s = 75 frames out of (3 + 3 + 1) s * 50 = 350 frames
    assert "frames with an event (at 50 fps): 21.4%" in out
    assert "site          33.3%" in out and "recorded_at   66.7%" in out
    assert "splits: test 1, train 1, val 1" in out


def test_validate_cli_on_bad_dataset_is_one_line_without_traceback(tmp_path):
    make_dataset(tmp_path, annotations="file,start_s,end_s,label\na.wav,3.4,1.2,bark\n")
    proc = subprocess.run([sys.executable, "-m", "meerkit.cli", "data", "validate",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"meerkit: error: {tmp_path / 'annotations.csv'}:2: "
                     "end_s 1.2 is before start_s 3.4 (an event needs a positive duration)"]
