"""edge-runtime reads FLAC (and whatever else soundfile reads) when soundfile is installed, and
says which package to install when it is not; `audio.start_time = "filename"` reads the
recorder's header as `meerkit analyze` does, so the device and the batch agree."""

import json
import sys

import numpy as np
import pytest
from conftest import burst_audio, regular_bursts

from edge_runtime.audio import SoundFileSource, WavSource, open_file_source, parse_start_time
from edge_runtime.cli import main
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from tests.test_recorder_time import write_recorder_wav


def events_of(capsys, *args):
    code = main(["--no-mqtt", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return sorted((e["label"], e["start"], e["end"], e["confidence"]["max"])
                  for e in map(json.loads, out.splitlines()))


@pytest.mark.parametrize("fmt, subtype", [("FLAC", "PCM_16"), ("OGG", "VORBIS")])
def test_flac_and_other_soundfile_formats_give_the_wav_events(energy_model, tmp_path, capsys,
                                                              fmt, subtype):
    sf = pytest.importorskip("soundfile", reason="FLAC is read with soundfile")
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile has no {fmt}")
    audio = burst_audio(4.0, regular_bursts(4.0))
    wav, other = tmp_path / "rec.wav", tmp_path / f"rec.{fmt.lower()}"
    write_wav(wav, audio, 16000)
    sf.write(other, audio, 16000, format=fmt, subtype=subtype)
    source = open_file_source(other)
    assert isinstance(source, SoundFileSource) and source.sample_rate == 16000
    flags = ["--start-time", "2024-01-01T00:00:00Z", "--model", str(energy_model), "--input"]
    want = events_of(capsys, *flags, str(wav))
    got = events_of(capsys, *flags, str(other))
    if fmt == "FLAC":  # lossless: the very same events
        assert got == want and len(want) == 6
    else:  # lossy: the same detections, confidences a little apart
        assert [g[:3] for g in got] == [w[:3] for w in want]


def test_flac_without_soundfile_names_the_extra(energy_model, tmp_path, capsys, monkeypatch):
    path = tmp_path / "rec.flac"
    path.write_bytes(b"fLaC" + b"\0" * 60)
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as on a recorder's `edge` install
    with pytest.raises(UserError, match=r"reading FLAC needs the soundfile package \(pip install "
                                        r"soundfile, or pip install 'meerkit\[analyze\]'\)"):
        open_file_source(path)
    assert main(["--no-mqtt", "--model", str(energy_model), "--input", str(path)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'meerkit[analyze]'" in err and "Traceback" not in err
    wav = tmp_path / "a.wav"  # WAV needs no soundfile
    write_wav(wav, np.zeros(100), 16000)
    assert isinstance(open_file_source(wav), WavSource)


def test_device_start_time_from_the_header_like_the_batch(energy_model, tmp_path, capsys):
    """An AudioMoth file named in local time (UTC+2): the device reads the comment's offset, as
    `meerkit analyze` does, instead of taking the name for UTC."""
    from edge_runtime.batch import AnalyzeConfig, analyze

    comment = ("Recorded at 05:30:00 01/06/2025 (UTC+2) by AudioMoth 24F319055FDF3F2B at medium "
               "gain while battery was 4.1V and temperature was 18.3C.")
    path = write_recorder_wav(tmp_path / "20250601_053000.WAV", comment, rate=16000,
                              audio=burst_audio(3.0, regular_bursts(3.0)))
    assert parse_start_time("filename", str(path)) == 1748748600.0  # 2025-06-01T03:30:00Z
    stream = events_of(capsys, "--start-time", "filename", "--model", str(energy_model),
                       "--input", str(path))
    assert stream and all(e[1].startswith("2025-06-01T03:30:0") for e in stream)
    out = tmp_path / "out"
    assert analyze([path], AnalyzeConfig(model=str(energy_model), out=str(out), workers=1,
                                         progress=False, rtypes=["csv"])).ok
    lines = (out / "events.csv").read_text().splitlines()[1:]
    batch = sorted((c[1], c[6]) for c in (line.split(",") for line in lines))
    assert batch == sorted((e[0], e[1]) for e in stream)
