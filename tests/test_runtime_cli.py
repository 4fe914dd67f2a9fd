"""edge-runtime end to end without a broker (detections as JSON lines): bad inputs give clear
messages and exit codes, every WAV encoding gives the same events, NaN/Inf are survived,
clips are written and retained."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import burst_audio, regular_bursts

from edge_runtime.cli import main
from edge_runtime.contract.wav import read_wav, write_wav

T0 = "2024-01-01T00:00:00Z"


def run(capsys, *args):
    code = main(["--no-mqtt", "--start-time", T0, *args])
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return code, events, err


def spans(events):
    return sorted((e["label"], e["start"], e["end"]) for e in events)


@pytest.fixture(scope="module")
def audio():
    return burst_audio(4.0, regular_bursts(4.0))


@pytest.mark.parametrize("bits", [16, 24, 32, -32])
def test_every_wav_encoding_gives_the_same_events(energy_model, audio, tmp_path, capsys, bits):
    path = tmp_path / f"a{bits}.wav"
    write_wav(path, audio, 16000, bits=bits)
    code, events, err = run(capsys, "--model", str(energy_model), "--input", str(path))
    assert code == 0, err
    assert spans(events) == [
        ("loud", "2024-01-01T00:00:00.300Z", "2024-01-01T00:00:00.600Z"),
        ("loud", "2024-01-01T00:00:01.300Z", "2024-01-01T00:00:01.600Z"),
        ("loud", "2024-01-01T00:00:02.300Z", "2024-01-01T00:00:02.600Z"),
        ("loud", "2024-01-01T00:00:03.300Z", "2024-01-01T00:00:03.600Z"),
        ("very_loud", "2024-01-01T00:00:01.300Z", "2024-01-01T00:00:01.600Z"),
        ("very_loud", "2024-01-01T00:00:03.300Z", "2024-01-01T00:00:03.600Z")]


def test_nan_and_inf_samples_are_zeroed_counted_and_warned_once(energy_model, audio, tmp_path,
                                                                capsys):
    x = audio.copy()
    x[100:200] = np.nan
    x[40000:40010] = np.inf
    x[50000] = -np.inf
    path = tmp_path / "nan.wav"
    write_wav(path, x, 16000, bits=-32)
    code, events, err = run(capsys, "--model", str(energy_model), "--input", str(path))
    assert code == 0
    assert err.count("NaN/Inf") == 1 and len(events) == 6


@pytest.mark.parametrize("content, message", [
    (b"RIFF\x10\x00\x00\x00WAVEjunk", "WAV has no 'fmt ' chunk"),
    (b"garbage" * 10, "not a WAV file"),
    (b"fLaC" + b"\x00" * 60, "cannot decode FLAC"),  # soundfile reads FLAC: a broken one
])
def test_bad_audio_is_a_clear_error(energy_model, tmp_path, capsys, content, message):
    if message == "cannot decode FLAC":
        pytest.importorskip("soundfile", reason="without soundfile FLAC is refused earlier")
    path = tmp_path / ("bad.flac" if content.startswith(b"fLaC") else "bad.wav")
    path.write_bytes(content)
    code, events, err = run(capsys, "--model", str(energy_model), "--input", str(path))
    assert code == 2 and message in err and "Traceback" not in err and not events


def test_empty_and_truncated_wavs(energy_model, audio, tmp_path, capsys):
    empty = tmp_path / "empty.wav"
    write_wav(empty, np.zeros(0), 16000)
    code, _, err = run(capsys, "--model", str(energy_model), "--input", str(empty))
    assert code == 2 and "no audio samples" in err
    cut = tmp_path / "cut.wav"
    write_wav(cut, audio, 16000)
    cut.write_bytes(cut.read_bytes()[: 44 + 2 * 16000 * 2 + 1])  # 2 s and half a sample
    code, events, err = run(capsys, "--model", str(energy_model), "--input", str(cut))
    assert code == 0 and "truncated" in err
    assert spans(events)[0][1] == "2024-01-01T00:00:00.300Z" and len(events) == 3


def test_bad_models_are_refused(energy_model, tmp_path, capsys, audio):
    wav = tmp_path / "a.wav"
    write_wav(wav, audio, 16000)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a flatbuffer at all" * 4)
    for model, message in ((junk, "not a TFLite model"),
                           (energy_model.with_name("energy-nocard.tflite"), "has no model card"),
                           (tmp_path / "missing.tflite", "model file not found")):
        code, _, err = run(capsys, "--model", str(model), "--input", str(wav))
        assert code == 2 and message in err, err
    code, _, err = run(capsys, "--input", str(wav))
    assert code == 2 and "model.path is not set" in err
    code, _, err = run(capsys, "--model", str(energy_model), "--input", str(wav),
                       "--model-thresholds", "lowd=0.3")
    assert code == 2 and "no label 'lowd' (did you mean 'loud'?)" in err


def test_threshold_override_changes_what_is_detected(energy_model, audio, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    write_wav(wav, audio, 16000)
    code, events, _ = run(capsys, "--model", str(energy_model), "--input", str(wav),
                          "--model-thresholds", "very_loud=1.0")
    assert code == 0 and {e["label"] for e in events} == {"loud"}


def test_microphone_without_a_sound_card(energy_model, capsys):
    pyaudio = pytest.importorskip("pyaudio", reason="PyAudio not installed (meerkit[mic])")
    pa = pyaudio.PyAudio()
    n = sum(pa.get_device_info_by_index(i)["maxInputChannels"] > 0
            for i in range(pa.get_device_count()))
    pa.terminate()
    if n:
        pytest.skip("this machine has a capture device")
    code, _, err = run(capsys, "--model", str(energy_model), "--input", "mic")
    assert code == 2 and "no audio input device found" in err
    assert main(["--list-devices"]) == 1
    assert "no audio input devices found" in capsys.readouterr().err


def test_stdin_input_with_another_rate_and_channels(energy_model, audio, capsys, tmp_path):
    """48 kHz stereo s16le on stdin, as `arecord -f S16_LE -r 48000 -c 2 -t raw` sends it."""
    soxr = pytest.importorskip("soxr")
    up = soxr.resample(audio, 16000, 48000)
    pcm = (np.clip(np.stack([up, up], 1), -1, 1) * 32767).astype("<i2").tobytes()
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime.cli", "--no-mqtt", "--start-time", T0, "--model",
         str(energy_model), "--input", "-", "--stdin-format", "s16le", "--stdin-rate", "48000",
         "--stdin-channels", "2"], input=pcm, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    events = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [e[0] for e in spans(events)] == ["loud"] * 4 + ["very_loud"] * 2


def test_clips_are_written_with_pre_and_post_roll_and_retained(energy_model, audio, tmp_path,
                                                              capsys):
    wav = tmp_path / "a.wav"
    write_wav(wav, audio, 16000)
    clips = tmp_path / "clips"
    code, events, _ = run(capsys, "--model", str(energy_model), "--input", str(wav),
                          "--clips-dir", str(clips), "--clips-pre-s", "0.2", "--clips-post-s",
                          "0.5", "--clips-max-files", "4")
    assert code == 0 and len(events) == 6
    files = sorted(clips.glob("*.wav"))
    assert len(files) == 4  # retention: the oldest two were deleted
    for f in files:
        x, info = read_wav(f)
        assert info.frames == round((0.2 + 0.3 + 0.5) * 16000)
        assert f.stem.split("_")[-1] in {e["event_id"] for e in events}


def test_check_without_broker_flags_problems(energy_model, audio, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    write_wav(wav, audio, 16000)
    assert main(["--check", "--model", str(energy_model), "--input", str(wav),
                 "--no-mqtt"]) == 0
    out = capsys.readouterr().out
    assert "[ok] audio" in out and "all checks passed" in out
    assert main(["--check", "--model", str(tmp_path / "nope.tflite"), "--input",
                 str(tmp_path / "nope.wav"), "--no-mqtt"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] model" in out and "[FAIL] audio" in out and "2 problem(s)" in out
