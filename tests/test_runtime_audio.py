"""edge_runtime.audio and the ring buffer: sources, conversion to the model format, devices."""

import io
import logging
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from edge_runtime.audio import (
    Conformer,
    InputDevice,
    SoxrResampler,
    StdinSource,
    WavSource,
    import_pyaudio,
    input_devices,
    make_resampler,
    parse_start_time,
    quiet_stderr,
    recording_start,
    select_device,
)
from edge_runtime.audio import resample as resample_module
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import read_wav, write_wav
from edge_runtime.detect import RingBuffer


def collect(source) -> np.ndarray:
    blocks = []
    source.run(blocks.append, threading.Event())
    return np.concatenate(blocks) if blocks else np.zeros((0, source.channels), np.float32)


@pytest.mark.parametrize("bits", [16, 24, 32, -32])
def test_wav_source_streams_what_read_wav_reads(tmp_path, bits):
    rng = np.random.default_rng(bits & 0xFF)
    x = np.clip(rng.standard_normal((7001, 2)) * 0.3, -1, 1)
    path = tmp_path / "a.wav"
    write_wav(path, x, 22050, bits=bits)
    source = WavSource(path, block_s=0.05)
    assert (source.sample_rate, source.channels) == (22050, 2)
    np.testing.assert_array_equal(collect(source), read_wav(path)[0])


def test_wav_source_reads_8_bit(tmp_path):
    raw = bytes(range(0, 256, 2)) * 10
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 8)
    path = tmp_path / "u8.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(raw)) + b"WAVEfmt "
                     + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(raw)) + raw)
    got = collect(WavSource(path, block_s=0.01))[:, 0]
    np.testing.assert_allclose(got, (np.frombuffer(raw, np.uint8) - 128.0) / 128.0)


def test_truncated_wav_is_read_up_to_the_last_frame_with_a_warning(tmp_path, caplog):
    path = tmp_path / "t.wav"
    write_wav(path, np.full(1000, 0.25), 16000)
    path.write_bytes(path.read_bytes()[:-101])  # lose 50.5 frames of a power cut
    with caplog.at_level(logging.WARNING):
        got = collect(WavSource(path))
    assert len(got) == 949 and "truncated" in caplog.text


@pytest.mark.parametrize("content, message", [
    (b"", "not a WAV file"),
    (b"hello world, not audio at all", "not a WAV file"),
    (b"fLaC\x00\x00\x00\x22" + b"\x00" * 40, "not a WAV file"),  # open_file_source reads it
])
def test_bad_audio_files(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        WavSource(path)


def test_empty_and_missing_wav(tmp_path):
    path = tmp_path / "empty.wav"
    write_wav(path, np.zeros(0), 16000)
    with pytest.raises(UserError, match="no audio samples"):
        WavSource(path)
    with pytest.raises(UserError, match="not found"):
        WavSource(tmp_path / "missing.wav")


def test_realtime_pacing_takes_the_audio_duration(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, np.zeros(4000), 16000)  # 0.25 s
    t0 = time.monotonic()
    collect(WavSource(path, block_s=0.05, realtime=True))
    assert 0.23 < time.monotonic() - t0 < 0.6


@pytest.mark.parametrize("fmt, dtype, scale", [("s16le", "<i2", 32768.0),
                                               ("s32le", "<i4", 2.0**31), ("f32le", "<f4", 1.0)])
def test_stdin_formats_and_partial_frames(fmt, dtype, scale, caplog):
    x = (np.random.default_rng(0).uniform(-0.9, 0.9, (1000, 3)) * scale).astype(dtype)
    raw = x.tobytes() + b"\x01\x02\x03"  # a torn last frame
    source = StdinSource(fmt, 48000, 3, block_s=0.003, stream=io.BytesIO(raw))
    with caplog.at_level(logging.WARNING):
        got = collect(source)
    np.testing.assert_allclose(got, x.astype(np.float32) / scale, rtol=1e-6)
    assert "3 trailing bytes ignored" in caplog.text


def test_conformer_selects_or_mixes_channels_and_zeroes_nonfinite(caplog):
    x = np.array([[0.1, 0.3], [np.nan, 0.5], [np.inf, -np.inf]], np.float32)
    with caplog.at_level(logging.WARNING):
        mix = Conformer(16000, 2, 16000, "mix")
        np.testing.assert_allclose(mix.process(x), [0.2, 0.25, 0.0])
        mix.process(x)
    assert mix.nonfinite == 6 and caplog.text.count("NaN/Inf") == 1  # warned once
    np.testing.assert_allclose(Conformer(16000, 2, 16000, "1").process(x), [0.3, 0.5, 0.0])
    with pytest.raises(UserError, match="only 2 channel"):
        Conformer(16000, 2, 16000, "2")


@pytest.mark.parametrize("rates", [(48000, 16000), (44100, 16000), (8000, 16000), (22050, 32000)])
def test_streaming_resampler_keeps_length_and_equals_one_shot(rates):
    soxr = pytest.importorskip("soxr")
    src, dst = rates
    t = np.arange(src) / src  # 1 s
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    r = SoxrResampler(src, dst)
    blocks = [r.process(x[i : i + 997]) for i in range(0, len(x), 997)] + [r.flush()]
    y = np.concatenate(blocks)
    assert len(y) == dst  # no drift, no lost tail
    ref = soxr.resample(x, src, dst, quality="HQ")
    mid = slice(dst // 10, -dst // 10)
    assert np.abs(y[mid] - ref[mid]).max() < 2e-3
    # streaming == one shot
    one = SoxrResampler(src, dst)
    np.testing.assert_allclose(np.concatenate([one.process(x), one.flush()]), y, atol=1e-5)


def test_resampler_removes_what_the_new_rate_cannot_hold():
    pytest.importorskip("soxr")
    src, dst = 48000, 16000
    t = np.arange(src) / src
    alias = np.sin(2 * np.pi * 12000 * t).astype(np.float32)  # above the new Nyquist (8 kHz)
    r = SoxrResampler(src, dst)
    y = np.concatenate([r.process(alias), r.flush()])
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 0.01


def test_conformer_resamples_and_numpy_is_a_deprecated_name_for_soxr(caplog, monkeypatch):
    pytest.importorskip("soxr")
    monkeypatch.setattr(resample_module, "_warned_numpy", False)
    x = np.sin(2 * np.pi * 200 * np.arange(48000) / 48000).astype(np.float32)[:, None]
    outputs = {}
    with caplog.at_level(logging.WARNING):
        for kind in ("numpy", "auto", "soxr"):
            c = Conformer(48000, 1, 16000, "mix", kind)
            c.reset()  # after a gap: a fresh resampler, no second warning
            outputs[kind] = np.concatenate([c.process(x[i : i + 4800])
                                            for i in range(0, 48000, 4800)] + [c.flush()])
    assert len(outputs["auto"]) == 16000
    np.testing.assert_array_equal(outputs["numpy"], outputs["auto"])
    np.testing.assert_array_equal(outputs["soxr"], outputs["auto"])
    assert caplog.text.count("deprecated") == 1
    assert make_resampler(16000, 16000, "auto") is None
    with pytest.raises(UserError, match="audio.resampler 'sinc'"):
        make_resampler(48000, 16000, "sinc")


def test_missing_soxr_is_a_user_error_naming_the_install(monkeypatch):
    import importlib

    real = importlib.import_module

    def no_soxr(name, *args):
        if name == "soxr":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(resample_module.importlib, "import_module", no_soxr)
    with pytest.raises(UserError, match=r"needs soxr.*meerkit\[edge\]"):
        Conformer(48000, 1, 16000)
    assert Conformer(16000, 1, 16000).process(np.ones((3, 1), np.float32)).tolist() == [1, 1, 1]


NOISY_CHILD = [sys.executable, "-c", "import os; os.write(2, b'ALSA lib pcm.c: noise\\n')"]


def test_quiet_stderr_silences_what_c_code_writes_to_fd_2(capfd):
    """PortAudio's ALSA/JACK chatter is written by C straight to fd 2: a child process that
    inherits the descriptor stands in for it."""
    quiet = logging.getLogger("test.quiet")
    quiet.setLevel(logging.INFO)
    with quiet_stderr(quiet):
        subprocess.run(NOISY_CHILD, check=True)
    subprocess.run([sys.executable, "-c", "import os; os.write(2, b'after\\n')"], check=True)
    print("restored", file=sys.stderr)
    assert capfd.readouterr().err == "after\nrestored\n"

    quiet.setLevel(logging.DEBUG)  # --log-level debug: the noise is what one wants to see
    with quiet_stderr(quiet):
        subprocess.run(NOISY_CHILD, check=True)
    assert "ALSA lib" in capfd.readouterr().err


def test_quiet_stderr_restores_fd_2_after_an_error(capfd):
    quiet = logging.getLogger("test.quiet.error")
    quiet.setLevel(logging.WARNING)
    with pytest.raises(RuntimeError), quiet_stderr(quiet):
        raise RuntimeError("device probing failed")
    subprocess.run(NOISY_CHILD, check=True)
    assert "noise" in capfd.readouterr().err


def test_select_device_by_index_name_or_default():
    devices = [InputDevice(0, "HDA Intel PCH: ALC257 Analog", 2, 44100),
               InputDevice(3, "AudioMoth USB Microphone", 1, 48000),
               InputDevice(4, "USB Audio CODEC", 2, 48000)]
    assert select_device(devices, "").index == 0
    assert select_device(devices, "", default=4).index == 4
    assert select_device(devices, "3").index == 3
    assert select_device(devices, "audiomoth").index == 3
    with pytest.raises(UserError, match="matches 2 devices"):
        select_device(devices, "usb")
    with pytest.raises(UserError, match="matches no input device"):
        select_device(devices, "zoom")
    with pytest.raises(UserError, match="no input device with that index"):
        select_device(devices, "7")


def test_no_sound_card_gives_a_clear_error():
    """With the real PortAudio: on this machine it lists no capture devices."""
    pyaudio = pytest.importorskip("pyaudio", reason="PyAudio not installed (meerkit[mic])")
    pa = pyaudio.PyAudio()
    try:
        devices = input_devices(pa)
    finally:
        pa.terminate()
    if devices:
        pytest.skip(f"this machine has {len(devices)} capture device(s); the no-device path "
                    "is covered by select_device([])")
    with pytest.raises(UserError, match="no audio input device found"):
        select_device(devices, "")
    assert import_pyaudio() is pyaudio


def test_start_time_options(tmp_path):
    assert parse_start_time("now", "x.wav") is None
    assert parse_start_time("2024-01-31T23:59:59Z", "-") == 1706745599.0
    for name in ("20240131_235959.WAV", "recording.wav"):  # the header is read too
        write_wav(tmp_path / name, np.zeros(10), 16000)
    assert recording_start(tmp_path / "20240131_235959.WAV").timestamp() == 1706745599.0
    with pytest.raises(UserError, match="no time zone"):
        parse_start_time("2024-01-31T23:59:59", "-")
    with pytest.raises(UserError, match="needs a name like"):
        parse_start_time("filename", str(tmp_path / "recording.wav"))


def test_ring_buffer_drops_and_counts_when_live_and_waits_for_files():
    live = RingBuffer(100, wait_when_full=False)
    for _ in range(5):
        live.put(np.zeros((40, 1), np.float32))
    assert (live.overruns, live.dropped_frames) == (3, 120)
    starts = [live.get(0.1)[0] for _ in range(2)]
    assert starts == [0, 40]  # indices count dropped audio, so the consumer sees the gap
    live.put(np.zeros((40, 1), np.float32))
    assert live.get(0.1)[0] == 200

    file_ring = RingBuffer(100, wait_when_full=True)
    for _ in range(2):
        file_ring.put(np.zeros((40, 1), np.float32))
    writer = threading.Thread(target=file_ring.put, args=(np.zeros((40, 1), np.float32),))
    writer.start()
    time.sleep(0.1)
    assert writer.is_alive()  # back-pressure instead of loss
    file_ring.get(0.1)
    writer.join(1)
    assert not writer.is_alive() and file_ring.dropped_frames == 0
    file_ring.close()
    assert file_ring.get(0.1) is not None and file_ring.get(0.1) is not None
    assert file_ring.get(0.1) is None
