"""Rendering a plan to audio: ambient noise, calls at their SNR, distractors, then the
recorder's channel (gain, EQ tilt, high-pass, in-band resonance) and its electrical noise
(self-noise, mains hum, in-band whine, DC offset)."""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np

from train.data.synth.calls import CALLS, distractor
from train.data.synth.config import SynthConfig
from train.data.synth.plan import FilePlan, file_rng, fscale
from train.data.synth.world import Recorder

RESONANCE_SIGMA_OCT = 0.14  # Gaussian bell in octaves: ~1/3 octave between its -50 % points

@lru_cache(maxsize=8)
def _freqs(n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1 / sr).astype(np.float32)
    f.flags.writeable = False
    return f


def _white_spectrum(rng: np.random.Generator, bins: int) -> np.ndarray:
    """Random complex64 rfft bins. Uniform rather than Gaussian parts: 5x cheaper to draw, and
    every time sample sums thousands of bins, so the waveform is Gaussian all the same."""
    return (rng.random(2 * bins, dtype=np.float32) - np.float32(0.5)).view(np.complex64)


def _shaped_noise(rng: np.random.Generator, n: int, gain: np.ndarray) -> np.ndarray:
    """Gaussian noise (float32) with magnitude response `gain` over rfft bins, unit RMS."""
    x = np.fft.irfft(_white_spectrum(rng, len(gain)) * gain, n)  # complex64 -> float32: fast
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def _slow_envelope(rng: np.random.Generator, n: int, sr: int, per_s: float,
                   depth: float) -> np.ndarray:
    """Log-normal envelope with mean square ~1, from `per_s` random knots a second.

    Interpolated on a 32-sample grid and held: the envelope moves too slowly for the steps to
    matter.
    """
    hold = 32
    coarse = -(-n // hold)
    knots = max(2, int(n / sr * per_s) + 2)
    log_env = np.interp(np.arange(coarse), np.linspace(0, coarse, knots),
                        rng.standard_normal(knots))
    env = np.repeat(np.exp(depth * log_env).astype(np.float32), hold)[:n]
    return env / np.sqrt(np.mean(env * env))


def _ambient(plan: FilePlan, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """1/f^alpha noise + wind rumble with gusts + insect chorus, at the file's noise level."""
    nz = plan.noise
    f = _freqs(n, sr)
    f1 = np.maximum(f, np.float32(1.0))
    x = _shaped_noise(rng, n, f1 ** np.float32(-nz["alpha"] / 2))
    if nz["wind"]:
        rumble = 1 / ((1 + (f1 / np.float32(nz["wind_hz"])) ** 2) * np.sqrt(f1))
        wind = _shaped_noise(rng, n, rumble) * _slow_envelope(rng, n, sr, 2.0, nz["gust_depth"])
        x += wind * np.float32(10 ** (nz["wind_db"] / 20))
    if nz["insects"]:
        z = (f - np.float32(nz["insect_hz"])) / np.float32(nz["insect_bw"])
        band = np.exp(np.float32(-0.5) * z ** 2)
        t = np.arange(n, dtype=np.float32) / np.float32(sr)
        phase = np.float32(2 * np.pi * nz["insect_pulse_hz"]) * t
        pulses = (0.5 + 0.5 * np.sin(phase)) ** 2 / np.float32(np.sqrt(3 / 8))
        chorus = _shaped_noise(rng, n, band) * pulses * _slow_envelope(rng, n, sr, 0.5, 0.5)
        x += chorus * np.float32(10 ** (nz["insect_db"] / 20))
    return x * np.float32(10 ** (nz["level_dbfs"] / 20) / np.sqrt(np.mean(x * x)))


def _band_power(x: np.ndarray, sr: int, low: float, high: float) -> float:
    spec = np.fft.rfft(np.asarray(x, np.float64))
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return float(np.sum(np.abs(spec[(f >= low) & (f <= high)]) ** 2))


@lru_cache(maxsize=64)
def _channel_response(rec: Recorder, n: int, sr: int) -> np.ndarray:
    """The recorder's acoustic path over rfft bins: gain, EQ tilt around 1 kHz, 2nd-order
    high-pass, and the in-band resonance of its imprint kind."""
    f1 = np.maximum(_freqs(n, sr).astype(np.float64), 1.0)
    tilt_db = rec.tilt_db_per_octave * np.log2(np.maximum(f1, 50.0) / 1000.0)
    octaves = np.log2(f1 / (rec.resonance_hz * fscale(sr)))
    resonance_db = rec.resonance_db * np.exp(-0.5 * (octaves / RESONANCE_SIGMA_OCT) ** 2)
    highpass = 1 / np.sqrt(1 + (rec.highpass_hz / f1) ** 4)
    highpass[0] = 0.0
    response = highpass * 10 ** ((rec.gain_db + tilt_db + resonance_db) / 20)
    response = response.astype(np.float32)
    response.flags.writeable = False
    return response


def _electrical_spectrum(plan: FilePlan, rng: np.random.Generator, n: int, sr: int,
                         pulsed: bool = False) -> np.ndarray:
    """Self-noise floor, mains hum, the imprint's steady whine (unless `pulsed`) and DC
    offset, built as rfft bins.

    Tones sit exactly on bins (their frequency rounded to 1/clip_s Hz), which makes each one
    complex number instead of a full-length sine.
    """
    rec = plan.recorder
    spec = _white_spectrum(rng, n // 2 + 1)
    spec *= np.float32(np.sqrt(6 * n) * 10 ** (rec.floor_dbfs / 20))  # white noise of that RMS
    spec[0] = rec.dc_offset * n
    bin_hz = sr / n
    fundamental = round((rec.hum_hz + plan.noise["hum_detune"]) / bin_hz)
    *phases, whine_phase = rng.uniform(0, 2 * np.pi, len(rec.hum_harmonics) + 1)
    amplitude = 10 ** (rec.hum_dbfs / 20) * np.sqrt(2)  # hum_dbfs is the fundamental's RMS
    for k, (rel, phase) in enumerate(zip(rec.hum_harmonics, phases, strict=True), start=1):
        if k * fundamental * bin_hz < 0.45 * sr:
            spec[k * fundamental] += amplitude * rel * n / 2 * np.exp(1j * phase)
    if not pulsed:  # a pulsed whine is added in time (`_pulsed_whine`); the phase is drawn
        whine = round(rec.whine_hz * fscale(sr) / bin_hz)  # either way: the stream stays put
        spec[whine] += 10 ** (rec.whine_dbfs / 20) * np.sqrt(2) * n / 2 * np.exp(1j * whine_phase)
    return spec


def whine_period_s(rec: Recorder, pulse_s: float) -> float:
    """The recorder's own whine period: 0.7-1.3x `pulse_s`, fixed by its id (not drawn from
    the world's random stream, so recorders are the same with and without pulsing)."""
    return pulse_s * (0.7 + 0.6 * (zlib.crc32(rec.recorder_id.encode()) % 1000) / 999)


def _pulsed_whine(rec: Recorder, rng: np.random.Generator, n: int, sr: int, pulse_s: float
                  ) -> np.ndarray:
    """The whine tone gated on half of each period (random phase), with 5 ms raised-cosine
    ramps; while on, as loud as the steady whine."""
    t = np.arange(n) / sr
    period = whine_period_s(rec, pulse_s)
    tone_phase, gate_phase = rng.uniform(0, 2 * np.pi), rng.uniform(0, 1)
    position = np.mod(t / period + gate_phase, 1.0) * period  # seconds into the period
    ramp = min(0.005, period / 4)
    on = period / 2
    gate = np.clip(np.minimum(position, on - position) / ramp + 0.5, 0.0, 1.0)
    gate = 0.5 - 0.5 * np.cos(np.pi * gate)
    tone = np.sin(2 * np.pi * rec.whine_hz * fscale(sr) * t + tone_phase)
    return (10 ** (rec.whine_dbfs / 20) * np.sqrt(2) * gate * tone).astype(np.float32)


def render_file(plan: FilePlan, config: SynthConfig) -> np.ndarray:
    """The audio of one planned file: float32 mono, peak <= 0.99."""
    sr = config.sample_rate
    n = round(config.clip_s * sr)
    rng = file_rng(config.seed, plan.split, plan.index, 1)
    ambient = _ambient(plan, rng, n, sr)
    x = ambient.astype(np.float64)
    for call in plan.calls:
        a = round(call.start_s * sr)
        sig = CALLS[call.label][1](call.params, call.params["n"], sr)
        p_sig = _band_power(sig, sr, call.low_hz, call.high_hz)
        p_noise = _band_power(ambient[a:a + len(sig)], sr, call.low_hz, call.high_hz)
        x[a:a + len(sig)] += sig * np.sqrt(10 ** (call.snr_db / 10) * p_noise / max(p_sig, 1e-20))
    noise_rms = 10 ** (plan.noise["level_dbfs"] / 20)
    for kind, start_s, level_db, params in plan.distractors:
        sig = distractor(kind, params, sr)
        a = round(start_s * sr)
        sig = sig[: n - a] / np.sqrt(np.mean(sig * sig))
        x[a:a + len(sig)] += sig * noise_rms * 10 ** (level_db / 20)
    # rfft is fastest on float64 here; irfft on complex64 (numpy 2 pocketfft).
    spec = (np.fft.rfft(x) * _channel_response(plan.recorder, n, sr)).astype(np.complex64)
    pulsed = config.whine_pulse_s > 0
    y = np.fft.irfft(spec + _electrical_spectrum(plan, rng, n, sr, pulsed), n)
    if pulsed:
        y += _pulsed_whine(plan.recorder, rng, n, sr, config.whine_pulse_s)
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:  # scale the whole file, so calls are never clipped
        y *= np.float32(0.99 / peak)
    return y

