"""The log-mel front end of student models, in numpy: what the field runtime computes before it
calls the int8 backbone (the front end stays float; see notes/export-toolchain.md).
`export/student.py` mirrors it in torch for training; a test holds the two to 1e-4.

Definition (all parameters from the card's `Frontend`):
* frames: frame k covers samples [k * hop, (k + 1) * hop) of its window, so a window of n
  samples gives n // hop frames (the teacher's convention). With `center` the analysis
  window of length n_fft is centred on the middle of that span (zero padding at both ends,
  never reflection: a frame must not depend on audio that is not there); without it, it
  starts at k * hop.
* spectrum: periodic Hann window of `win_length` samples, centred inside `n_fft` (as
  torch.stft does), power |DFT|^2 of the first n_fft // 2 + 1 bins.
* mel: HTK mel scale (2595 log10(1 + f / 700)), `n_mels` triangular filters between fmin
  and fmax with peak 1 (no Slaney area normalisation: the power keeps its scale, which
  keeps `log_offset` meaningful as an absolute floor).
* log(mel + log_offset), then (x - mean) / std with the card's scalar statistics.

Computed in float64 and returned as float32.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edge_runtime.contract.card import Frontend
from edge_runtime.contract.errors import UserError


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def check_frontend(frontend: Frontend, sample_rate: int) -> None:
    """UserError for parameters the front end cannot honour."""
    f = frontend
    problems = []
    if f.kind != "logmel":
        problems.append(f"kind is {f.kind!r}, not 'logmel'")
    if not 0 < f.win_length <= f.n_fft:
        problems.append(f"need 0 < win_length ({f.win_length}) <= n_fft ({f.n_fft})")
    if f.hop_length <= 0 or f.n_mels <= 0:
        problems.append("hop_length and n_mels must be > 0")
    if not 0 <= f.fmin < f.fmax <= sample_rate / 2:
        problems.append(f"need 0 <= fmin ({f.fmin}) < fmax ({f.fmax}) <= {sample_rate / 2:g} Hz")
    if f.log_offset <= 0 or f.std <= 0:
        problems.append("log_offset and std must be > 0")
    if problems:
        raise UserError("log-mel front end: " + "; ".join(problems))


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
                   ) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) float64 triangular HTK filters, peak 1."""
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (freqs[:, None] - lower) / (centre - lower)
    falling = (upper - freqs[:, None]) / (upper - centre)
    bank = np.maximum(0.0, np.minimum(rising, falling))
    bank.setflags(write=False)
    return bank


@lru_cache(maxsize=8)
def analysis_window(n_fft: int, win_length: int) -> np.ndarray:
    """Periodic Hann of win_length, zero-padded to n_fft and centred (torch.stft's layout)."""
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = hann
    window.setflags(write=False)
    return window


def padding(frontend: Frontend, n_samples: int) -> tuple[int, int]:
    """Zeros added (left, right) so that exactly n_samples // hop analysis frames fit."""
    f = frontend
    frames = n_samples // f.hop_length
    left = (f.n_fft - f.hop_length) // 2 if f.center else 0
    needed = f.n_fft + max(frames - 1, 0) * f.hop_length
    return left, max(needed - left - n_samples, 0)


def n_frames(frontend: Frontend, n_samples: int) -> int:
    return n_samples // frontend.hop_length


def power_spectrogram(audio: np.ndarray, frontend: Frontend) -> np.ndarray:
    """(batch, samples) -> (batch, frames, n_fft // 2 + 1) float64 power."""
    f = frontend
    x = np.asarray(audio, dtype=np.float64)
    frames = x.shape[-1] // f.hop_length
    left, right = padding(f, x.shape[-1])
    x = np.pad(x, ((0, 0), (left, right)))
    starts = np.arange(frames) * f.hop_length
    index = starts[:, None] + np.arange(f.n_fft)[None, :]  # (frames, n_fft)
    framed = x[:, index] * analysis_window(f.n_fft, f.win_length)  # (batch, frames, n_fft)
    spectrum = np.fft.rfft(framed, n=f.n_fft, axis=-1)
    return spectrum.real**2 + spectrum.imag**2


def logmel(audio: np.ndarray, frontend: Frontend, sample_rate: int) -> np.ndarray:
    """Normalised log-mel features: (batch, samples) -> (batch, samples // hop, n_mels) float32."""
    f = frontend
    audio = np.asarray(audio)
    if audio.ndim != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {audio.shape}")
    if audio.shape[-1] < f.hop_length:
        raise ValueError(f"a window of {audio.shape[-1]} samples is shorter than one hop "
                         f"({f.hop_length} samples)")
    bank = mel_filterbank(sample_rate, f.n_fft, f.n_mels, float(f.fmin), float(f.fmax))
    mel = power_spectrogram(audio, f) @ bank  # (batch, frames, n_mels)
    return ((np.log(mel + f.log_offset) - f.mean) / f.std).astype(np.float32)
