"""Detection metrics in numpy: frame-level average precision (as scikit-learn computes it),
event-level precision/recall/F1 with one-to-one matching, and event recall by SNR bucket (the
same matching; for data whose annotations know each call's SNR).

Conventions:
- AP is the step-wise sum over distinct score thresholds, sum_n (R_n - R_{n-1}) * P_n, with
  tied scores forming one threshold, exactly like `sklearn.metrics.average_precision_score`;
  with no positive it is nan here (sklearn returns 0 with a warning).
- Event matching is one-to-one within the same (file, label). A pair is eligible if
  IoU > 0 when `iou == 0` (any overlap, as animal2vec scores events) or IoU >= `iou`
  otherwise. Eligible pairs are taken greedily by descending IoU (ties: earlier reference,
  then earlier prediction). That is maximum-cardinality whenever no event is eligible with two
  partners; with heavily overlapping events of one label it may match fewer than possible.
- precision, recall and F1 are 0.0 when their denominator is 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import Event


def precision_recall_curve(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) as `sklearn.metrics.precision_recall_curve` returns them.

    precision and recall have one entry per distinct score (descending recall) plus the final
    (1, 0) point; thresholds are the distinct scores in increasing order. Without positives,
    recall is 1 everywhere (as in sklearn).
    """
    y = np.asarray(y_true).ravel()
    s = np.asarray(scores).ravel()
    if y.shape != s.shape or y.size == 0:
        raise ValueError(f"y_true and scores must be non-empty and equal length: {y.shape} {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must be binary (0/1 or bool)")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    order = np.argsort(-s, kind="stable")  # descending; ties end up in one threshold anyway
    s, y = s[order], y[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = 1 + last - tps
    precision = tps / (tps + fps)  # tps + fps >= 1
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], s[last][::-1]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, identical to sklearn's `average_precision_score`; nan without positives."""
    y = np.asarray(y_true).ravel()
    if not (y == 1).any():
        return math.nan
    precision, recall, _ = precision_recall_curve(y, scores)
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def frame_average_precision(
    targets: np.ndarray, scores: np.ndarray, labels: Sequence[str] | None = None
) -> dict:
    """Frame-level AP for (N, C) targets (0/1 or soft, >= 0.5 counts as positive) and scores.

    Returns {"per_class": {label: ap}, "macro": mean over classes with a positive (nan if
    none), "micro": AP over all (frame, class) pairs}. Labels default to "0", "1", ...
    """
    t = np.asarray(targets, dtype=np.float64)
    s = np.asarray(scores)
    if t.ndim != 2 or t.shape != s.shape:
        raise ValueError(f"targets and scores must both be (N, C): {t.shape} vs {s.shape}")
    names = [str(i) for i in range(t.shape[1])] if labels is None else list(labels)
    if len(names) != t.shape[1]:
        raise ValueError(f"{len(names)} labels for {t.shape[1]} columns")
    pos = t >= 0.5
    per_class = {name: average_precision(pos[:, i], s[:, i]) for i, name in enumerate(names)}
    defined = [ap for ap in per_class.values() if not math.isnan(ap)]
    return {
        "per_class": per_class,
        "macro": float(np.mean(defined)) if defined else math.nan,
        "micro": average_precision(pos.ravel(), s.ravel()),
    }


def interval_iou(
    a_start: float | np.ndarray,
    a_end: float | np.ndarray,
    b_start: float | np.ndarray,
    b_end: float | np.ndarray,
) -> float | np.ndarray:
    """Intersection over union of intervals (broadcasts); 0.0 when the union is empty."""
    a0, a1, b0, b1 = (np.asarray(v, dtype=np.float64) for v in (a_start, a_end, b_start, b_end))
    inter = np.maximum(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0)
    union = (a1 - a0) + (b1 - b0) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return float(iou) if iou.ndim == 0 else iou


def _match(ref: np.ndarray, pred: np.ndarray, iou: float) -> np.ndarray:
    """Greedy one-to-one matching between (R, 2) and (P, 2) [start, end] arrays: the indices
    (into `ref`, ascending) of the references that found a partner."""
    if len(ref) == 0 or len(pred) == 0:
        return np.zeros(0, dtype=np.int64)
    pred = pred[np.argsort(pred[:, 0], kind="stable")]
    reach = np.maximum.accumulate(pred[:, 1])  # furthest end among preds sorted before j
    ref_order = np.argsort(ref[:, 0], kind="stable")
    cand: list[tuple[float, int, int]] = []
    for i, (r0, r1) in enumerate(ref[ref_order]):
        # only preds with start < r1 and end > r0 can overlap
        lo = int(np.searchsorted(reach, r0, side="right"))
        hi = int(np.searchsorted(pred[:, 0], r1, side="left"))
        if hi <= lo:
            continue
        js = np.arange(lo, hi)
        v = interval_iou(r0, r1, pred[js, 0], pred[js, 1])
        ok = v > 0.0 if iou == 0.0 else v >= iou
        cand.extend((float(x), i, int(j)) for x, j in zip(v[ok], js[ok], strict=True))
    cand.sort(key=lambda c: (-c[0], c[1], c[2]))
    used_r: set[int] = set()
    used_p: set[int] = set()
    for _, i, j in cand:
        if i not in used_r and j not in used_p:
            used_r.add(i)
            used_p.add(j)
    return np.sort(ref_order[sorted(used_r)]).astype(np.int64)


def _matched_references(
    reference: Sequence[Event], predicted: Sequence[Event], iou: float, wanted: set[str]
) -> np.ndarray:
    """Bool per reference event: matched within its (file, label). References and predictions
    whose label is not wanted take no part (their entries are False)."""
    if not 0.0 <= iou <= 1.0:
        raise UserError(f"event IoU threshold must be in [0, 1], got {iou}")
    groups: dict[tuple[str, str], tuple[list, list, list]] = defaultdict(lambda: ([], [], []))
    for k, e in enumerate(reference):
        if e.label in wanted:
            g = groups[(e.file, e.label)]
            g[0].append(k)
            g[1].append((e.start_s, e.end_s))
    for e in predicted:
        if e.label in wanted:
            groups[(e.file, e.label)][2].append((e.start_s, e.end_s))
    matched = np.zeros(len(reference), dtype=bool)
    for index, ref, pred in groups.values():
        hits = _match(np.array(ref).reshape(-1, 2), np.array(pred).reshape(-1, 2), iou)
        matched[np.asarray(index, dtype=np.int64)[hits]] = True
    return matched


def _prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1}


def event_scores(
    reference: Sequence[Event],
    predicted: Sequence[Event],
    iou: float = 0.0,
    labels: Sequence[str] | None = None,
) -> dict:
    """Event-level tp/fp/fn, precision, recall, F1 per class, micro and macro.

    `labels` fixes the classes reported (events of other labels are ignored); by default the
    labels seen in either list. Macro values are unweighted means over those classes (nan if
    there are none); macro F1 is the mean of per-class F1.
    """
    names = (
        sorted({e.label for e in reference} | {e.label for e in predicted})
        if labels is None
        else list(labels)
    )
    matched = _matched_references(reference, predicted, iou, set(names))
    counts = {name: [0, 0, 0] for name in names}  # tp, fp, fn
    for e, hit in zip(reference, matched, strict=True):
        if e.label in counts:
            counts[e.label][0 if hit else 2] += 1
    for e in predicted:
        if e.label in counts:
            counts[e.label][1] += 1
    for c in counts.values():
        c[1] -= c[0]  # every match used one prediction
    per_class = {name: _prf(*counts[name]) for name in names}
    micro = _prf(*(sum(c[k] for c in counts.values()) for k in range(3)))
    macro = {
        k: float(np.mean([pc[k] for pc in per_class.values()])) if names else math.nan
        for k in ("precision", "recall", "f1")
    }
    return {"per_class": per_class, "micro": micro, "macro": macro}


SNR_EDGES_DB = (0.0, 5.0, 10.0)
HIGH_SNR_DB = 10.0  # the design target: event recall at >= 10 dB (DESIGN.md, quality)
HIGH_SNR_KEY = f">={HIGH_SNR_DB:g} dB"


def snr_bucket_names(edges_db: Sequence[float] = SNR_EDGES_DB) -> list[str]:
    """["<0 dB", "0-5 dB", "5-10 dB", ">=10 dB"] for the default edges: [lo, hi) buckets."""
    e = [f"{x:g}" for x in edges_db]
    return [f"<{e[0]} dB", *(f"{a}-{b} dB" for a, b in pairwise(e)), f">={e[-1]} dB"]


def event_recall_by_snr(
    reference: Sequence[Event],
    snr_db: Sequence[float | None],
    predicted: Sequence[Event],
    iou: float = 0.0,
    labels: Sequence[str] | None = None,
    edges_db: Sequence[float] = SNR_EDGES_DB,
) -> dict:
    """Event recall per SNR bucket, micro over classes, with `event_scores`' matching.

    `snr_db[k]` is the SNR of `reference[k]` (None: unknown; such events still take part in
    matching but are counted in no bucket). Buckets are [lo, hi) between `edges_db`.
    Returns {"buckets": {name: {"n", "matched", "recall"}}, HIGH_SNR_KEY: the same for SNR >=
    10 dB whatever the edges, "n_unknown_snr": int}; recall is nan for an empty bucket.
    """
    if len(snr_db) != len(reference):
        raise ValueError(f"{len(snr_db)} SNR values for {len(reference)} reference events")
    edges = np.asarray(edges_db, dtype=np.float64)
    if edges.ndim != 1 or edges.size == 0 or not np.isfinite(edges).all() or (
            np.diff(edges) <= 0).any():
        raise UserError(f"SNR bucket edges must be increasing finite numbers, got {edges_db}")
    wanted = {e.label for e in reference} if labels is None else set(labels)
    matched = _matched_references(reference, predicted, iou, wanted)
    keep = np.array([e.label in wanted and s is not None for e, s in zip(reference, snr_db,
                                                                          strict=True)], bool)
    snr = np.array([s if s is not None else np.nan for s in snr_db], dtype=np.float64)[keep]
    hit = matched[keep]

    def cell(mask: np.ndarray) -> dict:
        n, m = int(mask.sum()), int(hit[mask].sum())
        return {"n": n, "matched": m, "recall": m / n if n else math.nan}

    bucket = np.searchsorted(edges, snr, side="right")  # 0 below edges[0], len(edges) at top
    return {
        "buckets": {name: cell(bucket == b) for b, name in enumerate(snr_bucket_names(edges))},
        HIGH_SNR_KEY: cell(snr >= HIGH_SNR_DB),
        "n_unknown_snr": int(sum(e.label in wanted and s is None
                                 for e, s in zip(reference, snr_db, strict=True))),
    }
