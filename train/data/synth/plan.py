"""Plans: everything about a file (recorder, time, metadata, calls, distractors, noise) except
its samples. Cheap, so tests and analyses look at priors over thousands of files at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

from edge_runtime.contract.errors import UserError
from train.data.synth.calls import CALLS, sample_distractor
from train.data.synth.config import LABELS, SPLIT_KEY, SPLITS, SynthConfig
from train.data.synth.world import (
    MEAN_INTENSITY,
    REGION,
    Recorder,
    Region,
    World,
    build_world,
    bump,
    dialect_semitones,
    recorder_intensity,
)


@dataclass(frozen=True)
class Call:
    label: str
    start_s: float
    end_s: float
    low_hz: float
    high_hz: float
    snr_db: float  # vs the ambient noise in the call's band over its span (before the channel)
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
    dialect_st: tuple[float, ...]  # pitch offset of each label's calls here and now (semitones)
    noise: dict = field(hash=False, compare=False)

    @property
    def hour(self) -> float:
        t = self.recorded_at
        return t.hour + t.minute / 60 + t.second / 3600

    @property
    def doy(self) -> int:
        return self.recorded_at.timetuple().tm_yday - 1


def file_rng(seed: int, split: str, index: int, part: int) -> np.random.Generator:
    key = (SPLIT_KEY[split], index, part)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def fscale(sample_rate: int) -> float:
    """Call frequencies are designed for 16 kHz; squeeze them below Nyquist at lower rates."""
    return min(1.0, sample_rate / 16000)


def _place_calls(rng: np.random.Generator, config: SynthConfig, rates: np.ndarray,
                 dialect_st: np.ndarray) -> list[Call]:
    fs, sr, top = fscale(config.sample_rate), config.sample_rate, 0.48 * config.sample_rate
    calls: list[Call] = []
    for c, label in enumerate(LABELS):
        sample, _, band = CALLS[label]
        pitch = fs * 2 ** (dialect_st[c] / 12)
        for _ in range(rng.poisson(rates[c])):
            params = sample(rng, pitch)
            start = round(rng.uniform(0.05, config.clip_s - params["dur"] - 0.05), 4)
            end = round(start + params["dur"], 4)
            params["n"] = round(end * sr) - round(start * sr)  # samples, fixed by the rounding
            low, high = band(params)
            snr = rng.uniform(*config.snr_db)
            # One call of a class at a time: overlapping same-label boxes would be ambiguous.
            if any(o.label == label and o.start_s < end and start < o.end_s for o in calls):
                continue
            calls.append(Call(label, start, end, round(max(low, 50.0), 1),
                              round(min(high, top), 1), round(snr, 2), params))
    return sorted(calls, key=lambda k: (k.start_s, k.label))


def _plan_noise(rng: np.random.Generator, config: SynthConfig, region: Region, hour: float,
                doy: int) -> dict:
    fs, sr = fscale(config.sample_rate), config.sample_rate
    night = float(bump(np.array(hour), 0.0, 4.0))
    summer = 0.5 + 0.5 * np.cos(2 * np.pi * (doy - 15) / 365)  # southern hemisphere
    return dict(
        level_dbfs=rng.uniform(*config.noise_dbfs), alpha=rng.uniform(0.6, 1.6),
        wind=bool(rng.random() < region.wind_prob), wind_db=rng.uniform(0, 15),
        wind_hz=rng.uniform(20, 120), gust_depth=rng.uniform(0.3, 1.0),
        insects=bool(rng.random() < 0.1 + 0.45 * night + 0.25 * summer),
        insect_hz=min(rng.uniform(3000, 7000) * fs, 0.44 * sr),
        insect_bw=rng.uniform(100, 600) * fs,
        insect_pulse_hz=rng.uniform(15, 60), insect_db=rng.uniform(-5, 10),
        hum_detune=rng.normal(0, 0.02),
    )


def plan_file(config: SynthConfig, world: World, split: str, index: int) -> FilePlan:
    """Plan one file: recorder, time, metadata, calls, distractors and noise, without audio."""
    rng = file_rng(config.seed, split, index, 0)
    recorders = world.recorders_for(split)
    rec = recorders[int(rng.integers(len(recorders)))]
    region = REGION[rec.region]
    tz = timezone(timedelta(hours=region.utc_offset_h))
    doy, second = int(rng.integers(365)), int(rng.integers(86400))
    recorded_at = datetime(config.year, 1, 1, tzinfo=tz) + timedelta(days=doy, seconds=second)
    hour = second / 3600
    lat, lon = rec.lat + rng.normal(0, 1e-4), rec.lon + rng.normal(0, 1e-4)  # GPS jitter

    activity = rng.gamma(2.0, 0.5)  # overdispersion: some clips busy, many quiet
    intensity = recorder_intensity(rec, config, hour, doy) / MEAN_INTENSITY
    rates = config.calls_per_minute / 60 * config.clip_s * activity * intensity
    dialect = dialect_semitones(config, rec.lat, doy)
    calls = _place_calls(rng, config, rates, dialect)

    fs = fscale(config.sample_rate)
    distractors = []
    for _ in range(rng.poisson(config.distractors_per_minute / 60 * config.clip_s)):
        kind, params = sample_distractor(rng, fs, config.sample_rate)
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
                    tuple(distractors), tuple(round(float(s), 3) for s in dialect), noise)


def plan_split(config: SynthConfig, split: str, world: World | None = None) -> list[FilePlan]:
    """Plans of every file of one split (cheap: no audio)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; synth splits are {', '.join(SPLITS)}")
    world = world or build_world(config.seed)
    return [plan_file(config, world, split, i) for i in range(config.n_files(split))]
