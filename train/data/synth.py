"""A synthetic, MeerKAT-like benchmark: sparse animal calls in field noise, with metadata that matters.

`generate(config, out_dir)` (CLI: `meerkit synth OUT`) writes a dataset folder in the data
contract of DESIGN.md:

    audio/<split>/<split>_NNNNN.wav   mono 16-bit PCM, `config.clip_s` seconds each
    annotations.csv                   file,start_s,end_s,label,low_hz,high_hz  (no pretrain rows)
    metadata.csv                      file,lat,lon,elevation_m,recorded_at,recorder_id,site,habitat
    splits.csv                        file,split  (a partition: every file exactly once)
    labels.txt                        the label set, one per line, in LABELS order
    subsets/train_1pct.txt            ~1 % of the train files (at least one), one path per line
    synth.json                        config, seed, generator version, stats, regions, recorders

What is modelled, and why:
* Six call classes with distinct spectro-temporal shapes (LABELS), 20-500 ms each, placed
  sparsely (by default ~95 % of 50-fps frames hold no call; synth.json records the fraction),
  each at its own SNR (`config.snr_db`) relative to the ambient noise in the call's own band
  over the call's own span.
* Ambient noise that varies per file: 1/f^alpha noise, wind rumble with gusts, an insect
  chorus (likelier at night and in summer), and unlabelled distractors (clicks, thumps, tonal
  blips) that a detector must learn to ignore.
* A world of regions -> sites -> recorders. Class priors depend on region, hour of day and
  day of year (dawn, diurnal, dusk and nocturnal callers; breeding seasons). Every recorder
  imprints its own channel (gain, EQ tilt, high-pass, mains hum at 50/60 Hz with its own
  harmonics, DC offset, self-noise): a spurious cue that correlates with site, hence with the
  class priors, in train.
* Splits: `train`, `val`, `test` share regions and recorders; `shift` is a region *and*
  recorders seen nowhere else; `pretrain` is an unlabelled pool (audio + metadata, no
  annotation rows) drawn from the train family, so the shift region stays unseen even by
  self-supervised pretraining.
* 1 % labels: `subsets/train_1pct.txt` lists round(1 % of train) files (at least one),
  picked to cover as many classes as possible. It is a list beside `splits.csv` rather than
  a split name, so `splits.csv` stays a partition and those files are still `train` there.
* A small fraction of metadata cells (elevation_m, recorded_at, habitat) is left empty, as
  the contract allows, so consumers exercise their missing-value path.

Determinism: the world comes from SeedSequence(seed, spawn_key=(WORLD,)), and every file's
plan and audio from SeedSequence(seed, spawn_key=(split, index, ...)), so the output is
byte-identical for any number of workers, and growing one split leaves its other files as
they were. Files are written with `edge_runtime.wav.write_wav` (not libsndfile, whose float
WAVs carry a timestamped PEAK chunk).

`plan_split` plans files (metadata, calls, noise) without rendering audio: it is what tests
and analyses use to look at priors over thousands of files in a fraction of a second.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

from edge_runtime.errors import UserError
from edge_runtime.events import Event, events_to_frames
from edge_runtime.wav import write_wav

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the same seed + config would give different output
LABELS = ("upsweep", "harmonic_down", "trill", "click_train", "noise_burst", "two_note")
SPLITS = ("train", "val", "test", "shift", "pretrain")
ANNOTATED_SPLITS = ("train", "val", "test", "shift")
STATS_FRAME_RATE_HZ = 50.0
SUBSET_PATH = "subsets/train_1pct.txt"
OUTPUTS = ("audio", "subsets", "annotations.csv", "metadata.csv", "splits.csv", "labels.txt",
           "synth.json")
_SPLIT_KEY = {name: i for i, name in enumerate(SPLITS)}
_WORLD_KEY, _SUBSET_KEY = 100, 101  # spawn keys for seeds that belong to no split


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines the output (with the seed, it is the dataset's identity)."""

    sample_rate: int = 16000
    clip_s: float = 10.0
    n_train: int = 500
    n_val: int = 100
    n_test: int = 100
    n_shift: int = 100
    n_pretrain: int = 800
    seed: int = 0
    calls_per_minute: float = 12.0  # mean over train regions, hours and days, per file
    snr_db: tuple[float, float] = (-5.0, 20.0)  # call band vs ambient noise in that band
    noise_dbfs: tuple[float, float] = (-50.0, -30.0)  # ambient RMS before recorder gain
    distractors_per_minute: float = 9.0
    missing_meta_frac: float = 0.02  # per cell of elevation_m, recorded_at, habitat
    subset_frac: float = 0.01
    year: int = 2025

    @classmethod
    def tiny(cls, **overrides: object) -> SynthConfig:
        """For tests: ~6 min of 5 s clips, generated in about a second."""
        base = cls(clip_s=5.0, n_train=40, n_val=6, n_test=6, n_shift=8, n_pretrain=12)
        return replace(base, **overrides)

    @classmethod
    def small(cls, **overrides: object) -> SynthConfig:
        """For the demo: ~26 min of 10 s clips."""
        base = cls(n_train=72, n_val=16, n_test=16, n_shift=16, n_pretrain=36)
        return replace(base, **overrides)

    @classmethod
    def default(cls, **overrides: object) -> SynthConfig:
        """For benchmarks: 1600 clips of 10 s, ~4.4 h."""
        return replace(cls(), **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: object) -> SynthConfig:
        if name not in PRESETS:
            raise UserError(f"unknown synth preset {name!r}; choose one of {', '.join(PRESETS)}")
        return getattr(cls, name)(**overrides)

    def n_files(self, split: str) -> int:
        return int(getattr(self, f"n_{split}"))

    def validate(self) -> None:
        """Raise UserError on settings the generator cannot honour."""
        problems = []
        if self.sample_rate < 8000:
            problems.append(f"sample rate {self.sample_rate} Hz is below 8000 Hz")
        if self.clip_s < 1.0:
            problems.append(f"clip length {self.clip_s} s is below 1 s (calls last up to 0.5 s)")
        problems += [f"n_{s} is {self.n_files(s)}, must be >= 0" for s in SPLITS if self.n_files(s) < 0]
        if self.n_train < 1:
            problems.append("n_train must be >= 1 (the 1% subset needs a train file)")
        if self.calls_per_minute < 0 or self.distractors_per_minute < 0:
            problems.append("calls_per_minute and distractors_per_minute must be >= 0")
        if not 0 <= self.missing_meta_frac < 1 or not 0 < self.subset_frac <= 1:
            problems.append("missing_meta_frac must be in [0, 1) and subset_frac in (0, 1]")
        if self.snr_db[0] > self.snr_db[1] or self.noise_dbfs[0] > self.noise_dbfs[1]:
            problems.append("snr_db and noise_dbfs must be (low, high) ranges")
        if problems:
            raise UserError("invalid synth config: " + "; ".join(problems))


PRESETS = ("tiny", "small", "default")


# --------------------------------------------------------------------------- world

@dataclass(frozen=True)
class Region:
    name: str
    lat: float
    lon: float
    elevation_m: float
    habitat: str
    class_weights: tuple[float, ...]  # relative abundance, in LABELS order
    wind_prob: float
    utc_offset_h: int = 2


REGIONS = (
    Region("kalahari", -26.98, 21.83, 900, "arid savanna", (1.0, 0.6, 0.3, 1.2, 1.5, 0.5), 0.5),
    Region("karoo", -32.35, 22.58, 1050, "succulent karoo shrubland",
           (0.5, 1.2, 0.8, 0.4, 0.6, 1.5), 0.7),
    Region("lowveld", -24.99, 31.59, 350, "mopane woodland", (1.2, 0.8, 1.5, 0.8, 0.3, 0.8), 0.3),
    Region("namib", -23.55, 15.05, 600, "desert gravel plains", (0.6, 0.5, 0.6, 1.5, 1.6, 0.5),
           0.8),
)
SHIFT_REGION = "namib"
_REGION = {r.name: r for r in REGIONS}


@dataclass(frozen=True)
class Recorder:
    """One field recorder at one site, with the channel it imprints on everything it records."""

    recorder_id: str
    site: str
    region: str
    lat: float
    lon: float
    elevation_m: float
    gain_db: float
    tilt_db_per_octave: float
    highpass_hz: float
    hum_hz: float
    hum_dbfs: float  # level of the fundamental
    hum_harmonics: tuple[float, ...]  # relative amplitude of harmonics 1..len
    dc_offset: float
    floor_dbfs: float  # self-noise, white


@dataclass(frozen=True)
class World:
    recorders: tuple[Recorder, ...]

    def recorders_for(self, split: str) -> list[Recorder]:
        """Shift gets the shift region's recorders; every other split the train family's."""
        want_shift = split == "shift"
        return [r for r in self.recorders if (r.region == SHIFT_REGION) == want_shift]


def build_world(seed: int, sites_per_region: int = 3, recorders_per_site: int = 2) -> World:
    """Sites and recorders, deterministic from the seed."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_WORLD_KEY,)))
    recorders = []
    for region in REGIONS:
        shift = region.name == SHIFT_REGION
        for s in range(sites_per_region):
            site = f"{region.name}-{s + 1:02d}"
            lat = region.lat + rng.normal(0, 0.25)
            lon = region.lon + rng.normal(0, 0.25)
            elevation = region.elevation_m + rng.normal(0, 60)
            for k in range(recorders_per_site):
                harmonics = 10 ** (rng.uniform(-30, 0, 8) / 20) / np.arange(1, 9) ** 0.5
                harmonics[0] = 1.0
                recorders.append(Recorder(
                    recorder_id=f"{region.name[:3].upper()}{s + 1:02d}-{'AB'[k]}",
                    site=site, region=region.name,
                    lat=round(lat + rng.normal(0, 0.002), 5),
                    lon=round(lon + rng.normal(0, 0.002), 5),
                    elevation_m=round(elevation + rng.normal(0, 5)),
                    gain_db=rng.uniform(-6, 6),
                    tilt_db_per_octave=rng.uniform(-3, 3),
                    highpass_hz=rng.uniform(20, 300),
                    # Shifted hardware: the unseen region's recorders more often hum at 60 Hz.
                    hum_hz=(60.0 if rng.random() < (0.5 if shift else 0.15) else 50.0)
                    * (1 + rng.normal(0, 0.001)),
                    hum_dbfs=rng.uniform(-80, -40),
                    hum_harmonics=tuple(float(h) for h in harmonics),
                    dc_offset=rng.uniform(-0.01, 0.01),
                    floor_dbfs=rng.uniform(-75, -60),
                ))
    return World(tuple(recorders))


# --------------------------------------------------------------------------- priors

def _bump(hour: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = (hour - centre + 12.0) % 24.0 - 12.0  # circular distance in hours
    return np.exp(-0.5 * (d / width) ** 2)


# Per label: (always, dawn, day, dusk, night) activity, then (season amplitude, peak day of year).
_DIEL = np.array([
    (0.15, 1.5, 0.6, 0.0, 0.0),  # upsweep: dawn chorus, diurnal
    (0.10, 0.0, 1.0, 0.0, 0.0),  # harmonic_down: diurnal
    (0.10, 1.0, 0.0, 1.2, 0.0),  # trill: crepuscular
    (0.10, 0.0, 0.0, 0.0, 1.2),  # click_train: nocturnal
    (0.50, 0.0, 0.3, 0.0, 0.0),  # noise_burst: any time
    (0.10, 1.2, 0.0, 0.6, 0.0),  # two_note: dawn and dusk, breeding season
])
_SEASON = np.array([(0.4, 300), (0.1, 60), (0.5, 30), (0.2, 200), (0.1, 0), (0.8, 320)])


def class_intensity(region: str, hour: np.ndarray | float, doy: np.ndarray | float) -> np.ndarray:
    """Relative call rate per label (last axis) at local `hour` (0-24) and day of year."""
    hour, doy = np.asarray(hour, float), np.asarray(doy, float)[..., None]
    parts = np.stack([np.ones_like(hour), _bump(hour, 6.0, 1.2), _bump(hour, 12.5, 3.0),
                      _bump(hour, 18.5, 1.2), _bump(hour, 0.0, 3.0)], axis=-1)
    diel = parts @ _DIEL.T  # (..., labels)
    season = 1.0 + _SEASON[:, 0] * np.cos(2 * np.pi * (doy - _SEASON[:, 1]) / 365.0)
    return np.asarray(_REGION[region].class_weights) * diel * season


def _mean_total_intensity() -> float:
    """Normaliser so that `calls_per_minute` is the mean rate over train regions and the year."""
    hours, days = np.meshgrid(np.arange(0, 24, 0.25), np.arange(0, 365, 5.0))
    totals = [class_intensity(r.name, hours, days).sum(-1).mean()
              for r in REGIONS if r.name != SHIFT_REGION]
    return float(np.mean(totals))


_MEAN_INTENSITY = _mean_total_intensity()


# --------------------------------------------------------------------------- calls

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
    return _sine(p["f0"] * (p["f1"] / p["f0"]) ** frac, sr) * np.sin(np.pi * (frac + 0.5 / n)) ** 0.6


def _band_upsweep(p: dict) -> tuple[float, float]:
    return 0.9 * p["f0"], 1.1 * p["f1"]


def _sample_harmonic_down(rng: np.random.Generator, fs: float) -> dict:
    f0 = rng.uniform(700, 1400) * fs
    return dict(dur=rng.uniform(0.15, 0.5), f0=f0, f1=f0 * rng.uniform(0.55, 0.8),
                vib_hz=rng.uniform(6, 14), vib_depth=rng.uniform(0.02, 0.06),
                rolloff=rng.uniform(0.5, 1.5))


def _render_harmonic_down(p: dict, n: int, sr: int) -> np.ndarray:
    t = np.arange(n) / sr
    f = (p["f0"] + (p["f1"] - p["f0"]) * t / t[-1]) * (1 + p["vib_depth"] * np.sin(2 * np.pi * p["vib_hz"] * t))
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
_CALLS: dict[str, tuple[Callable, Callable, Callable]] = {
    "upsweep": (_sample_upsweep, _render_upsweep, _band_upsweep),
    "harmonic_down": (_sample_harmonic_down, _render_harmonic_down, _band_harmonic_down),
    "trill": (_sample_trill, _render_trill, _band_trill),
    "click_train": (_sample_click_train, _render_click_train, _band_click_train),
    "noise_burst": (_sample_noise_burst, _render_noise_burst, _band_noise_burst),
    "two_note": (_sample_two_note, _render_two_note, _band_two_note),
}
assert tuple(_CALLS) == LABELS


# --------------------------------------------------------------------------- distractors

def _distractor(kind: str, p: dict, sr: int) -> np.ndarray:
    """Unlabelled transients: single clicks, low thumps, short tonal blips."""
    n = max(8, int(p["dur"] * sr))
    t = np.arange(n) / sr
    if kind == "click":
        return np.exp(-t / p["tau_s"]) * np.sin(2 * np.pi * p["f"] * t)
    if kind == "thump":
        return np.exp(-t / (0.25 * p["dur"])) * np.sin(2 * np.pi * p["f"] * (1 - 0.3 * t / t[-1]) * t)
    return np.sin(2 * np.pi * p["f"] * t) * np.hanning(n)  # blip


def _sample_distractor(rng: np.random.Generator, fs: float, sr: int) -> tuple[str, dict]:
    kind = str(rng.choice(["click", "thump", "blip"]))
    if kind == "click":
        tau = rng.uniform(0.1e-3, 0.6e-3)
        return kind, dict(dur=8 * tau, tau_s=tau, f=rng.uniform(800, 6000) * fs)
    if kind == "thump":
        return kind, dict(dur=rng.uniform(0.05, 0.2), f=rng.uniform(40, 150))
    return kind, dict(dur=rng.uniform(0.01, 0.04), f=min(rng.uniform(500, 7000) * fs, 0.45 * sr))


# --------------------------------------------------------------------------- plans

@dataclass(frozen=True)
class Call:
    label: str
    start_s: float
    end_s: float
    low_hz: float
    high_hz: float
    snr_db: float
    params: dict = field(hash=False, compare=False)


@dataclass(frozen=True)
class FilePlan:
    """Everything about one file except its rendered samples."""

    file: str  # relative to audio/
    split: str
    index: int
    recorder: Recorder
    recorded_at: datetime
    lat: float
    lon: float
    metadata: dict[str, str]  # the metadata.csv row (missing cells are "")
    calls: tuple[Call, ...]
    distractors: tuple[tuple[str, float, float, dict], ...]  # (kind, start_s, level_db, params)
    noise: dict = field(hash=False, compare=False)

    @property
    def hour(self) -> float:
        t = self.recorded_at
        return t.hour + t.minute / 60 + t.second / 3600

    @property
    def doy(self) -> int:
        return self.recorded_at.timetuple().tm_yday - 1


def _file_rng(seed: int, split: str, index: int, part: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_KEY[split], index, part)))


def _fscale(sample_rate: int) -> float:
    """Call frequencies are designed for 16 kHz; squeeze them below Nyquist at lower rates."""
    return min(1.0, sample_rate / 16000)


def _place_calls(rng: np.random.Generator, config: SynthConfig, rates: np.ndarray) -> list[Call]:
    fs, sr, top = _fscale(config.sample_rate), config.sample_rate, 0.48 * config.sample_rate
    calls: list[Call] = []
    for c, label in enumerate(LABELS):
        sample, _, band = _CALLS[label]
        for _ in range(rng.poisson(rates[c])):
            params = sample(rng, fs)
            start = round(rng.uniform(0.05, config.clip_s - params["dur"] - 0.05), 4)
            end = round(start + params["dur"], 4)
            params["n"] = round(end * sr) - round(start * sr)  # samples, fixed by the rounding
            low, high = band(params)
            snr = rng.uniform(*config.snr_db)
            # One call of a class at a time: overlapping same-label boxes would be ambiguous.
            if any(o.label == label and o.start_s < end and start < o.end_s for o in calls):
                continue
            calls.append(Call(label, start, end, round(max(low, 50.0), 1), round(min(high, top), 1),
                              round(snr, 2), params))
    return sorted(calls, key=lambda k: (k.start_s, k.label))


def _plan_noise(rng: np.random.Generator, config: SynthConfig, region: Region, hour: float,
                doy: int) -> dict:
    fs, sr = _fscale(config.sample_rate), config.sample_rate
    night = float(_bump(np.array(hour), 0.0, 4.0))
    summer = 0.5 + 0.5 * np.cos(2 * np.pi * (doy - 15) / 365)  # southern hemisphere
    return dict(
        level_dbfs=rng.uniform(*config.noise_dbfs), alpha=rng.uniform(0.6, 1.6),
        wind=bool(rng.random() < region.wind_prob), wind_db=rng.uniform(0, 15),
        wind_hz=rng.uniform(20, 120), gust_depth=rng.uniform(0.3, 1.0),
        insects=bool(rng.random() < 0.1 + 0.45 * night + 0.25 * summer),
        insect_hz=min(rng.uniform(3000, 7000) * fs, 0.44 * sr), insect_bw=rng.uniform(100, 600) * fs,
        insect_pulse_hz=rng.uniform(15, 60), insect_db=rng.uniform(-5, 10),
        hum_detune=rng.normal(0, 0.02),
    )


def plan_file(config: SynthConfig, world: World, split: str, index: int) -> FilePlan:
    """Plan one file: recorder, time, metadata, calls, distractors and noise, without audio."""
    rng = _file_rng(config.seed, split, index, 0)
    recorders = world.recorders_for(split)
    rec = recorders[int(rng.integers(len(recorders)))]
    region = _REGION[rec.region]
    tz = timezone(timedelta(hours=region.utc_offset_h))
    doy, second = int(rng.integers(365)), int(rng.integers(86400))
    recorded_at = datetime(config.year, 1, 1, tzinfo=tz) + timedelta(days=doy, seconds=second)
    hour = second / 3600
    lat, lon = rec.lat + rng.normal(0, 1e-4), rec.lon + rng.normal(0, 1e-4)  # GPS jitter

    activity = rng.gamma(2.0, 0.5)  # overdispersion: some clips busy, many quiet
    intensity = class_intensity(rec.region, hour, doy) / _MEAN_INTENSITY
    rates = config.calls_per_minute / 60 * config.clip_s * activity * intensity
    calls = _place_calls(rng, config, rates)

    fs = _fscale(config.sample_rate)
    distractors = []
    for _ in range(rng.poisson(config.distractors_per_minute / 60 * config.clip_s)):
        kind, params = _sample_distractor(rng, fs, config.sample_rate)
        start = rng.uniform(0, config.clip_s - params["dur"])
        distractors.append((kind, float(start), float(rng.uniform(0, 20)), params))
    noise = _plan_noise(rng, config, region, hour, doy)

    missing = rng.random(3) < config.missing_meta_frac
    file = f"{split}/{split}_{index:05d}.wav"
    metadata = {
        "file": file, "lat": f"{lat:.5f}", "lon": f"{lon:.5f}",
        "elevation_m": "" if missing[0] else f"{rec.elevation_m:.0f}",
        "recorded_at": "" if missing[1] else recorded_at.isoformat(),
        "recorder_id": rec.recorder_id, "site": rec.site,
        "habitat": "" if missing[2] else region.habitat,
    }
    return FilePlan(file, split, index, rec, recorded_at, lat, lon, metadata, tuple(calls),
                    tuple(distractors), noise)


def plan_split(config: SynthConfig, split: str, world: World | None = None) -> list[FilePlan]:
    """Plans of every file of one split (cheap: no audio)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; synth splits are {', '.join(SPLITS)}")
    world = world or build_world(config.seed)
    return [plan_file(config, world, split, i) for i in range(config.n_files(split))]


# --------------------------------------------------------------------------- rendering

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


def _slow_envelope(rng: np.random.Generator, n: int, sr: int, per_s: float, depth: float) -> np.ndarray:
    """Log-normal envelope with mean square ~1, from `per_s` random knots a second.

    Interpolated on a 32-sample grid and held: the envelope moves too slowly for the steps to matter.
    """
    hold = 32
    coarse = -(-n // hold)
    knots = max(2, int(n / sr * per_s) + 2)
    log_env = np.interp(np.arange(coarse), np.linspace(0, coarse, knots), rng.standard_normal(knots))
    env = np.repeat(np.exp(depth * log_env).astype(np.float32), hold)[:n]
    return env / np.sqrt(np.mean(env * env))


def _ambient(plan: FilePlan, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """1/f^alpha noise + wind rumble with gusts + insect chorus, at the file's noise level."""
    nz = plan.noise
    f = _freqs(n, sr)
    f1 = np.maximum(f, np.float32(1.0))
    x = _shaped_noise(rng, n, f1 ** np.float32(-nz["alpha"] / 2))
    if nz["wind"]:
        wind = _shaped_noise(rng, n, 1 / ((1 + (f1 / np.float32(nz["wind_hz"])) ** 2) * np.sqrt(f1)))
        x += wind * _slow_envelope(rng, n, sr, 2.0, nz["gust_depth"]) * np.float32(10 ** (nz["wind_db"] / 20))
    if nz["insects"]:
        band = np.exp(np.float32(-0.5) * ((f - np.float32(nz["insect_hz"])) / np.float32(nz["insect_bw"])) ** 2)
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
    """The recorder's acoustic path over rfft bins: gain, EQ tilt around 1 kHz, 2nd-order high-pass."""
    f1 = np.maximum(_freqs(n, sr).astype(np.float64), 1.0)
    tilt = 10 ** (rec.tilt_db_per_octave * np.log2(np.maximum(f1, 50.0) / 1000.0) / 20)
    highpass = 1 / np.sqrt(1 + (rec.highpass_hz / f1) ** 4)
    highpass[0] = 0.0
    response = (tilt * highpass * 10 ** (rec.gain_db / 20)).astype(np.float32)
    response.flags.writeable = False
    return response


def _electrical_spectrum(plan: FilePlan, rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Self-noise floor, mains hum and DC offset, built directly as rfft bins.

    The hum sits exactly on bins (its frequency rounded to 1/clip_s Hz), which makes each
    harmonic one complex number instead of a full-length sine per harmonic.
    """
    rec = plan.recorder
    spec = _white_spectrum(rng, n // 2 + 1)
    spec *= np.float32(np.sqrt(6 * n) * 10 ** (rec.floor_dbfs / 20))  # white noise of that RMS
    spec[0] = rec.dc_offset * n
    bin_hz = sr / n
    fundamental = round((rec.hum_hz + plan.noise["hum_detune"]) / bin_hz)
    phases = rng.uniform(0, 2 * np.pi, len(rec.hum_harmonics))
    amplitude = 10 ** (rec.hum_dbfs / 20) * np.sqrt(2)  # hum_dbfs is the fundamental's RMS
    for k, (rel, phase) in enumerate(zip(rec.hum_harmonics, phases, strict=True), start=1):
        if k * fundamental * bin_hz < 0.45 * sr:
            spec[k * fundamental] += amplitude * rel * n / 2 * np.exp(1j * phase)
    return spec


def render_file(plan: FilePlan, config: SynthConfig) -> np.ndarray:
    """The audio of one planned file: float32 mono, peak <= 0.99."""
    sr = config.sample_rate
    n = round(config.clip_s * sr)
    rng = _file_rng(config.seed, plan.split, plan.index, 1)
    ambient = _ambient(plan, rng, n, sr)
    x = ambient.astype(np.float64)
    for call in plan.calls:
        a = round(call.start_s * sr)
        sig = _CALLS[call.label][1](call.params, call.params["n"], sr)
        p_sig = _band_power(sig, sr, call.low_hz, call.high_hz)
        p_noise = _band_power(ambient[a:a + len(sig)], sr, call.low_hz, call.high_hz)
        x[a:a + len(sig)] += sig * np.sqrt(10 ** (call.snr_db / 10) * p_noise / max(p_sig, 1e-20))
    noise_rms = 10 ** (plan.noise["level_dbfs"] / 20)
    for kind, start_s, level_db, params in plan.distractors:
        sig = _distractor(kind, params, sr)
        a = round(start_s * sr)
        sig = sig[: n - a] / np.sqrt(np.mean(sig * sig))
        x[a:a + len(sig)] += sig * noise_rms * 10 ** (level_db / 20)
    # rfft is fastest on float64 here; irfft on complex64 (numpy 2 pocketfft).
    spec = (np.fft.rfft(x) * _channel_response(plan.recorder, n, sr)).astype(np.complex64)
    y = np.fft.irfft(spec + _electrical_spectrum(plan, rng, n, sr), n)
    peak = float(np.max(np.abs(y)))
    if peak > 0.99:  # scale the whole file, so calls are never clipped
        y *= np.float32(0.99 / peak)
    return y


# --------------------------------------------------------------------------- stats

def call_frame_mask(calls: Iterable[Call], clip_s: float,
                    frame_rate_hz: float = STATS_FRAME_RATE_HZ) -> np.ndarray:
    """(frames,) bool: frames that any call overlaps (the project's frame convention)."""
    events = [Event(c.label, c.start_s, c.end_s) for c in calls]
    n = round(clip_s * frame_rate_hz)
    return events_to_frames(events, LABELS, n, frame_rate_hz).any(axis=1)


def split_stats(plans: list[FilePlan], config: SynthConfig) -> dict:
    events = {label: 0 for label in LABELS}
    call_frames = total_frames = 0
    for p in plans:
        for c in p.calls:
            events[c.label] += 1
        mask = call_frame_mask(p.calls, config.clip_s)
        call_frames += int(mask.sum())
        total_frames += len(mask)
    return dict(files=len(plans), hours=round(len(plans) * config.clip_s / 3600, 4),
                annotated=plans[0].split in ANNOTATED_SPLITS if plans else False,
                events=events, call_frame_fraction=round(call_frames / max(total_frames, 1), 5),
                recorders=sorted({p.recorder.recorder_id for p in plans}),
                regions=sorted({p.recorder.region for p in plans}))


def select_subset(plans: list[FilePlan], frac: float, seed: int) -> list[str]:
    """~`frac` of the files (at least one): random order, preferring files with unseen classes."""
    k = max(1, round(frac * len(plans)))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SUBSET_KEY,))).permutation(len(plans))
    chosen, seen = [], set()
    for i in order:  # first pass: cover classes
        labels = {c.label for c in plans[i].calls}
        if len(chosen) < k and labels - seen:
            chosen.append(int(i))
            seen |= labels
    chosen += [int(i) for i in order if i not in chosen][: k - len(chosen)]
    return sorted(plans[i].file for i in chosen)


# --------------------------------------------------------------------------- writing

_WORKER: dict = {}


def _init_worker(config: SynthConfig, world: World, out_dir: Path) -> None:
    _WORKER.update(config=config, world=world, out_dir=out_dir)


def _render_and_write(task: tuple[str, int]) -> str:
    config, world, out_dir = _WORKER["config"], _WORKER["world"], _WORKER["out_dir"]
    plan = plan_file(config, world, *task)
    write_wav(out_dir / "audio" / plan.file, render_file(plan, config), config.sample_rate, bits=16)
    return plan.file


def _prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: folder is not empty; pass --force to overwrite an earlier "
                            "`meerkit synth` output there, or choose a new folder")
        if not (out / "synth.json").is_file():
            raise UserError(f"{out}: not empty and not a `meerkit synth` output (no synth.json); "
                            "refusing to delete it even with --force")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_tables(out: Path, plans: dict[str, list[FilePlan]], subset: list[str]) -> None:
    every = [p for split in SPLITS for p in plans[split]]
    _write_csv(out / "annotations.csv", ["file", "start_s", "end_s", "label", "low_hz", "high_hz"],
               ([p.file, f"{c.start_s:.4f}", f"{c.end_s:.4f}", c.label, f"{c.low_hz:.1f}",
                 f"{c.high_hz:.1f}"] for p in every if p.split in ANNOTATED_SPLITS for c in p.calls))
    columns = ["file", "lat", "lon", "elevation_m", "recorded_at", "recorder_id", "site", "habitat"]
    _write_csv(out / "metadata.csv", columns, ([p.metadata[k] for k in columns] for p in every))
    _write_csv(out / "splits.csv", ["file", "split"], ([p.file, p.split] for p in every))
    (out / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    (out / "subsets").mkdir(exist_ok=True)
    (out / SUBSET_PATH).write_text("".join(f"{f}\n" for f in subset), encoding="utf-8")


def _describe_world(world: World) -> dict:
    return dict(
        regions={r.name: dict(lat=r.lat, lon=r.lon, elevation_m=r.elevation_m, habitat=r.habitat,
                              class_weights=dict(zip(LABELS, r.class_weights, strict=True)),
                              splits=["shift"] if r.name == SHIFT_REGION else
                              [s for s in SPLITS if s != "shift"])
                 for r in REGIONS},
        recorders=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(r).items()
                    if k != "hum_harmonics"} for r in world.recorders],
    )


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    stats: dict  # what synth.json holds
    wall_s: float


def generate(config: SynthConfig, out_dir: str | Path, *, workers: int = 1, force: bool = False,
             progress: bool = True) -> SynthResult:
    """Write the dataset folder; output is identical for any `workers`."""
    config.validate()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    _prepare_out_dir(out, force)
    header = dict(generator="meerkit.synth", version=GENERATOR_VERSION, seed=config.seed,
                  config=asdict(config), complete=False)
    _write_json(out / "synth.json", header)  # marks the folder as ours even if interrupted

    world = build_world(config.seed)
    plans = {split: plan_split(config, split, world) for split in SPLITS}
    subset = select_subset(plans["train"], config.subset_frac, config.seed)
    _write_tables(out, plans, subset)
    for split in SPLITS:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)

    tasks = [(p.split, p.index) for split in SPLITS for p in plans[split]]
    _render_all(tasks, config, world, out, workers, progress)

    stats = {split: split_stats(plans[split], config) for split in SPLITS}
    annotated = [p for s in ANNOTATED_SPLITS for p in plans[s]]
    overall = split_stats(annotated, config)["call_frame_fraction"]
    if overall > 0.1:
        log.warning("%.1f%% of 50-fps frames contain a call (the benchmark intends < 10%%); "
                    "lower calls_per_minute", 100 * overall)
    subset_set = set(subset)
    payload = dict(
        header, complete=True, labels=list(LABELS), frame_rate_hz=STATS_FRAME_RATE_HZ,
        hours=round(sum(s["hours"] for s in stats.values()), 4), call_frame_fraction=overall,
        splits=stats,
        subsets={"train_1pct": dict(path=SUBSET_PATH, files=len(subset),
                                    events=split_stats([p for p in plans["train"]
                                                        if p.file in subset_set], config)["events"])},
        **_describe_world(world),
    )
    _write_json(out / "synth.json", payload)
    return SynthResult(out, payload, time.perf_counter() - t0)


def _render_all(tasks: list[tuple[str, int]], config: SynthConfig, world: World, out: Path,
                workers: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="file", desc="synth", file=sys.stderr, disable=not progress)
    with bar:
        if workers == 1:
            _init_worker(config, world, out)
            for task in tasks:
                _render_and_write(task)
                bar.update()
            return
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        with mp.get_context().Pool(workers, _init_worker, (config, world, out)) as pool:
            for _ in pool.imap_unordered(_render_and_write, tasks, chunksize=chunk):
                bar.update()
