"""The numpy log-mel front end (runtime side) and its torch mirror (training side)."""

import dataclasses

import numpy as np
import pytest
import torch

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.frontend import check_frontend, logmel, mel_filterbank
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
