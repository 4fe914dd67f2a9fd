"""What the export and training tables share to score a model: its per-file items (what the
bootstrap resamples), a bootstrap interval as a JSON cell, and the verdict on an interval."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.stats import EventCounts, bootstrap_ci, event_counts_by_file
from edge_runtime.contract.events import DecoderConfig, Event, decode_events


@dataclass(frozen=True)
class Scored:
    """One model on one split for one seed: what the bootstrap resamples, per file."""

    frames: dict[str, tuple[np.ndarray, np.ndarray]]  # file -> (probs, targets), (frames, C)
    events: dict[str, EventCounts] | None  # file -> matches with the model's decoder (None: probe)


def score_tracks(probs: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray],
                 labels: Sequence[str], frame_rate_hz: float, reference: Sequence[Event] = (),
                 snr_db: Sequence[float | None] = (), decoder: DecoderConfig | None = None,
                 events: bool = True) -> Scored:
    """Per-file items of one model's probability tracks; with `events`, calls decoded as the
    device decodes them (`decoder`: the model card's) and matched against `reference`
    (aligned with `snr_db`)."""
    files = list(probs)
    counts = None
    if events:
        predicted = [e for f in files
                     for e in decode_events(probs[f], labels, frame_rate_hz, decoder, file=f)]
        counts = event_counts_by_file(files, reference, predicted, labels, iou=0.0,
                                      snr_db=snr_db)
    return Scored({f: (probs[f], targets[f]) for f in files}, counts)


def finite(value: float | None) -> float | None:
    """A figure for the JSON: NaN (nothing to score) becomes None."""
    return None if value is None or math.isnan(value) else float(value)


def interval(runs: Sequence[Any], metric: Callable, n_boot: int, boot_seed: int = 0
             ) -> dict[str, Any]:
    """The mean over seeds with its bootstrap CI over files, and each seed's value."""
    ci = bootstrap_ci(runs, metric, n_boot, boot_seed)
    return {"mean": finite(ci.mean), "lo": finite(ci.lo), "hi": finite(ci.hi),
            "per_seed": [finite(v) for v in ci.per_seed]}


def judge(lo: float | None, hi: float | None, bound: float, at_least: bool = True,
          inclusive: bool = False) -> str:
    """Is `value >= bound` (`<=` with at_least=False) shown by the interval [lo, hi]? 'met' when
    the interval excludes the bound on the right side, 'missed' when it excludes it on the
    wrong side, 'inconclusive' when it contains it (benchmarks/README.md: a claim holds when its
    CI excludes 0); 'undefined' without an interval (e.g. no positives to score).
    `inclusive`: the bound itself counts as met (a figure with no sampling in it, lo == hi,
    met when it satisfies the inequality; the training table's DESIGN targets)."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "undefined"
    if not at_least:
        lo, hi, bound = -hi, -lo, -bound
    if lo > bound or (inclusive and lo >= bound):
        return "met"
    if hi < bound:
        return "missed"
    return "inconclusive"
