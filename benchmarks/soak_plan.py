"""The accelerated hour that benchmarks/soak.py plays: known calls at known times, the broker's
outage schedule, the SIGKILL point, and the match between the events that should arrive and
the ones that did. Pure functions of (duration, seed, schedule): no processes, no clocks.

The calls are 1 kHz tone bursts in quiet noise that the energy test model (tests/conftest.py
`build_energy_tflite`) turns into events: 'loud' above an RMS of 0.1, 'very_loud' above
sqrt(0.2). A burst of amplitude 0.3 (RMS 0.21) is one 'loud' event; one of 0.95 (RMS 0.67) is
a 'loud' and a 'very_loud' event with the same onset.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

SAMPLE_RATE = 16000
NOISE_STD = 0.003  # the quiet between calls: far below the 'loud' threshold
TONE_HZ = 1000.0
LOUD, VERY_LOUD = 0.3, 0.95  # burst amplitudes
SLOT_S = 1.0  # one call slot per audio second: a call in its first 0.75 s, then quiet
ONSET_TOLERANCE_S = 0.1  # an event matches a call when their onsets are this close (5 frames)


@dataclass(frozen=True)
class Burst:
    start_s: float  # audio time from the start of the recording
    length_s: float
    amplitude: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.length_s

    @property
    def labels(self) -> tuple[str, ...]:
        return ("loud", "very_loud") if self.amplitude >= VERY_LOUD else ("loud",)


@dataclass(frozen=True)
class Expected:
    label: str
    start_s: float  # the call's onset, audio time


@dataclass(frozen=True)
class Schedule:
    """What happens when, in audio seconds: the broker's outages [start, end) and the kill."""
    duration_s: float
    outages: tuple[tuple[int, int], ...]
    kill_s: int

    @property
    def quiet(self) -> tuple[float, float]:
        """No call in the 2 s before the kill (so that the killed runtime has decided every
        event before it) nor in the first second after it (the restarted runtime's first
        window)."""
        return (self.kill_s - 2.0, self.kill_s + 1.0)


def make_schedule(duration_s: float, every_s: int = 60, down_s: int = 5,
                  kill_at: float = 0.5) -> Schedule:
    """Outages of `down_s` starting half-way through every `every_s`, ending at least 1 s
    before the audio does; the kill 80% into the outage nearest `kill_at` x duration, while
    the outbox holds what the runtime detected since the broker went down."""
    if every_s < 2 * down_s or down_s < 2:
        raise ValueError(f"the broker must be down at least 2 s and up at least as long as it "
                         f"is down (got down {down_s} s every {every_s} s)")
    outages = []
    start = every_s // 2
    while start + down_s <= duration_s - 1.0:
        outages.append((start, start + down_s))
        start += every_s
    if not outages:
        raise ValueError(f"{duration_s:g} s of audio holds no outage of {down_s} s every "
                         f"{every_s} s; use more audio or a shorter period")
    nearest = min(outages, key=lambda o: abs(o[0] - kill_at * duration_s))
    return Schedule(float(duration_s), tuple(outages),
                    nearest[0] + math.floor(0.8 * down_s))


def plan_bursts(duration_s: float, seed: int, quiet: Sequence[tuple[float, float]] = ()
                ) -> list[Burst]:
    """One call per 1 s slot (onset 0.2-0.45 s in, 0.15-0.3 s long, loud or very loud at
    random), none in a slot that touches a `quiet` interval or the last second."""
    rng = np.random.default_rng(seed)
    bursts = []
    for k in range(int(duration_s // SLOT_S)):
        slot = k * SLOT_S
        onset, length = rng.uniform(0.2, 0.45), rng.uniform(0.15, 0.3)
        amplitude = VERY_LOUD if rng.random() < 0.5 else LOUD
        if slot + SLOT_S > duration_s - 1.0 or any(
                slot < b and slot + SLOT_S > a for a, b in quiet):
            continue
        bursts.append(Burst(round(slot + onset, 4), round(length, 4), amplitude))
    return bursts


def expected_events(bursts: Iterable[Burst]) -> list[Expected]:
    return [Expected(label, b.start_s) for b in bursts for label in b.labels]


class Audio:
    """The recording as s16le PCM, synthesised block by block (an hour would be 115 MB)."""

    def __init__(self, bursts: Sequence[Burst], seed: int, sample_rate: int = SAMPLE_RATE):
        self.sample_rate, self.seed = sample_rate, seed
        self._spans = [(round(b.start_s * sample_rate), round(b.end_s * sample_rate),
                        b.amplitude) for b in bursts]  # sorted, non-overlapping
        self._ends = [end for _, end, _ in self._spans]

    def pcm(self, first: int, n: int) -> bytes:
        """Samples [first, first + n) as little-endian int16 bytes (deterministic)."""
        x = NOISE_STD * np.random.default_rng([self.seed, first]).standard_normal(n)
        i = bisect.bisect_right(self._ends, first)
        while i < len(self._spans) and self._spans[i][0] < first + n:
            a, b, amplitude = self._spans[i]
            lo, hi = max(a, first), min(b, first + n)
            k = np.arange(lo, hi)
            x[lo - first:hi - first] += amplitude * np.sin(2 * np.pi * TONE_HZ * k
                                                           / self.sample_rate)
            i += 1
        return (np.clip(x, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def iso_seconds(unix_s: int) -> str:
    """A whole Unix second as the ISO 8601 text --audio-start-time takes."""
    return datetime.fromtimestamp(unix_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@dataclass
class Match:
    lost: list[Expected]  # calls without an event
    extra: list[dict]  # distinct events (by event_id) for a call already matched
    unexpected: list[dict]  # events that match no call


def match_events(expected: Sequence[Expected], messages: Iterable[dict], origin_s: float
                 ) -> Match:
    """Pair each distinct detection message (de-duplicated by event_id before this) with the
    call of the same label whose onset (audio time + `origin_s`, the Unix time of the first
    sample) is within ONSET_TOLERANCE_S of its `start`."""
    by_label: dict[str, list[float]] = {}
    for e in expected:
        by_label.setdefault(e.label, []).append(origin_s + e.start_s)
    for onsets in by_label.values():
        onsets.sort()
    taken: set[tuple[str, int]] = set()
    extra, unexpected = [], []
    for msg in messages:
        onsets = by_label.get(msg.get("label"), [])
        start = _unix(msg["start"])
        i = bisect.bisect_left(onsets, start)
        near = [j for j in (i - 1, i) if 0 <= j < len(onsets)
                and abs(onsets[j] - start) <= ONSET_TOLERANCE_S]
        if not near:
            unexpected.append(msg)
        elif (msg["label"], near[0]) in taken:
            extra.append(msg)
        else:
            taken.add((msg["label"], near[0]))
    lost = [e for e in expected
            if (e.label, bisect.bisect_left(by_label[e.label], origin_s + e.start_s))
            not in taken]
    return Match(lost, extra, unexpected)
