"""Call synthesisers (one sampler, renderer and annotated band per label) and the unlabelled
distractors a detector must learn to ignore.

Samplers take `fs`, a factor on every frequency they draw: it squeezes calls below Nyquist at
low sample rates and carries the dialect's pitch shift.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from train.data.synth.config import LABELS


def _fade(n: int, sr: int, ms: float) -> np.ndarray:
    env = np.ones(n)
    k = max(1, min(n // 2, int(sr * ms / 1000)))
    ramp = np.sin(0.5 * np.pi * (np.arange(k) + 0.5) / k) ** 2
    env[:k], env[n - k:] = ramp, ramp[::-1]
    return env


def _sine(freq_hz: np.ndarray, sr: int) -> np.ndarray:
    """Phase-continuous sine following an instantaneous frequency track."""
    return np.sin(2 * np.pi * np.cumsum(freq_hz) / sr)


def _sample_upsweep(rng: np.random.Generator, fs: float) -> dict:
    f0 = rng.uniform(1500, 3000) * fs
    return dict(dur=rng.uniform(0.06, 0.25), f0=f0, f1=f0 * rng.uniform(1.4, 2.2))


def _render_upsweep(p: dict, n: int, sr: int) -> np.ndarray:
    frac = np.arange(n) / n
    envelope = np.sin(np.pi * (frac + 0.5 / n)) ** 0.6
    return _sine(p["f0"] * (p["f1"] / p["f0"]) ** frac, sr) * envelope


def _band_upsweep(p: dict) -> tuple[float, float]:
    return 0.9 * p["f0"], 1.1 * p["f1"]


def _sample_harmonic_down(rng: np.random.Generator, fs: float) -> dict:
    f0 = rng.uniform(700, 1400) * fs
    return dict(dur=rng.uniform(0.15, 0.5), f0=f0, f1=f0 * rng.uniform(0.55, 0.8),
                vib_hz=rng.uniform(6, 14), vib_depth=rng.uniform(0.02, 0.06),
                rolloff=rng.uniform(0.5, 1.5))


def _render_harmonic_down(p: dict, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    vibrato = 1 + p["vib_depth"] * np.sin(2 * np.pi * p["vib_hz"] * t)
    f = (p["f0"] + (p["f1"] - p["f0"]) * t / t[-1]) * vibrato
    phase = 2 * np.pi * np.cumsum(f) / sr
    top = p["f0"] * (1 + p["vib_depth"])
    x = sum(k ** -p["rolloff"] * np.sin(k * phase) for k in range(1, 5) if k * top < 0.45 * sr)
    return x * _fade(n, sr, 15) * (1 - 0.4 * t / t[-1])


def _band_harmonic_down(p: dict) -> tuple[float, float]:
    return 0.9 * p["f1"] * (1 - p["vib_depth"]), 1.05 * 4 * p["f0"] * (1 + p["vib_depth"])


def _sample_trill(rng: np.random.Generator, fs: float) -> dict:
    return dict(dur=rng.uniform(0.2, 0.5), f0=rng.uniform(2500, 4500) * fs,
                drift=rng.uniform(-0.05, 0.05), pulse_hz=rng.uniform(12, 30),
                sharpness=rng.uniform(2, 6))


def _render_trill(p: dict, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    carrier = _sine(p["f0"] * (1 + p["drift"] * t / t[-1]), sr)
    pulses = (0.5 - 0.5 * np.cos(2 * np.pi * p["pulse_hz"] * t)) ** p["sharpness"]
    return carrier * pulses * _fade(n, sr, 5)


def _band_trill(p: dict) -> tuple[float, float]:
    lo, hi = sorted((p["f0"], p["f0"] * (1 + p["drift"])))
    return lo - 4 * p["pulse_hz"] - 50, hi + 4 * p["pulse_hz"] + 50


def _sample_click_train(rng: np.random.Generator, fs: float) -> dict:
    return dict(dur=rng.uniform(0.05, 0.3), rate_hz=rng.uniform(40, 120),
                accel=rng.uniform(-0.3, 0.3), fc=rng.uniform(3000, 6000) * fs,
                tau_s=rng.uniform(0.15e-3, 0.4e-3), seed=int(rng.integers(2**31)))


def _render_click_train(p: dict, n: int, sr: int) -> np.ndarray:
    rate = p["rate_hz"] * (1 + p["accel"] * np.arange(n) / n)
    count = np.floor(np.cumsum(rate) / sr)
    onsets = np.flatnonzero(np.diff(count, prepend=-1.0) > 0)  # first sample of each click
    train = np.zeros(n)
    train[onsets] = np.random.default_rng(p["seed"]).uniform(0.6, 1.0, len(onsets))
    tk = np.arange(max(2, int(6 * p["tau_s"] * sr))) / sr
    kernel = np.exp(-tk / p["tau_s"]) * np.sin(2 * np.pi * p["fc"] * tk)
    return np.convolve(train, kernel)[:n]


def _band_click_train(p: dict) -> tuple[float, float]:
    half = 1.5 / (np.pi * p["tau_s"])  # a few -3 dB bandwidths of the damped sine
    return max(200.0, p["fc"] - half), p["fc"] + half


def _sample_noise_burst(rng: np.random.Generator, fs: float) -> dict:
    return dict(dur=rng.uniform(0.02, 0.15), fc=rng.uniform(1000, 5000) * fs,
                bw=rng.uniform(400, 2000) * fs, decay=rng.uniform(0.2, 0.5),
                seed=int(rng.integers(2**31)))


def _render_noise_burst(p: dict, n: int, sr: int) -> np.ndarray:
    spec = np.fft.rfft(np.random.default_rng(p["seed"]).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec *= np.exp(-0.5 * ((f - p["fc"]) / (0.5 * p["bw"])) ** 4)  # flat-topped band
    t = np.arange(n) / n
    env = np.minimum(1.0, t * n / (0.002 * sr)) * np.exp(-t / p["decay"])
    return np.fft.irfft(spec, n) * env * _fade(n, sr, 2)


def _band_noise_burst(p: dict) -> tuple[float, float]:
    return p["fc"] - 0.55 * p["bw"], p["fc"] + 0.55 * p["bw"]


def _sample_two_note(rng: np.random.Generator, fs: float) -> dict:
    d1, gap, d2 = rng.uniform(0.06, 0.15), rng.uniform(0.02, 0.06), rng.uniform(0.08, 0.2)
    f1 = rng.uniform(2000, 3500) * fs
    return dict(dur=d1 + gap + d2, d1=d1, gap=gap, f1=f1, f2=f1 * rng.uniform(0.65, 0.85),
                glide=rng.uniform(-0.04, 0.04))


def _render_two_note(p: dict, n: int, sr: int) -> np.ndarray:
    x = np.zeros(n)
    n1, start2 = int(p["d1"] * sr), int((p["d1"] + p["gap"]) * sr)
    for a, b, f in ((0, n1, p["f1"]), (start2, n, p["f2"])):
        frac = np.arange(b - a) / (b - a)
        x[a:b] = _sine(f * (1 + p["glide"] * frac), sr) * _fade(b - a, sr, 8)
    return x


def _band_two_note(p: dict) -> tuple[float, float]:
    return 0.92 * p["f2"], 1.09 * p["f1"]


# label -> (sample parameters, render waveform, annotated frequency band)
CALLS: dict[str, tuple[Callable, Callable, Callable]] = {
    "upsweep": (_sample_upsweep, _render_upsweep, _band_upsweep),
    "harmonic_down": (_sample_harmonic_down, _render_harmonic_down, _band_harmonic_down),
    "trill": (_sample_trill, _render_trill, _band_trill),
    "click_train": (_sample_click_train, _render_click_train, _band_click_train),
    "noise_burst": (_sample_noise_burst, _render_noise_burst, _band_noise_burst),
    "two_note": (_sample_two_note, _render_two_note, _band_two_note),
}
assert tuple(CALLS) == LABELS


# --------------------------------------------------------------------------- distractors

def distractor(kind: str, p: dict, sr: int) -> np.ndarray:
    """Unlabelled transients: single clicks, low thumps, short tonal blips."""
    n = max(8, int(p["dur"] * sr))
    t = np.arange(n) / sr
    if kind == "click":
        return np.exp(-t / p["tau_s"]) * np.sin(2 * np.pi * p["f"] * t)
    if kind == "thump":
        glide = 1 - 0.3 * t / t[-1]
        return np.exp(-t / (0.25 * p["dur"])) * np.sin(2 * np.pi * p["f"] * glide * t)
    return np.sin(2 * np.pi * p["f"] * t) * np.hanning(n)  # blip


def sample_distractor(rng: np.random.Generator, fs: float, sr: int) -> tuple[str, dict]:
    kind = str(rng.choice(["click", "thump", "blip"]))
    if kind == "click":
        tau = rng.uniform(0.1e-3, 0.6e-3)
        return kind, dict(dur=8 * tau, tau_s=tau, f=rng.uniform(800, 6000) * fs)
    if kind == "thump":
        return kind, dict(dur=rng.uniform(0.05, 0.2), f=rng.uniform(40, 150))
    return kind, dict(dur=rng.uniform(0.01, 0.04), f=min(rng.uniform(500, 7000) * fs, 0.45 * sr))

