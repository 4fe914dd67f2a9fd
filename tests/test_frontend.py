"""The numpy log-mel front end (runtime side) and its torch mirror (training side)."""

import dataclasses

import numpy as np
import pytest
import torch

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.frontend import (
    StreamingLogMel,
    check_frontend,
    logmel,
    mel_filterbank,
)
from edge_runtime.contract.windows import WindowStarts
from export.student import LogMel, default_frontend

SR = 16000


def field_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet noise, a loud chirp, a click and a stretch of digital silence."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    t = np.arange(n) / SR
    x = 0.003 * rng.standard_normal(n)
    x += 0.5 * np.sin(2 * np.pi * (500 + 3000 * t) * t) * (t > 0.3) * (t < 0.8)
    x[n // 2] += 0.9
    x[-n // 5 :] = 0.0
    return x.astype(np.float32)


@pytest.mark.parametrize("hop_length, center", [(320, True), (160, False), (256, True)])
def test_numpy_and_torch_front_ends_agree(hop_length, center):
    frontend = dataclasses.replace(default_frontend(SR), hop_length=hop_length, center=center,
                                   mean=-6.0, std=2.0)
    audio = np.stack([field_audio(2.0, 0), field_audio(2.0, 1) * 0.1])
    ours = logmel(audio, frontend, SR)
    mirror = LogMel(frontend, SR)(torch.from_numpy(audio)).numpy()
    assert ours.shape == (2, 32000 // hop_length, 64) and ours.dtype == np.float32
    assert np.abs(ours - mirror).max() < 1e-4
    streaming = StreamingLogMel(frontend, SR, audio.shape[1])(audio)
    assert np.abs(streaming - mirror).max() < 1e-4


def bird_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Field-like audio: background noise, chirps and clicks at several levels, digital
    silence (the log floor) and a clipped stretch."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    t = np.arange(n) / SR
    x = 0.003 * rng.standard_normal(n)
    for k, level in enumerate(rng.choice([0.01, 0.1, 0.5, 0.9], int(seconds))):
        span = (t > k + 0.2) & (t < k + 0.2 + rng.uniform(0.05, 0.6))
        f0 = rng.uniform(300, 5000)
        x += level * np.sin(2 * np.pi * (f0 + 2000 * (t - k)) * (t - k)) * span
        x[int((k + rng.random()) * SR) % n] += level
    x[n // 3 : n // 3 + SR] = 0.0
    return np.clip(x, -1, 1).astype(np.float32)


def quantise(v: np.ndarray, scale: float, zero: int) -> np.ndarray:
    """What TFLiteModel hands an int8 interpreter."""
    return np.clip(np.round(v / scale + zero), -128, 127).astype(np.int8)


def stream_windows(audio: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, list[int]]:
    starts = list(range(0, len(audio) - window + 1, hop))
    return np.stack([audio[s : s + window] for s in starts]), starts


@pytest.mark.parametrize("hop_length, center, n_fft, win_length", [
    (320, True, 512, 400), (160, False, 512, 400), (256, True, 1024, 640), (320, True, 320, 320)])
@pytest.mark.parametrize("window_hop", [16000, 8000, 3200, 3210])
def test_streaming_front_end_equals_the_float64_reference(hop_length, center, n_fft, win_length,
                                                          window_hop):
    """Windows of one stream in random batches: features within 1e-5 of `logmel`, int8
    inputs bit-identical, and (when window starts are whole hops) each frame computed once."""
    frontend = dataclasses.replace(default_frontend(SR), hop_length=hop_length, center=center,
                                   n_fft=n_fft, win_length=win_length, mean=-6.0, std=3.0)
    audio = bird_audio(12.0, seed=window_hop)
    windows, starts = stream_windows(audio, 16000, window_hop)
    reference = logmel(windows, frontend, SR)
    streaming = StreamingLogMel(frontend, SR, 16000)
    rng, parts, i = np.random.default_rng(0), [], 0
    while i < len(windows):
        n = int(rng.integers(1, 5))
        parts.append(streaming(windows[i : i + n], WindowStarts(7, starts[i], window_hop)).copy())
        i += n
    ours = np.concatenate(parts)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-5
    for scale, zero in [(0.02, 0), (0.035, -20), (0.05, 10)]:
        np.testing.assert_array_equal(quantise(ours, scale, zero), quantise(reference, scale, zero))
    f, frames = streaming, streaming.frames
    edges = frames - (f.k_hi - f.k_lo)
    if window_hop % hop_length:  # no frame sharing: every frame of every window
        assert f.frames_computed == len(windows) * frames
    else:  # edges per window, and every interior frame of the stream once
        interior = {s // hop_length + k for s in starts for k in range(f.k_lo, f.k_hi)}
        assert f.frames_computed == len(windows) * edges + len(interior)


def test_streams_are_kept_apart_and_windows_without_starts_are_computed_whole():
    frontend = dataclasses.replace(default_frontend(SR), mean=-6.0, std=3.0)
    a, b = bird_audio(4.0, 1), bird_audio(4.0, 2)
    (wa, sa), (wb, sb) = stream_windows(a, 16000, 8000), stream_windows(b, 16000, 8000)
    streaming = StreamingLogMel(frontend, SR, 16000)
    for k in range(len(wa)):  # interleaved: no frame of one stream leaks into the other
        got_a = streaming(wa[k : k + 1], WindowStarts(1, sa[k], 8000)).copy()
        got_b = streaming(wb[k : k + 1], WindowStarts(2, sb[k], 8000))
        assert np.abs(got_a - logmel(wa[k : k + 1], frontend, SR)).max() < 1e-5
        assert np.abs(got_b - logmel(wb[k : k + 1], frontend, SR)).max() < 1e-5
    whole = streaming(wa)  # no starts: nothing cached is used
    assert np.abs(whole - logmel(wa, frontend, SR)).max() < 1e-5


def test_frames_are_centred_on_their_span():
    frontend = default_frontend(SR)  # hop 320: frame k covers samples [320 k, 320 (k + 1))
    audio = np.zeros((1, 16000), np.float32)
    audio[0, 320 * 20 + 160] = 1.0  # the middle of frame 20
    energy = logmel(audio, frontend, SR)[0].mean(axis=1)
    assert energy.shape == (50,)
    assert int(np.argmax(energy)) == 20
    assert energy[19] == pytest.approx(energy[21], abs=1e-3)  # symmetric around it


def test_a_tone_lands_in_the_mel_band_of_its_frequency():
    frontend = default_frontend(SR)
    t = np.arange(SR) / SR
    peak = np.argmax(logmel(np.sin(2 * np.pi * 2000 * t)[None], frontend, SR)[0, 25])
    bank = mel_filterbank(SR, frontend.n_fft, frontend.n_mels, frontend.fmin, frontend.fmax)
    freqs = np.linspace(0, SR / 2, frontend.n_fft // 2 + 1)
    assert abs(freqs[np.argmax(bank[:, peak])] - 2000) < 100
    assert bank.max() == pytest.approx(1.0, abs=0.05) and (bank >= 0).all()


def test_silence_is_the_log_floor_and_normalisation_is_applied():
    frontend = dataclasses.replace(default_frontend(SR), mean=-5.0, std=2.0)
    out = logmel(np.zeros((1, 8000), np.float32), frontend, SR)
    assert np.allclose(out, (np.log(frontend.log_offset) + 5.0) / 2.0)


def test_bad_parameters_are_user_errors():
    bad = dataclasses.replace(default_frontend(SR), fmax=12000.0)
    with pytest.raises(UserError, match="fmax"):
        check_frontend(bad, SR)
    with pytest.raises(UserError, match="win_length"):
        LogMel(dataclasses.replace(default_frontend(SR), win_length=1024), SR)
