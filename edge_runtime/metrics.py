"""Detection metrics in numpy: frame-level average precision (as scikit-learn computes it) and
event-level precision/recall/F1 with one-to-one matching.

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

import numpy as np

from edge_runtime.errors import UserError
from edge_runtime.events import Event


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


def _count_matches(ref: np.ndarray, pred: np.ndarray, iou: float) -> int:
    """Greedy one-to-one matches between (R, 2) and (P, 2) [start, end] arrays."""
    if len(ref) == 0 or len(pred) == 0:
        return 0
    pred = pred[np.argsort(pred[:, 0], kind="stable")]
    reach = np.maximum.accumulate(pred[:, 1])  # furthest end among preds sorted before j
    cand: list[tuple[float, int, int]] = []
    for i, (r0, r1) in enumerate(ref[np.argsort(ref[:, 0], kind="stable")]):
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
    return len(used_r)


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
    if not 0.0 <= iou <= 1.0:
        raise UserError(f"event IoU threshold must be in [0, 1], got {iou}")
    names = (
        sorted({e.label for e in reference} | {e.label for e in predicted})
        if labels is None
        else list(labels)
    )
    wanted = set(names)
    groups: dict[tuple[str, str], tuple[list, list]] = defaultdict(lambda: ([], []))
    for side, events in ((0, reference), (1, predicted)):
        for e in events:
            if e.label in wanted:
                groups[(e.file, e.label)][side].append((e.start_s, e.end_s))
    counts = {name: [0, 0, 0] for name in names}  # tp, fp, fn
    for (_, label), (ref, pred) in groups.items():
        tp = _count_matches(np.array(ref).reshape(-1, 2), np.array(pred).reshape(-1, 2), iou)
        c = counts[label]
        c[0] += tp
        c[1] += len(pred) - tp
        c[2] += len(ref) - tp
    per_class = {name: _prf(*counts[name]) for name in names}
    micro = _prf(*(sum(c[k] for c in counts.values()) for k in range(3)))
    macro = {
        k: float(np.mean([pc[k] for pc in per_class.values()])) if names else math.nan
        for k in ("precision", "recall", "f1")
    }
    return {"per_class": per_class, "micro": micro, "macro": macro}
