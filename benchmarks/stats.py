"""Paired bootstrap over test files: a confidence interval for a metric, and for the difference
between two systems scored on the same files, each averaged over training seeds.

A replicate draws the test files with replacement (one draw shared by every seed and both
systems, which is what makes the comparison paired) and computes the metric on the pooled
data of the drawn files, a file drawn twice counting twice. Files, not frames, are resampled
because frames within a recording are strongly correlated.

A metric is `metric(items, weights) -> values`: `items` holds one entry per file (the file's
probabilities and targets, or its event counts), `weights` is a (replicates, files) matrix of
how often each file was drawn, and `values` has one number per replicate. Working from draw
counts lets frame AP (one sort per class, then matrix products of per-file counts) and event
metrics (a matrix product of per-file tp/fp/fn counts) score a thousand replicates in seconds. `per_draw` turns
any function of the drawn items into a metric, slowly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import Event
from edge_runtime.contract.metrics import HIGH_SNR_KEY, event_recall_by_snr, event_scores

Metric = Callable[[Sequence[Any], np.ndarray], np.ndarray]
SeedData = Mapping[str, Any]  # file -> that file's item, for one training seed

_AP_CHUNK_ELEMENTS = 2_000_000  # (replicates x thresholds) per step of the AP metric


@dataclass(frozen=True)
class Interval:
    mean: float  # the metric on all files, averaged over seeds
    lo: float
    hi: float
    per_seed: tuple[float, ...]  # the metric on all files, per seed
    n_boot: int

    def __str__(self) -> str:
        return format_ci(self.mean, self.lo, self.hi)


@dataclass(frozen=True)
class Difference:
    mean: float  # mean_a - mean_b on all files
    lo: float
    hi: float
    excludes_zero: bool
    frac_positive: float  # replicates with a - b > 0
    mean_a: float
    mean_b: float
    n_boot: int

    def __str__(self) -> str:
        return format_ci(self.mean, self.lo, self.hi)


def format_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """"0.412 [0.391, 0.433]" for tables."""
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# --- the bootstrap ---------------------------------------------------------------------------


def bootstrap_ci(per_seed_file_data: Sequence[SeedData], metric_fn: Metric, n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05) -> Interval:
    """Percentile bootstrap CI of `metric_fn` over test files, averaged over training seeds."""
    files = _common_files([per_seed_file_data])
    weights = _draws(len(files), n_boot, seed, alpha)
    full, reps = _score(per_seed_file_data, files, metric_fn, weights)
    lo, hi = _percentiles(reps.mean(axis=0), alpha)
    return Interval(float(full.mean()), lo, hi, tuple(float(v) for v in full), n_boot)


def paired_bootstrap_diff(system_a: Sequence[SeedData], system_b: Sequence[SeedData],
                          metric_fn: Metric, n_boot: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> Difference:
    """CI of metric(a) - metric(b), both scored on the same file draw in every replicate.

    Each system is averaged over its own seeds (the two may have different numbers of seeds).
    """
    files = _common_files([system_a, system_b])
    weights = _draws(len(files), n_boot, seed, alpha)
    full_a, reps_a = _score(system_a, files, metric_fn, weights)
    full_b, reps_b = _score(system_b, files, metric_fn, weights)
    diff = reps_a.mean(axis=0) - reps_b.mean(axis=0)
    lo, hi = _percentiles(diff, alpha)
    defined = diff[~np.isnan(diff)]
    return Difference(
        mean=float(full_a.mean() - full_b.mean()), lo=lo, hi=hi,
        excludes_zero=bool(lo > 0 or hi < 0),
        frac_positive=float((defined > 0).mean()) if defined.size else math.nan,
        mean_a=float(full_a.mean()), mean_b=float(full_b.mean()), n_boot=n_boot)


def _common_files(systems: Sequence[Sequence[SeedData]]) -> list[str]:
    """The files every seed of every system was scored on (they must be the same)."""
    if any(len(s) == 0 for s in systems):
        raise UserError("bootstrap: a system has no seeds")
    files = list(systems[0][0])
    if not files:
        raise UserError("bootstrap: no test files")
    wanted = set(files)
    for k, system in enumerate(systems):
        for s, data in enumerate(system):
            if set(data) != wanted:
                extra = sorted(set(data) ^ wanted)[:3]
                raise UserError(f"bootstrap: system {k} seed {s} was scored on other files than "
                                f"system 0 seed 0 (differing: {', '.join(extra)}); a paired "
                                "bootstrap needs the same test files everywhere")
    return files


def _draws(n_files: int, n_boot: int, seed: int, alpha: float) -> np.ndarray:
    """(n_boot, files) draw counts: each row is n_files files drawn with replacement."""
    if n_boot < 1:
        raise UserError(f"bootstrap: n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise UserError(f"bootstrap: alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_files, np.full(n_files, 1.0 / n_files), size=n_boot)


def _score(per_seed: Sequence[SeedData], files: list[str], metric: Metric, weights: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """(metric on all files per seed (S,), metric per seed and replicate (S, B))."""
    # row 0 draws every file once: the full-set value comes from the same call
    weights = np.vstack([np.ones((1, len(files)), dtype=weights.dtype), weights])
    values = np.stack([np.asarray(metric([data[f] for f in files], weights), dtype=np.float64)
                       for data in per_seed])
    return values[:, 0], values[:, 1:]


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile interval, ignoring replicates where the metric is undefined (nan)."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


# --- metrics ---------------------------------------------------------------------------------


def per_draw(fn: Callable[[list[Any]], float]) -> Metric:
    """A metric from any function of the drawn files' items (a file drawn k times appears k
    times, in file order). One Python call per replicate: fine for checks, slow for 1000."""

    def metric(items: Sequence[Any], weights: np.ndarray) -> np.ndarray:
        return np.array([fn([it for it, k in zip(items, row, strict=True) for _ in range(k)])
                         for row in weights], dtype=np.float64)

    return metric


def frame_macro_ap(items: Sequence[tuple[np.ndarray, np.ndarray]], weights: np.ndarray
                   ) -> np.ndarray:
    """Frame macro AP (`edge_runtime.contract.metrics.frame_average_precision`'s "macro") on the pooled
    frames of the drawn files; items are (probs (frames, C), targets (frames, C)) per file."""
    probs = [np.asarray(p) for p, _ in items]
    scores = np.concatenate(probs)
    positive = np.concatenate([np.asarray(t) for _, t in items]) >= 0.5
    if scores.ndim != 2 or scores.shape != positive.shape:
        raise ValueError(f"probs and targets must both be (frames, C): {scores.shape} vs "
                         f"{positive.shape}")
    file_of = np.repeat(np.arange(len(probs)), [len(p) for p in probs])
    per_class = np.stack([_weighted_ap(scores[:, c], positive[:, c], file_of, weights)
                          for c in range(scores.shape[1])])  # (C, B)
    defined = ~np.isnan(per_class)
    n = defined.sum(axis=0)
    total = np.where(defined, per_class, 0.0).sum(axis=0)
    return np.divide(total, n, out=np.full(total.shape, np.nan), where=n > 0)


def _weighted_ap(score: np.ndarray, positive: np.ndarray, file_of: np.ndarray,
                 weights: np.ndarray) -> np.ndarray:
    """AP of one class per weight row, each frame counted w[file] times: exactly the AP of the
    concatenated drawn files, since duplicated frames share their score (one threshold).

    AP = sum over thresholds t of (new positives at t) * precision(t) / positives. Only
    thresholds with a positive frame count, and at each one the frames seen and positives
    gained are per-file counts, so a replicate is two (files x thresholds) matrix products.
    """
    n_files = weights.shape[1]
    order = np.argsort(-score, kind="stable")
    s, y, f = score[order], positive[order], file_of[order]
    if not y.any():
        return np.full(len(weights), np.nan)
    group = np.r_[0, np.cumsum(s[1:] != s[:-1])]  # threshold index of each ranked frame
    last = np.searchsorted(group, np.unique(group[y]), side="right") - 1  # (T,) last rank
    seen = np.empty((n_files, len(last)))  # frames of each file at or above each threshold
    gained = np.empty((n_files, len(last)))  # positives of each file at each threshold
    by_file = np.argsort(f, kind="stable")  # ranks grouped by file, ascending within a file
    bounds = np.r_[0, np.cumsum(np.bincount(f, minlength=n_files))]
    for k in range(n_files):
        ranks = by_file[bounds[k]:bounds[k + 1]]
        seen[k] = np.searchsorted(ranks, last, side="right")
        gained[k] = np.diff(np.searchsorted(ranks[y[ranks]], last, side="right"), prepend=0)
    out = np.empty(len(weights))
    step = max(1, _AP_CHUNK_ELEMENTS // len(last))
    for a in range(0, len(weights), step):
        w = weights[a:a + step].astype(np.float64)  # integer counts: the products are exact
        new = w @ gained  # (b, T) positives gained at each threshold
        tp = np.cumsum(new, axis=1)
        total = tp[:, -1].copy()
        precision = np.maximum(w @ seen, 1.0)  # seen == 0 only where tp == 0 too
        np.divide(tp, precision, out=precision)
        ap = np.einsum("bt,bt->b", new, precision)
        out[a:a + step] = np.divide(ap, total, out=np.full_like(ap, np.nan), where=total > 0)
    return out


class EventCounts(NamedTuple):
    """One file's event matches: what the event metrics sum over drawn files."""

    per_class: np.ndarray  # (C, 3) tp, fp, fn per label
    high_snr: np.ndarray  # (2,) references at >= 10 dB SNR, of them matched


def event_counts_by_file(files: Sequence[str], reference: Sequence[Event],
                         predicted: Sequence[Event], labels: Sequence[str], iou: float = 0.0,
                         snr_db: Sequence[float | None] | None = None
                         ) -> dict[str, EventCounts]:
    """Per-file counts with `event_scores`' matching (events are grouped by `Event.file`).

    `snr_db` aligns with `reference` (see `train.evaluate.reference_events`); without it the
    high-SNR counts are zero.
    """
    snr = [None] * len(reference) if snr_db is None else list(snr_db)
    if len(snr) != len(reference):
        raise ValueError(f"{len(snr)} SNR values for {len(reference)} reference events")
    ref: dict[str, list[tuple[Event, float | None]]] = {f: [] for f in files}
    pred: dict[str, list[Event]] = {f: [] for f in files}
    for e, s in zip(reference, snr, strict=True):
        if e.file in ref:
            ref[e.file].append((e, s))
    for e in predicted:
        if e.file in pred:
            pred[e.file].append(e)
    out = {}
    for f in files:
        events = [e for e, _ in ref[f]]
        scores = event_scores(events, pred[f], iou, labels)["per_class"]
        high = event_recall_by_snr(events, [s for _, s in ref[f]], pred[f], iou,
                                   labels)[HIGH_SNR_KEY]
        out[f] = EventCounts(
            np.array([[scores[k]["tp"], scores[k]["fp"], scores[k]["fn"]] for k in labels],
                     dtype=np.int64).reshape(len(labels), 3),
            np.array([high["n"], high["matched"]], dtype=np.int64))
    return out


def _summed(items: Sequence[EventCounts], weights: np.ndarray) -> np.ndarray:
    """(B, C, 3) tp/fp/fn per label summed over the drawn files."""
    counts = np.stack([it.per_class for it in items])  # (files, C, 3)
    return np.tensordot(weights, counts, axes=1)


def _f1(counts: np.ndarray) -> np.ndarray:
    """F1 from (..., 3) tp/fp/fn, 0 where undefined (as `event_scores` reports it)."""
    tp, fp, fn = (counts[..., k].astype(np.float64) for k in range(3))
    p = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    r = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    return np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=p + r > 0)


def event_f1_micro(items: Sequence[EventCounts], weights: np.ndarray) -> np.ndarray:
    """`event_scores(...)["micro"]["f1"]` on the drawn files."""
    return _f1(_summed(items, weights).sum(axis=1))


def event_f1_macro(items: Sequence[EventCounts], weights: np.ndarray) -> np.ndarray:
    """`event_scores(...)["macro"]["f1"]` on the drawn files (every label counts)."""
    return _f1(_summed(items, weights)).mean(axis=1)


def event_recall_high_snr(items: Sequence[EventCounts], weights: np.ndarray) -> np.ndarray:
    """Event recall at >= 10 dB SNR on the drawn files; nan where no such call was drawn."""
    n, matched = (weights @ np.stack([it.high_snr for it in items])).astype(np.float64).T
    return np.divide(matched, n, out=np.full_like(n, np.nan), where=n > 0)


VERDICTS = {"met": "met", "missed": "**MISSED**",
            "inconclusive": "inconclusive (the CI spans the bound)",
            "undefined": "undefined (nothing to score)"}


def format_interval(cell: Mapping[str, Any] | None, digits: int = 3) -> str:
    """A JSON interval {"mean", "lo", "hi"} as '0.412 [0.391, 0.433]'; 'n/a' where undefined."""
    if not cell or cell.get("mean") is None:
        return "n/a"
    if cell.get("lo") is None or cell.get("hi") is None:
        return f"{cell['mean']:.{digits}f}"
    return format_ci(cell["mean"], cell["lo"], cell["hi"], digits)
