import math

import numpy as np
import pytest

from benchmarks.stats import (
    EventCounts,
    bootstrap_ci,
    event_counts_by_file,
    event_f1_macro,
    event_f1_micro,
    event_recall_high_snr,
    format_ci,
    frame_macro_ap,
    paired_bootstrap_diff,
    per_draw,
)
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import Event
from edge_runtime.contract.metrics import event_scores, frame_average_precision


def frame_data(rng, n_files=12, frames=40, classes=3, signal=0.3):
    """file -> (probs, targets): probs carry `signal` about the targets."""
    out = {}
    for i in range(n_files):
        t = (rng.random((frames, classes)) < 0.2).astype(np.float32)
        p = np.round(np.clip(rng.random((frames, classes)) * (1 - signal) + signal * t, 0, 1), 2)
        out[f"f{i}.wav"] = (p, t)
    return out


def pooled_macro_ap(items):
    return frame_average_precision(np.concatenate([t for _, t in items]),
                                   np.concatenate([p for p, _ in items]))["macro"]


def counts(tp, fp, fn, high_n=0, high_matched=0):
    return EventCounts(np.array([[tp, fp, fn]]), np.array([high_n, high_matched]))


def test_fast_frame_ap_equals_ap_of_the_concatenated_draw():
    rng = np.random.default_rng(0)
    data = frame_data(rng)
    # a class with no positive in some files, ties from rounding
    for _, t in list(data.values())[:5]:
        t[:, 2] = 0
    items = list(data.values())
    weights = rng.multinomial(len(items), np.full(len(items), 1 / len(items)), size=30)
    weights[0] = 0
    weights[0, 3] = len(items)  # one file drawn every time
    fast = frame_macro_ap(items, weights)
    slow = per_draw(pooled_macro_ap)(items, weights)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, equal_nan=True)
    assert frame_macro_ap(items, np.ones((1, len(items)), int))[0] == pytest.approx(
        pooled_macro_ap(items), rel=1e-12)


def test_ci_contains_the_true_value_and_covers_about_95_percent():
    # each file: 20 calls, each found with probability 0.8; the true recall is 0.8
    hits = 0
    for trial in range(200):
        rng = np.random.default_rng(100 + trial)
        data = {f"f{i}": counts(0, 0, 0, 20, rng.binomial(20, 0.8)) for i in range(30)}
        ci = bootstrap_ci([data], event_recall_high_snr, n_boot=300, seed=trial)
        assert ci.lo <= ci.mean <= ci.hi
        hits += ci.lo <= 0.8 <= ci.hi
    assert 176 <= hits <= 196  # 88-98%: a 99% or an 80% interval would fail


def test_identical_systems_differ_by_exactly_zero():
    rng = np.random.default_rng(1)
    data = frame_data(rng)
    d = paired_bootstrap_diff([data, data], [data, data], frame_macro_ap, n_boot=200)
    assert (d.mean, d.lo, d.hi, d.excludes_zero, d.frac_positive) == (0.0, 0.0, 0.0, False, 0.0)


def test_a_system_better_on_every_file_has_a_ci_above_zero():
    rng = np.random.default_rng(2)
    b = frame_data(rng, signal=0.2)
    a = {f: (0.5 * t + 0.5 * p, t) for f, (p, t) in b.items()}  # separates every file perfectly
    d = paired_bootstrap_diff([a], [b], frame_macro_ap, n_boot=200)
    assert d.excludes_zero and d.lo > 0 and d.frac_positive == 1.0
    assert d.mean_a == pytest.approx(1.0) and d.mean_b < 1.0
    assert d.mean == pytest.approx(d.mean_a - d.mean_b)
    reverse = paired_bootstrap_diff([b], [a], frame_macro_ap, n_boot=200)
    assert reverse.hi < 0 and reverse.excludes_zero
    assert (reverse.lo, reverse.hi) == pytest.approx((-d.hi, -d.lo))  # the same draws


def test_determinism_by_seed():
    rng = np.random.default_rng(3)
    data = [frame_data(rng), frame_data(rng)]
    first = bootstrap_ci(data, frame_macro_ap, n_boot=100, seed=7)
    assert bootstrap_ci(data, frame_macro_ap, n_boot=100, seed=7) == first
    other = bootstrap_ci(data, frame_macro_ap, n_boot=100, seed=8)
    assert (other.lo, other.hi) != (first.lo, first.hi)
    assert other.mean == first.mean  # the full-set value does not depend on the draws


def test_seeds_are_averaged():
    rng = np.random.default_rng(4)
    s0, s1 = frame_data(rng, signal=0.1), frame_data(rng, signal=0.6)
    ci = bootstrap_ci([s0, s1], frame_macro_ap, n_boot=100)
    each = [pooled_macro_ap(list(s.values())) for s in (s0, s1)]
    assert ci.per_seed == pytest.approx(each)
    assert ci.mean == pytest.approx(np.mean(each))
    # metric constant per seed: every replicate is the mean of the seeds
    const = [{f: counts(k, 0, 0) for f in s0} for k in (1, 3)]
    ci = bootstrap_ci(const, lambda items, w: np.full(len(w), float(items[0].per_class[0, 0])),
                      n_boot=50)
    assert (ci.mean, ci.lo, ci.hi, ci.per_seed) == (2.0, 2.0, 2.0, (1.0, 3.0))
    # a seed scored on other files is refused
    with pytest.raises(UserError, match="other files"):
        bootstrap_ci([s0, dict(list(s1.items())[1:])], frame_macro_ap)


def test_event_counts_sum_to_event_scores():
    rng = np.random.default_rng(5)
    labels = ["a", "b"]
    files = [f"f{i}" for i in range(6)]

    def events(n):
        return [Event(str(rng.choice(labels)), s, s + rng.uniform(0.2, 2),
                      file=str(rng.choice(files))) for s in rng.uniform(0, 20, n)]

    ref, pred = events(80), events(70)
    snr = list(rng.uniform(-5, 20, len(ref)))
    items = list(event_counts_by_file(files, ref, pred, labels, snr_db=snr).values())
    ones = np.ones((1, len(files)), int)
    scores = event_scores(ref, pred, labels=labels)
    assert event_f1_micro(items, ones)[0] == pytest.approx(scores["micro"]["f1"], rel=1e-12)
    assert event_f1_macro(items, ones)[0] == pytest.approx(scores["macro"]["f1"], rel=1e-12)
    n_high = sum(s >= 10 for s in snr)
    assert sum(it.high_snr[0] for it in items) == n_high
    # a file drawn twice counts twice
    twice = np.zeros((1, len(files)), int)
    twice[0, 0] = 2
    solo = event_scores([e for e in ref if e.file == "f0"], [e for e in pred if e.file == "f0"],
                        labels=labels)
    assert event_f1_micro(items, twice)[0] == pytest.approx(solo["micro"]["f1"], rel=1e-12)
    ci = bootstrap_ci([dict(zip(files, items, strict=True))], event_f1_micro, n_boot=100)
    assert ci.lo <= ci.mean <= ci.hi


def test_event_recall_high_snr_is_nan_without_such_calls():
    items = [counts(1, 0, 0, 0, 0), counts(1, 0, 0, 4, 3)]
    got = event_recall_high_snr(items, np.array([[2, 0], [1, 1]]))
    assert math.isnan(got[0]) and got[1] == pytest.approx(0.75)


def test_format_ci_and_bad_arguments():
    assert format_ci(0.4123, 0.3912, 0.4334) == "0.412 [0.391, 0.433]"
    data = {"f": counts(1, 0, 0)}
    assert str(bootstrap_ci([data], event_f1_micro, n_boot=5)) == "1.000 [1.000, 1.000]"
    for kw in ({"n_boot": 0}, {"alpha": 1.0}):
        with pytest.raises(UserError):
            bootstrap_ci([data], event_f1_micro, **kw)
    with pytest.raises(UserError):
        bootstrap_ci([], event_f1_micro)
