"""The generator's identity: constants, the label set, and `SynthConfig` with its presets."""

from __future__ import annotations

from dataclasses import dataclass, replace

from edge_runtime.contract.errors import UserError

GENERATOR_VERSION = 2  # bump when the same seed + config would give different output
LABELS = ("upsweep", "harmonic_down", "trill", "click_train", "noise_burst", "two_note")
SPLITS = ("train", "val", "test", "shift", "pretrain")
ANNOTATED_SPLITS = ("train", "val", "test", "shift")
PRESETS = ("tiny", "small", "demo", "default")
STATS_FRAME_RATE_HZ = 50.0

# Label-budget subsets of train: nested prefixes of one deterministic order of the files.
SUBSET_PERCENTS = (1, 5, 10, 25)
SUBSET_MIN_EVENTS = 10  # the order pulls files forward until every class has this many events
SUBSET_PATH = "subsets/train_1pct.txt"
# The budgets a label-budget sweep uses, smallest first: each holds >= SUBSET_MIN_EVENTS events
# of every class on the `default` preset (seeds 0-2; tests/test_synth.py checks it). 1% and 5%
# (5 and 25 files, ~2 calls each) cannot, and are written for smoke runs only.
BUDGET_SUBSETS = ("train_10pct", "train_25pct")

SPLIT_KEY = {name: i for i, name in enumerate(SPLITS)}
WORLD_KEY, SUBSET_KEY = 100, 101  # spawn keys for seeds that belong to no split
IMPRINT_SHIFT_MODES = ("reversed", "absent")


def subset_name(percent: int) -> str:
    return f"train_{percent}pct"


def subset_size(percent: int, n_train: int) -> int:
    """Files in the `percent` % subset of `n_train` files (at least one)."""
    return max(1, round(percent * n_train / 100))


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
    # Spurious cue: a recorder's favoured class calls `imprint_boost` times as often as its
    # region's prior says (the file's total call rate is kept). In the train family the
    # favoured class is the one its imprint kind is tied to; in shift it is "reversed" (always
    # another class) or "absent" (no favoured class).
    imprint_boost: float = 4.0
    imprint_shift: str = "reversed"
    # 0: the imprint's whine is steady (the default; per-clip band centring, which the teacher
    # applies, removes a steady tone and the resonance entirely). > 0: it switches on and off
    # with about this period (each recorder its own, 0.7-1.3x; half the time on; 5 ms ramps),
    # like interference from card writes or a radio's duty cycle, so the imprint survives
    # centring and a model can learn the shortcut that an adversarial recorder head removes.
    whine_pulse_s: float = 0.0
    # Robust cue: call pitch rises this many semitones per degree north of DIALECT_REF_LAT,
    # and by up to +-dialect_season_st around each class's breeding peak.
    dialect_st_per_degree: float = 0.5
    dialect_season_st: float = 0.75
    year: int = 2025

    @classmethod
    def tiny(cls, **overrides: object) -> SynthConfig:
        """For tests: ~6 min of 5 s clips, generated in about a second."""
        base = cls(clip_s=5.0, n_train=40, n_val=6, n_test=6, n_shift=8, n_pretrain=12)
        return replace(base, **overrides)

    @classmethod
    def small(cls, **overrides: object) -> SynthConfig:
        """For quick end-to-end runs: ~26 min of 10 s clips."""
        base = cls(n_train=72, n_val=16, n_test=16, n_shift=16, n_pretrain=36)
        return replace(base, **overrides)

    @classmethod
    def demo(cls, **overrides: object) -> SynthConfig:
        """For `make demo`: ~1.8 h of 10 s clips. Nearly `default`'s labelled audio: a
        label-only student reached event F1 0.54 on test with 240 training files and 0.70
        with 500 (same steps; synth costs seconds, steps cost minutes). Test is 32 files so
        that the demo's figures are not two or three calls' luck. Val is 64 files: the event
        decoder is tuned per label on val, and with 32 files (~10 calls a label) session 12's
        student took `noise_burst` settings that made 17 false alarms against 9 hits on test."""
        base = cls(n_train=480, n_val=64, n_test=32, n_shift=16, n_pretrain=96)
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
        problems += [f"n_{s} is {self.n_files(s)}, must be >= 0" for s in SPLITS
                     if self.n_files(s) < 0]
        if self.n_train < 1:
            problems.append("n_train must be >= 1 (the 1% subset needs a train file)")
        if self.calls_per_minute < 0 or self.distractors_per_minute < 0:
            problems.append("calls_per_minute and distractors_per_minute must be >= 0")
        if not 0 <= self.missing_meta_frac < 1:
            problems.append("missing_meta_frac must be in [0, 1)")
        if self.snr_db[0] > self.snr_db[1] or self.noise_dbfs[0] > self.noise_dbfs[1]:
            problems.append("snr_db and noise_dbfs must be (low, high) ranges")
        if self.imprint_boost < 1:
            problems.append("imprint_boost must be >= 1 (1 turns the spurious cue off)")
        if self.whine_pulse_s and not 0.05 <= self.whine_pulse_s <= self.clip_s:
            problems.append(f"whine_pulse_s must be 0 (steady) or within 0.05 s and the clip "
                            f"length ({self.clip_s:g} s), got {self.whine_pulse_s:g}")
        if self.imprint_shift not in IMPRINT_SHIFT_MODES:
            problems.append(f"imprint_shift must be one of {', '.join(IMPRINT_SHIFT_MODES)}")
        if abs(self.dialect_st_per_degree) > 1 or abs(self.dialect_season_st) > 2:
            problems.append("dialect shifts beyond 1 semitone/degree or 2 seasonal semitones "
                            "push calls past Nyquist")
        if problems:
            raise UserError("invalid synth config: " + "; ".join(problems))
