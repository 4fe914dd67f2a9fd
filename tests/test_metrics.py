import math

import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import Event
from edge_runtime.contract.metrics import (
    HIGH_SNR_KEY,
    average_precision,
    event_recall_by_snr,
    event_scores,
    frame_average_precision,
    interval_iou,
    precision_recall_curve,
)

skm = pytest.importorskip("sklearn.metrics")


# --- average precision -------------------------------------------------------------------------


def test_average_precision_by_hand():
    # ranked: 0.9 pos (P=1, R=1/2), 0.8 neg (P=1/2, R=1/2), 0.7 pos (P=2/3, R=1), 0.1 neg
    # AP = sum (R_n - R_n-1) * P_n = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(5 / 6)
    # tie at 0.5 is one threshold: (P=1/2, R=1/2); then 0.2: (P=2/3, R=1)
    # AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12 (breaking the tie pos-first would give 5/6)
    assert average_precision([1, 0, 1], [0.5, 0.5, 0.2]) == pytest.approx(7 / 12)
    assert average_precision([0, 1, 0], [0.5, 0.5, 0.2]) == pytest.approx(1 / 2)


def test_average_precision_without_positives_is_nan():
    assert math.isnan(average_precision([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([], []))


@pytest.mark.parametrize("seed", range(40))
def test_matches_sklearn_on_random_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    y = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(int)
    y[rng.integers(n)] = 1
    s = rng.random(n)
    if seed % 3 == 0:
        s = np.round(s, 1)  # many ties
    elif seed % 3 == 1:
        s = (s + 0.3 * y).astype(np.float32)
    if seed % 5 == 0:
        s = rng.integers(0, 4, n)  # integer scores, heavy ties
    ours = average_precision(y, s)
    ref = skm.average_precision_score(y, s)
    assert ours == pytest.approx(ref, rel=1e-12, abs=1e-15)
    for a, b in zip(precision_recall_curve(y, s), skm.precision_recall_curve(y, s), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    # bools work as targets too
    assert average_precision(y.astype(bool), s) == pytest.approx(ours, rel=1e-12)


def test_precision_recall_curve_input_errors():
    with pytest.raises(ValueError):
        precision_recall_curve([0, 1], [0.3])
    with pytest.raises(ValueError):
        precision_recall_curve([0, 2], [0.3, 0.4])
    with pytest.raises(ValueError):
        precision_recall_curve([0, 1], [0.3, np.nan])


def test_frame_average_precision():
    rng = np.random.default_rng(7)
    n = 300
    targets = np.zeros((n, 3))
    targets[:, 0] = rng.random(n)  # soft targets: >= 0.5 is positive
    targets[:, 1] = rng.random(n) < 0.2
    scores = np.round(rng.random((n, 3)) * 0.7 + 0.3 * (targets >= 0.5), 2)
    res = frame_average_precision(targets, scores, labels=["a", "b", "c"])
    pos = targets >= 0.5
    for i, label in enumerate("ab"):
        assert res["per_class"][label] == pytest.approx(
            skm.average_precision_score(pos[:, i], scores[:, i]), rel=1e-12
        )
    assert math.isnan(res["per_class"]["c"])  # no positives: left out of the macro mean
    assert res["macro"] == pytest.approx((res["per_class"]["a"] + res["per_class"]["b"]) / 2)
    assert res["micro"] == pytest.approx(
        skm.average_precision_score(pos.ravel(), scores.ravel()), rel=1e-12
    )
    default = frame_average_precision(targets, scores)
    assert list(default["per_class"]) == ["0", "1", "2"]
    none = frame_average_precision(np.zeros((4, 2)), np.ones((4, 2)))
    assert math.isnan(none["macro"]) and math.isnan(none["micro"])
    with pytest.raises(ValueError):
        frame_average_precision(targets, scores[:, :2])
    with pytest.raises(ValueError):
        frame_average_precision(targets, scores, labels=["a"])


# --- events ------------------------------------------------------------------------------------


def test_interval_iou():
    assert interval_iou(0.0, 2.0, 1.0, 3.0) == pytest.approx(1 / 3)
    assert interval_iou(0.0, 1.0, 1.0, 2.0) == 0.0  # touching
    assert interval_iou(0.0, 1.0, 0.0, 1.0) == 1.0
    assert interval_iou(1.0, 1.0, 1.0, 1.0) == 0.0  # empty union
    got = interval_iou(0.0, 2.0, np.array([0.0, 1.0, 5.0]), np.array([1.0, 3.0, 6.0]))
    np.testing.assert_allclose(got, [0.5, 1 / 3, 0.0])


def E(label, a, b, file=""):
    return Event(label, a, b, file=file)


def test_event_scores_by_hand_at_iou_0_and_0_5():
    ref = [E("a", 0, 1), E("a", 2, 3), E("a", 5, 6)]
    pred = [
        E("a", 0.5, 1.5),  # IoU 0.5/1.5 = 1/3 with [0, 1]
        E("a", 2, 3),  # IoU 1
        E("a", 3.1, 4),  # overlaps nothing
        E("a", 5.9, 7),  # IoU 0.1/2 = 0.05 with [5, 6]
    ]
    res = event_scores(ref, pred, iou=0.0)["per_class"]["a"]
    assert (res["tp"], res["fp"], res["fn"]) == (3, 1, 0)
    assert (res["precision"], res["recall"]) == (0.75, 1.0)
    assert res["f1"] == pytest.approx(2 * 0.75 / 1.75)
    res = event_scores(ref, pred, iou=0.5)["per_class"]["a"]
    assert (res["tp"], res["fp"], res["fn"]) == (1, 3, 2)
    assert res["f1"] == pytest.approx(2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))
    # IoU exactly at the threshold counts (>=) when iou > 0
    res = event_scores([E("a", 0, 2)], [E("a", 0, 1)], iou=0.5)["micro"]
    assert res["tp"] == 1
    # touching is no overlap at iou 0
    assert event_scores([E("a", 0, 1)], [E("a", 1, 2)])["micro"]["tp"] == 0


def test_matching_is_one_to_one_per_file_and_label_greedy_by_iou():
    # two predictions on one reference: one tp, one fp
    res = event_scores([E("a", 0, 2)], [E("a", 0, 1), E("a", 0.5, 2)])["micro"]
    assert (res["tp"], res["fp"], res["fn"]) == (1, 1, 0)
    # same times, other file or other label: no match
    res = event_scores([E("a", 0, 1, "x.wav")], [E("a", 0, 1, "y.wav"), E("b", 0, 1, "x.wav")])
    assert (res["micro"]["tp"], res["micro"]["fp"], res["micro"]["fn"]) == (0, 2, 1)
    # R1=[0,2], R2=[1.5,4]; P1=[0,2.5] (IoU .8 with R1, .125 with R2),
    # P2=[1.6,4] (IoU .96 with R2, .1 with R1): best pairs first -> both matched
    res = event_scores(
        [E("a", 0, 2), E("a", 1.5, 4)], [E("a", 0, 2.5), E("a", 1.6, 4)], iou=0.5
    )["micro"]
    assert res["tp"] == 2
    # a long prediction first in time must not hide the later ones from the sweep
    res = event_scores(
        [E("a", 1, 2), E("a", 5, 6), E("a", 8, 9)], [E("a", 0, 10), E("a", 5.5, 6), E("a", 8, 8.5)]
    )["micro"]
    assert res["tp"] == 3
    res = event_scores([E("a", 5, 6)], [E("a", 0, 10), E("a", 1, 1.5), E("a", 2, 2.5)])["micro"]
    assert res["tp"] == 1
    # Ra=[0,3], Rb=[2.5,3.5]; Px=[2.4,3.2] overlaps both (IoU .19 with Ra, .64 with Rb),
    # Py=[2.45,2.5] only Ra: taking Rb-Px first leaves Ra-Py, two matches
    res = event_scores([E("a", 0, 3), E("a", 2.5, 3.5)], [E("a", 2.4, 3.2), E("a", 2.45, 2.5)])
    assert res["micro"]["tp"] == 2


def test_micro_macro_and_undefined_values():
    ref = [E("a", 0, 1), E("a", 2, 3), E("b", 0, 1)]
    pred = [E("a", 0, 1), E("c", 4, 5)]
    res = event_scores(ref, pred)
    pc = res["per_class"]
    assert list(pc) == ["a", "b", "c"]
    assert (pc["a"]["precision"], pc["a"]["recall"]) == (1.0, 0.5)
    assert pc["b"] == {"tp": 0, "fp": 0, "fn": 1, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert pc["c"] == {"tp": 0, "fp": 1, "fn": 0, "precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert (res["micro"]["tp"], res["micro"]["fp"], res["micro"]["fn"]) == (1, 1, 2)
    assert res["micro"]["precision"] == 0.5 and res["micro"]["recall"] == pytest.approx(1 / 3)
    assert res["macro"]["precision"] == pytest.approx(1 / 3)
    assert res["macro"]["recall"] == pytest.approx(0.5 / 3)
    assert res["macro"]["f1"] == pytest.approx((2 / 3) / 3)
    # explicit labels: only these are reported, other labels ignored, empty ones score 0
    res = event_scores(ref, pred, labels=["a", "d"])
    assert list(res["per_class"]) == ["a", "d"]
    assert res["micro"]["fn"] == 1 and res["micro"]["fp"] == 0
    assert res["macro"]["recall"] == pytest.approx(0.25)
    with pytest.raises(UserError):
        event_scores(ref, pred, iou=1.5)


# --- event recall by SNR -----------------------------------------------------------------------


def test_event_recall_by_snr_by_hand():
    ref = [E("a", 0, 1), E("a", 2, 3), E("b", 4, 5), E("a", 6, 7), E("b", 8, 9), E("a", 10, 11)]
    snr = [-3.0, 2.0, 4.9, 5.0, 12.0, None]
    pred = [E("a", 0.5, 1.5), E("b", 4, 4.5), E("b", 8, 9), E("a", 10, 11), E("a", 20, 21)]
    res = event_recall_by_snr(ref, snr, pred)
    b = res["buckets"]
    assert list(b) == ["<0 dB", "0-5 dB", "5-10 dB", ">=10 dB"]
    assert b["<0 dB"] == {"n": 1, "matched": 1, "recall": 1.0}
    assert b["0-5 dB"] == {"n": 2, "matched": 1, "recall": 0.5}  # 2.0 missed, 4.9 found
    assert b["5-10 dB"] == {"n": 1, "matched": 0, "recall": 0.0}  # 5.0 is in [5, 10)
    assert b[">=10 dB"] == {"n": 1, "matched": 1, "recall": 1.0}
    assert res[HIGH_SNR_KEY] == b[">=10 dB"]
    assert res["n_unknown_snr"] == 1  # the matched [10, 11] counts nowhere
    # IoU rule as in event_scores: [0.5, 1.5] has IoU 1/3 with [0, 1]
    assert event_recall_by_snr(ref, snr, pred, iou=0.5)["buckets"]["<0 dB"]["matched"] == 0
    # only the wanted labels; an empty bucket has recall nan
    res = event_recall_by_snr(ref, snr, pred, labels=["b"])
    assert res["buckets"]["<0 dB"]["n"] == 0 and math.isnan(res["buckets"]["<0 dB"]["recall"])
    assert res["buckets"]["0-5 dB"] == {"n": 1, "matched": 1, "recall": 1.0}
    assert res["n_unknown_snr"] == 0


def test_unknown_snr_events_still_take_part_in_matching():
    # one prediction, two overlapping references; the unknown-SNR one has the higher IoU and
    # takes the prediction, so the known one is missed exactly as event_scores counts it
    ref = [E("a", 0, 1), E("a", 0.8, 2)]
    pred = [E("a", 0.9, 2)]
    res = event_recall_by_snr(ref, [12.0, None], pred)
    assert res[HIGH_SNR_KEY] == {"n": 1, "matched": 0, "recall": 0.0}
    assert event_scores(ref, pred)["micro"]["tp"] == 1


@pytest.mark.parametrize("seed", range(5))
def test_recall_by_snr_agrees_with_event_scores(seed):
    rng = np.random.default_rng(seed)

    def events(n):
        starts = rng.uniform(0, 30, n)
        return [E(str(rng.choice(["a", "b"])), s, s + rng.uniform(0.1, 2), str(rng.integers(3)))
                for s in starts]

    ref, pred = events(60), events(50)
    snr = list(rng.uniform(-10, 20, len(ref)))
    for iou in (0.0, 0.3):
        res = event_recall_by_snr(ref, snr, pred, iou=iou, edges_db=(-5, 0, 5, 10, 15))
        assert list(res["buckets"]) == ["<-5 dB", "-5-0 dB", "0-5 dB", "5-10 dB", "10-15 dB",
                                        ">=15 dB"]
        cells = res["buckets"].values()
        assert sum(c["n"] for c in cells) == len(ref)
        assert sum(c["matched"] for c in cells) == event_scores(ref, pred, iou=iou)["micro"]["tp"]
        high = [s >= 10 for s in snr]
        assert res[HIGH_SNR_KEY]["n"] == sum(high)


def test_recall_by_snr_input_errors():
    with pytest.raises(ValueError):
        event_recall_by_snr([E("a", 0, 1)], [], [])
    for edges in ((), (5, 0), (0, 0), (0, math.inf)):
        with pytest.raises(UserError):
            event_recall_by_snr([], [], [], edges_db=edges)
    with pytest.raises(UserError):
        event_recall_by_snr([], [], [], iou=-0.1)
