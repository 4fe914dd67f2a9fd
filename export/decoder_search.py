"""Tune the event decoder per label for event F1 on held-out files (numpy only).

Thresholds chosen for frame F1 sit low (0.1-0.2): a class whose probability idles on a low
plateau is then "on" for minutes and comes out as back-to-back max-duration events. Event F1
is the number we report, so `tune_decoder` chooses each label's threshold, hysteresis, minimum
duration and merge gap (`edge_runtime.contract.events.DecoderConfig`) to maximise it.

How, per class (decoding is per class, so classes are searched independently):
* the class's tracks of all files are laid end to end with zero frames between them (a zero
  never switches an event on or keeps one going, and the zeros outlast the longest merge gap),
  and the decoder's own hysteresis (`events.active_frames`) finds the runs of every file for
  all thresholds of one hysteresis ratio at once;
* merge gap, then min duration, are applied to those runs for every grid value in numpy, as
  the decoder does (whole frames: floor / ceil with its 1e-9-frame tolerance; no max duration);
* predictions are matched to the references one-to-one as `event_scores` matches them (same
  file, any overlap when iou == 0 else IoU >= iou, greedy by descending IoU), with file-local
  times, so every IoU is the float `event_scores` computes;
* with `duration_quantile` (e.g. DURATION_QUANTILE, 5 %), a minimum duration longer than
  that quantile of the class's reference durations is not allowed: F1 on a few dozen tuning
  calls would otherwise buy a few fewer false alarms by discarding every shorter call;
* the best F1 wins; ties go to the simplest decoder (smallest min duration, then merge gap,
  then hysteresis) and then to the middle of the tied thresholds (the most margin both ways).
  A class without reference events gets the setting with the fewest predictions.
The chosen settings are finally decoded file by file with `decode_events` and scored with
`event_scores`: the F1 reported is that metric itself (tests check the fast path agrees).
A class without reference events, or whose best F1 is below `min_f1`, is undetectable.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.contract.card import LabelDecoder, UndetectableLabel
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig, Event, active_frames, decode_events
from edge_runtime.contract.metrics import event_scores

log = logging.getLogger(__name__)

_EPS_FRAMES = 1e-9  # as edge_runtime.contract.events turns seconds into whole frames
# Minimum durations can be capped at this quantile of a label's reference durations. Session
# 9: tuned for F1 alone on `val`, `upsweep` (median call 0.15 s) got 0.16 s, and 6 of the
# `small` teacher's 17 misses among `test` calls at >= 10 dB were 0.07-0.09 s upsweeps whose
# probability rose well above the threshold (0.53-0.65) but not for long enough. Measured
# over 3 seeds (benchmarks/decoder_table.py, the ensemble run) the cap did not raise recall
# at >= 10 dB (teacher -0.003 [-0.010, 0.000]) and cost 0.005 event F1, so it stays opt-in.
DURATION_QUANTILE = 0.05
_MAX_CELLS = 4_000_000  # (frames x thresholds) decoded at once: ~32 MB per int64 temporary


@dataclass(frozen=True)
class SearchGrid:
    """The settings tried for every class (all combinations)."""

    thresholds: tuple[float, ...] = tuple(np.round(np.arange(1, 20) * 0.05, 2).tolist())
    hysteresis_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # off = threshold * (1 - r)
    min_durations_s: tuple[float, ...] = (0.0, 0.04, 0.08, 0.16)
    merge_gaps_s: tuple[float, ...] = (0.0, 0.1, 0.2)

    def __post_init__(self) -> None:
        checks = {"thresholds": lambda v: 0.0 < v <= 1.0,
                  "hysteresis_ratios": lambda v: 0.0 <= v <= 1.0,
                  "min_durations_s": lambda v: 0.0 <= v < math.inf,
                  "merge_gaps_s": lambda v: 0.0 <= v < math.inf}
        for name, ok in checks.items():
            values = getattr(self, name)
            if not values or not all(isinstance(v, int | float) and ok(v) for v in values):
                raise UserError(f"decoder search grid: {name} {values!r} must be a non-empty "
                                "list of valid values (thresholds in (0, 1], ratios in [0, 1], "
                                "durations >= 0)")
            # sorted and unique: the tie-break prefers earlier (smaller) values
            object.__setattr__(self, name, tuple(sorted({float(v) for v in values})))


@dataclass(frozen=True)
class TunedDecoder:
    """Per-label decoder settings chosen for event F1, and the labels not worth emitting."""

    labels: tuple[str, ...]
    decoders: tuple[LabelDecoder, ...]  # per label, in label order (undetectable ones too)
    undetectable: tuple[UndetectableLabel, ...]
    scores: dict[str, dict[str, float]]  # per label: event_scores (tp, fp, fn, precision...)
    iou: float = 0.0

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(d.threshold for d in self.decoders)

    def decoder_config(self, emit_undetectable: bool = False,
                       max_duration_s: float | None = None) -> DecoderConfig:
        off = {u.label for u in self.undetectable} if not emit_undetectable else set()
        return DecoderConfig(threshold=[d.threshold for d in self.decoders],
                             hysteresis=[d.hysteresis for d in self.decoders],
                             min_duration_s=[d.min_duration_s for d in self.decoders],
                             merge_gap_s=[d.merge_gap_s for d in self.decoders],
                             max_duration_s=max_duration_s,
                             emit=[label not in off for label in self.labels])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (for reports and the checkpoint's `extra`)."""
        return {"iou": self.iou, "labels": list(self.labels),
                "decoders": [dataclasses.asdict(d) for d in self.decoders],
                "undetectable": [dataclasses.asdict(u) for u in self.undetectable],
                "scores": self.scores}


# ---------------------------------------------------------------- the search
def tune_decoder(probs_by_file: Mapping[str, np.ndarray],
                 events_by_file: Mapping[str, Sequence[Event]], labels: Sequence[str],
                 frame_rate_hz: float, grid: SearchGrid | None = None, min_f1: float = 0.2,
                 iou: float = 0.0, duration_quantile: float | None = None
                 ) -> TunedDecoder:
    """Choose each label's decoder settings on these files to maximise its event F1.

    `probs_by_file`: file -> (frames, len(labels)) probabilities (frame k starts at k / fr);
    `events_by_file`: file -> reference events (other labels are ignored; a file missing here
    has none). Only the files of `probs_by_file` are used. Deterministic.
    `duration_quantile`: a label's minimum duration may not exceed this quantile of its
    reference events' durations in these files (the grid's smallest is always allowed; None:
    no cap), so that a decoder never discards, by length alone, calls as short as ones the
    references show exist.
    """
    grid = grid or SearchGrid()
    labels = list(labels)
    _check(probs_by_file, events_by_file, labels, frame_rate_hz, min_f1, iou)
    if duration_quantile is not None and not 0.0 <= duration_quantile <= 1.0:
        raise UserError(f"decoder search: duration_quantile ({duration_quantile}) must be in "
                        "[0, 1] or None")
    files = sorted(probs_by_file)
    tracks = [np.asarray(probs_by_file[f], dtype=np.float64) for f in files]
    refs = {f: [dataclasses.replace(e, file=f) for e in events_by_file.get(f, ())
                if e.label in labels] for f in files}
    layout = _Layout(files, tracks, frame_rate_hz, grid)

    decoders, fast = [], []
    for c, label in enumerate(labels):
        ref = [(layout.file_index[f], e.start_s, e.end_s)
               for f in files for e in refs[f] if e.label == label]
        longest = _longest_min_duration(ref, grid, duration_quantile)
        decoder, counts = _search_class(layout, c, label, ref, grid, iou, longest)
        decoders.append(decoder)
        fast.append(counts)

    # The metric itself, on the chosen settings (what every report computes).
    config = DecoderConfig(threshold=[d.threshold for d in decoders],
                           hysteresis=[d.hysteresis for d in decoders],
                           min_duration_s=[d.min_duration_s for d in decoders],
                           merge_gap_s=[d.merge_gap_s for d in decoders])
    predicted = [e for f, x in zip(files, tracks, strict=True)
                 for e in decode_events(x, labels, frame_rate_hz, config, file=f)]
    reference = [e for f in files for e in refs[f]]
    per_class = event_scores(reference, predicted, iou=iou, labels=labels)["per_class"]

    undetectable = []
    for d, counts in zip(decoders, fast, strict=True):
        s = per_class[d.label]
        if (s["tp"], s["tp"] + s["fp"]) != counts:  # a bug in the fast path: say so
            log.warning("decoder search: %s: the search counted (tp, predicted) = %s, "
                        "event_scores %s", d.label, counts, (s["tp"], s["tp"] + s["fp"]))
        n_ref = s["tp"] + s["fn"]
        if n_ref == 0:
            undetectable.append(UndetectableLabel(d.label, "no events in the tuning files"))
        elif s["f1"] < min_f1:
            undetectable.append(UndetectableLabel(
                d.label, f"best event F1 {s['f1']:.3f} on the tuning files is below {min_f1:g}",
                round(float(s["f1"]), 6)))
    for u in undetectable:
        log.info("decoder search: %s is undetectable (%s)", u.label, u.reason)
    scores = {label: {k: int(v) if k in ("tp", "fp", "fn") else float(v)
                      for k, v in per_class[label].items()} for label in labels}
    return TunedDecoder(tuple(labels), tuple(decoders), tuple(undetectable), scores, iou)


def _check(probs_by_file: Mapping[str, np.ndarray], events_by_file: Mapping[str, Sequence[Event]],
           labels: list[str], frame_rate_hz: float, min_f1: float, iou: float) -> None:
    if not labels or len(set(labels)) != len(labels):
        raise UserError(f"decoder search: labels must be unique and non-empty, got {labels}")
    if not probs_by_file:
        raise UserError("decoder search: no files to tune on")
    if not frame_rate_hz > 0 or math.isinf(frame_rate_hz):
        raise UserError(f"decoder search: frame_rate_hz must be > 0, got {frame_rate_hz!r}")
    if not 0.0 <= min_f1 <= 1.0 or not 0.0 <= iou <= 1.0:
        raise UserError(f"decoder search: min_f1 ({min_f1}) and iou ({iou}) must be in [0, 1]")
    for f, x in probs_by_file.items():
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != len(labels):
            raise UserError(f"decoder search: {f}: probabilities must be (frames, "
                            f"{len(labels)}), got {x.shape}")
        if not np.isfinite(x).all() or (x < 0).any() or (x > 1).any():
            raise UserError(f"decoder search: {f}: probabilities must be finite and in [0, 1]")
    if any(events_by_file.values()) and not set(probs_by_file) & set(events_by_file):
        raise UserError("decoder search: the reference events name none of the files with "
                        "probabilities (file keys differ?)")


class _Layout:
    """Every file's frames end to end, separated by zeros: (file, frame) <-> global frame."""

    def __init__(self, files: list[str], tracks: list[np.ndarray], frame_rate_hz: float,
                 grid: SearchGrid):
        self.fr = float(frame_rate_hz)
        self.gaps = [math.floor(g * self.fr + _EPS_FRAMES) for g in grid.merge_gaps_s]
        self.mins = [math.ceil(m * self.fr - _EPS_FRAMES) for m in grid.min_durations_s]
        pad = max(self.gaps) + 1  # zeros between files: no run continues or merges across
        lengths = np.array([len(x) for x in tracks])
        self.offsets = np.concatenate([[0], np.cumsum(lengths + pad)[:-1]])  # (files,)
        self.total = int(self.offsets[-1] + lengths[-1]) if len(tracks) else 0
        self.tracks = tracks
        self.file_index = {f: i for i, f in enumerate(files)}

    def column(self, c: int) -> np.ndarray:
        out = np.zeros(self.total)
        for off, x in zip(self.offsets.tolist(), self.tracks, strict=True):
            out[off : off + len(x)] = x[:, c]
        return out


def _longest_min_duration(ref: list[tuple[int, float, float]], grid: SearchGrid,
                          quantile: float | None) -> float:
    """The largest minimum duration (s) a class may use: the `quantile` of its references'
    durations, never below the grid's smallest; unbounded without references or a quantile."""
    if quantile is None or not ref:
        return math.inf
    durations = np.array([end - start for _, start, end in ref])
    return max(float(np.quantile(durations, quantile)), min(grid.min_durations_s))


def _search_class(layout: _Layout, c: int, label: str, ref: list[tuple[int, float, float]],
                  grid: SearchGrid, iou: float, longest_min_duration_s: float = math.inf
                  ) -> tuple[LabelDecoder, tuple[int, int]]:
    """The best setting of one class on the grid (see the module docstring) among minimum
    durations up to `longest_min_duration_s`, and its (true positives, predicted events) as
    the search counted them."""
    column = layout.column(c)
    refs = _References(ref, layout)
    n_t, n_r = len(grid.thresholds), len(grid.hysteresis_ratios)
    n_g, n_m = len(layout.gaps), len(layout.mins)
    tp = np.zeros((n_t, n_r, n_g, n_m), dtype=np.int64)
    n_pred = np.zeros_like(tp)
    on = np.array(grid.thresholds)
    hyst = np.round(on[:, None] * np.array(grid.hysteresis_ratios)[None, :], 6)  # (T, R)
    step = max(1, _MAX_CELLS // max(1, len(column)))  # thresholds per pass: bounded memory
    for ri, t0 in itertools.product(range(n_r), range(0, n_t, step)):
        ts = range(t0, min(t0 + step, n_t))
        off = np.maximum(on[ts] - hyst[ts, ri], 0.0)  # as StreamingDecoder computes it
        x = np.broadcast_to(column[:, None], (len(column), len(ts)))
        active = active_frames(x, on[ts], off)  # (frames, thresholds)
        edges = np.diff(active.T.astype(np.int8), axis=1, prepend=0, append=0)
        t_on, f_on = np.nonzero(edges == 1)  # by threshold, then frame
        t_off, f_off = np.nonzero(edges == -1)
        split = np.searchsorted(t_on, np.arange(1, len(ts)))
        for ti, a, b in zip(ts, np.split(f_on, split), np.split(f_off, split), strict=True):
            for gi, gap in enumerate(layout.gaps):
                ma, mb = _merge(a, b, gap)
                pairs = refs.candidates(ma, mb, iou)
                for mi, min_frames in enumerate(layout.mins):
                    keep = (mb - ma) >= min_frames
                    n_pred[ti, ri, gi, mi] = int(keep.sum())
                    tp[ti, ri, gi, mi] = refs.matches(pairs, keep)
    # Event F1 (equal rationals are equal floats, so ties are exact); with nothing to find,
    # predict as little as possible.
    score = 2 * tp / (n_pred + refs.n) if refs.n else -n_pred.astype(np.float64)
    too_long = np.array(grid.min_durations_s) > longest_min_duration_s
    score[..., too_long] = -np.inf
    tied = score == score.max()
    # simplest: smallest min duration, then merge gap, then hysteresis ...
    _, ri, gi, mi = min(np.argwhere(tied).tolist(), key=lambda i: (i[3], i[2], i[1]))
    # ... then the middle of the thresholds tied at that setting
    ts = np.flatnonzero(tied[:, ri, gi, mi])
    ti = int(ts[(len(ts) - 1) // 2])
    best = LabelDecoder(label=label, threshold=float(grid.thresholds[ti]),
                        hysteresis=float(hyst[ti, ri]),
                        min_duration_s=float(grid.min_durations_s[mi]),
                        merge_gap_s=float(grid.merge_gaps_s[gi]))
    return best, (int(tp[ti, ri, gi, mi]), int(n_pred[ti, ri, gi, mi]))


def _merge(a: np.ndarray, b: np.ndarray, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Join runs [a, b) (sorted, disjoint) whose gap is <= `gap` frames."""
    if len(a) < 2:
        return a, b
    start = np.concatenate([[True], a[1:] - b[:-1] > gap])
    first = np.flatnonzero(start)
    last = np.concatenate([first[1:] - 1, [len(a) - 1]])
    return a[first], b[last]


class _References:
    """One class's reference events, and one-to-one matching as `event_scores` does it."""

    def __init__(self, ref: list[tuple[int, float, float]], layout: _Layout):
        self.layout = layout
        self.n = len(ref)
        # file, then start (stable): the order `event_scores` gives references within a file
        order = sorted(range(self.n), key=lambda i: (ref[i][0], ref[i][1]))
        self.file = np.array([ref[i][0] for i in order], dtype=np.int64)
        self.start = np.array([ref[i][1] for i in order], dtype=np.float64)
        self.end = np.array([ref[i][2] for i in order], dtype=np.float64)

    def candidates(self, a: np.ndarray, b: np.ndarray, iou: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Eligible (reference, prediction, IoU) pairs for predicted global runs [a, b)."""
        empty = np.zeros(0, dtype=np.int64)
        if not self.n or not len(a):
            return empty, empty, np.zeros(0)
        lay = self.layout
        pf = np.searchsorted(lay.offsets, a, side="right") - 1  # file of each prediction
        local = a - lay.offsets[pf]
        p0, p1 = local / lay.fr, (local + (b - a)) / lay.fr  # as decode_events times them
        # Candidate predictions of a reference: its file's, from the first that ends after it
        # starts to the last that starts before it ends (predictions are sorted, disjoint).
        # Frame bounds are widened by one; the exact test is the IoU below.
        ref_a = lay.offsets[self.file] + np.floor(self.start * lay.fr).astype(np.int64) - 1
        ref_b = lay.offsets[self.file] + np.ceil(self.end * lay.fr).astype(np.int64) + 1
        lo = np.searchsorted(b, ref_a, side="right")
        hi = np.searchsorted(a, ref_b, side="left")
        count = np.maximum(hi - lo, 0)
        ri = np.repeat(np.arange(self.n), count)
        pj = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())
        same = pf[pj] == self.file[ri]
        ri, pj = ri[same], pj[same]
        r0, r1, q0, q1 = self.start[ri], self.end[ri], p0[pj], p1[pj]
        inter = np.maximum(np.minimum(r1, q1) - np.maximum(r0, q0), 0.0)  # = interval_iou
        union = (r1 - r0) + (q1 - q0) - inter
        v = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        ok = v > 0.0 if iou == 0.0 else v >= iou
        return ri[ok], pj[ok], v[ok]

    def matches(self, pairs: tuple[np.ndarray, np.ndarray, np.ndarray], keep: np.ndarray) -> int:
        """One-to-one matches among the pairs whose prediction is kept (greedy by IoU)."""
        ri, pj, v = pairs
        k = keep[pj]
        ri, pj, v = ri[k], pj[k], v[k]
        if not len(ri):
            return 0
        r_count = np.bincount(ri)[ri]
        p_count = np.bincount(pj)[pj]
        alone = (r_count == 1) & (p_count == 1)  # matched whatever the order
        n = int(alone.sum())
        rest = np.flatnonzero(~alone)
        if len(rest):
            order = np.lexsort((pj[rest], ri[rest], -v[rest]))  # -IoU, reference, prediction
            used_r: set[int] = set()
            used_p: set[int] = set()
            for r, p in zip(ri[rest][order].tolist(), pj[rest][order].tolist(), strict=True):
                if r not in used_r and p not in used_p:
                    used_r.add(r)
                    used_p.add(p)
            n += len(used_r)
        return n
