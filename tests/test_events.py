import math

import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import (
    DecoderConfig,
    Event,
    StreamingDecoder,
    decode_events,
    events_to_frames,
)


def spans(events):
    return [(e.label, e.onset_frame, round(e.start_s, 9), round(e.end_s, 9)) for e in events]


# --- hand-made cases ---------------------------------------------------------------------------


def test_hysteresis_keeps_one_event_through_a_dip():
    p = np.array([[0.2, 0.6, 0.45, 0.7, 0.3, 0.1]]).T  # dip 0.45: below on 0.5, above off 0.4
    (ev,) = decode_events(p, ["a"], 10.0, DecoderConfig(threshold=0.5, hysteresis=0.1))
    assert (ev.onset_frame, ev.start_s, ev.end_s) == (1, 0.1, 0.4)
    assert ev.confidence_max == pytest.approx(0.7)
    assert ev.confidence_mean == pytest.approx((0.6 + 0.45 + 0.7) / 3)
    assert ev.duration_s == pytest.approx(0.3)
    # without hysteresis the dip splits it
    evs = decode_events(p, ["a"], 10.0, DecoderConfig(threshold=0.5, hysteresis=0.0))
    assert [(e.onset_frame, e.end_s) for e in evs] == [(1, 0.2), (3, 0.4)]
    # a dip below the off threshold ends it too
    p2 = np.array([[0.6, 0.35, 0.6]]).T
    assert len(decode_events(p2, ["a"], 10.0, DecoderConfig(hysteresis=0.1))) == 2


def test_off_threshold_clipped_at_zero_still_ends_events():
    p = np.array([[0.0, 0.06, 0.01, 0.0, 0.0, 0.07]]).T
    evs = decode_events(p, ["a"], 1.0, DecoderConfig(threshold=0.05, hysteresis=0.1))
    assert [(e.start_s, e.end_s) for e in evs] == [(1.0, 3.0), (5.0, 6.0)]
    # threshold 0 means every frame is on: one event over the whole stream
    evs = decode_events(p, ["a"], 1.0, DecoderConfig(threshold=0.0))
    assert [(e.start_s, e.end_s) for e in evs] == [(0.0, 6.0)]


def test_min_duration_drops_short_events_inclusive_at_the_limit():
    p = np.zeros((40, 1))
    p[1:7] = 0.9  # 6 frames at 25 Hz = 0.24 s
    p[10:17] = 0.9  # 7 frames = 0.28 s (0.28 * 25 is 7.000000000000001 in floats)
    p[20:30] = 0.9  # 10 frames
    evs = decode_events(p, ["a"], 25.0, DecoderConfig(min_duration_s=0.28))
    assert [e.onset_frame for e in evs] == [10, 20]


def test_merge_gap_joins_close_events_and_confidence_covers_the_gap():
    p = np.zeros((12, 1))
    p[0:2], p[2:4], p[4:6], p[9:10] = 0.8, 0.2, 0.6, 0.9  # gaps of 2 and 3 frames
    evs = decode_events(p, ["a"], 10.0, DecoderConfig(merge_gap_s=0.2))
    assert [(e.start_s, e.end_s) for e in evs] == [(0.0, 0.6), (0.9, 1.0)]
    assert evs[0].confidence_max == pytest.approx(0.8)
    assert evs[0].confidence_mean == pytest.approx((2 * 0.8 + 2 * 0.2 + 2 * 0.6) / 6)
    # min duration applies to the merged event
    evs = decode_events(p, ["a"], 10.0, DecoderConfig(merge_gap_s=0.2, min_duration_s=0.5))
    assert [e.onset_frame for e in evs] == [0]


def test_max_duration_splits_into_consecutive_chunks():
    p = np.zeros((30, 1))
    p[2:27] = np.linspace(0.6, 0.99, 25)[:, None]
    evs = decode_events(p, ["a"], 10.0, DecoderConfig(max_duration_s=1.0))
    assert [(e.onset_frame, e.start_s, e.end_s) for e in evs] == [
        (2, 0.2, 1.2), (12, 1.2, 2.2), (22, 2.2, 2.7)
    ]
    for e in evs:
        a, b = e.onset_frame, round(e.end_s * 10)
        assert e.confidence_max == pytest.approx(p[a:b, 0].max())
        assert e.confidence_mean == pytest.approx(p[a:b, 0].mean())
    # 1.16 s * 25 Hz is 28.999999999999996 in floats: still 29-frame chunks
    evs = decode_events(np.ones((60, 1)), ["a"], 25.0, DecoderConfig(max_duration_s=1.16))
    assert [e.onset_frame for e in evs] == [0, 29, 58]


def test_per_class_thresholds_and_output_order():
    p = np.zeros((10, 2))
    p[3:5, 0] = 0.5  # class "b": on at 0.4 -> event
    p[3:5, 1] = 0.7  # class "a": on at 0.8 -> nothing
    p[1:2, 1] = 0.85
    cfg = DecoderConfig(threshold=[0.4, 0.8], hysteresis=0.0)
    evs = decode_events(p, ["b", "a"], 10.0, cfg, start_s=100.0, file="x.wav")
    assert spans(evs) == [("a", 1, 100.1, 100.2), ("b", 3, 100.3, 100.5)]
    assert all(e.file == "x.wav" for e in evs)
    # same start: ordered by label name
    p = np.full((3, 2), 0.9)
    assert [e.label for e in decode_events(p, ["z", "m"], 10.0)] == ["m", "z"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 1.5},
        {"threshold": -0.1},
        {"threshold": [0.5, float("nan")]},
        {"threshold": []},
        {"hysteresis": -0.1},
        {"min_duration_s": -1.0},
        {"merge_gap_s": -0.5},
        {"max_duration_s": 0.0},
        {"max_duration_s": -2.0},
    ],
)
def test_bad_config_is_a_user_error(kwargs):
    with pytest.raises(UserError):
        DecoderConfig(**kwargs)


def test_decoder_rejects_mismatched_setup():
    with pytest.raises(UserError, match="3 thresholds given for 2 labels"):
        StreamingDecoder(["a", "b"], 10.0, DecoderConfig(threshold=[0.1, 0.2, 0.3]))
    with pytest.raises(UserError, match="shorter than one frame"):
        StreamingDecoder(["a"], 10.0, DecoderConfig(max_duration_s=0.05))
    with pytest.raises(UserError):
        StreamingDecoder(["a", "a"], 10.0)
    with pytest.raises(UserError):
        StreamingDecoder(["a"], 0.0)
    dec = StreamingDecoder(["a", "b"], 10.0)
    with pytest.raises(ValueError):
        dec.push(np.zeros((4, 3)))
    with pytest.raises(ValueError):
        dec.push(np.array([[0.1, np.nan]]))


# --- streaming ---------------------------------------------------------------------------------


def test_events_are_emitted_as_soon_as_final():
    dec = StreamingDecoder(["a", "b"], 10.0, DecoderConfig(merge_gap_s=0.3, max_duration_s=1.0))
    p = np.zeros((40, 2))
    p[:, 1] = 0.9  # "b" is on for the whole stream: it must not hold "a" back
    p[2:5, 0] = 0.9
    assert dec.push(p[:5]) == []
    assert dec.push(p[5:8]) == []  # 3 gap frames: a run starting at frame 8 would still merge
    # frame 8 is off, so no later onset can merge: "a" is final although "b" is still on
    assert spans(dec.push(p[8:9])) == [("a", 2, 0.2, 0.5)]
    # "b" is split at max_duration: each full chunk comes out as soon as it is complete
    assert spans(dec.push(p[9:35])) == [("b", 0, 0.0, 1.0), ("b", 10, 1.0, 2.0), ("b", 20, 2.0, 3.0)]
    assert spans(dec.flush()) == [("b", 30, 3.0, 3.5)]


def naive_decode(p, labels, fr, cfg, start_s=0.0):
    """Frame-by-frame reference of the documented semantics (independent of the decoder)."""
    thr = np.broadcast_to(np.asarray(cfg.threshold, float), (len(labels),))
    gap = math.floor(cfg.merge_gap_s * fr + 1e-9)
    min_f = math.ceil(cfg.min_duration_s * fr - 1e-9)
    max_f = math.inf if cfg.max_duration_s is None else math.floor(cfg.max_duration_s * fr + 1e-9)
    out = []
    for c, label in enumerate(labels):
        off = max(thr[c] - cfg.hysteresis, 0.0)
        runs, on, onset = [], False, 0
        for k, v in enumerate(p[:, c]):
            now = v >= thr[c] or (on and v >= off and v > 0)
            if now and not on:
                onset = k
            if on and not now:
                runs.append([onset, k])
            on = now
        if on:
            runs.append([onset, len(p)])
        merged = []
        for r in runs:
            if merged and r[0] - merged[-1][1] <= gap:
                merged[-1][1] = r[1]
            else:
                merged.append(r)
        for a, b in merged:
            if b - a < min_f:
                continue
            while a < b:
                e = int(min(b, a + max_f))
                seg = p[a:e, c]
                out.append((label, a, start_s + a / fr, start_s + e / fr, seg.max(), seg.mean()))
                a = e
    return sorted(out, key=lambda t: (t[2], t[0]))


def random_case(rng):
    n_classes = int(rng.integers(1, 4))
    n = int(rng.integers(1, 250))
    if rng.random() < 0.3:
        p = rng.random((n, n_classes))  # noise: many short runs
    else:  # smooth random walks: long events, dips, gaps
        p = np.clip(0.5 + np.cumsum(rng.normal(0, 0.12, (n, n_classes)), axis=0) * 0.5, 0, 1)
    p = p.astype(rng.choice([np.float32, np.float64]))  # float64 sums are order-sensitive
    fr = float(rng.choice([10.0, 25.0, 50.0]))
    cfg = DecoderConfig(
        threshold=list(rng.uniform(0.05, 0.9, n_classes)) if rng.random() < 0.5 else 0.5,
        hysteresis=float(rng.choice([0.0, 0.1, 0.3])),
        min_duration_s=float(rng.choice([0.0, 0.1, 0.3])),
        merge_gap_s=float(rng.choice([0.0, 0.1, 0.5, 2.0])),
        max_duration_s=None if rng.random() < 0.4 else float(rng.choice([0.1, 0.4, 1.0])),
    )
    labels = ["call", "alarm", "bark"][:n_classes]
    return p, labels, fr, cfg


def random_chunks(rng, n):
    cuts, k = [], 0
    mode = rng.integers(0, 3)
    while k < n:
        size = 1 if mode == 0 else int(rng.integers(0, 8 if mode == 1 else 80))
        cuts.append((k, min(n, k + size)))
        k += size
    return cuts


def test_batch_matches_frame_by_frame_reference():
    rng = np.random.default_rng(1)
    for _ in range(150):
        p, labels, fr, cfg = random_case(rng)
        got = decode_events(p, labels, fr, cfg, start_s=3.0)
        ref = naive_decode(p.astype(np.float64), labels, fr, cfg, start_s=3.0)
        assert spans(got) == [(r[0], r[1], round(r[2], 9), round(r[3], 9)) for r in ref]
        np.testing.assert_allclose([e.confidence_max for e in got], [r[4] for r in ref])
        np.testing.assert_allclose([e.confidence_mean for e in got], [r[5] for r in ref], rtol=1e-9)


def test_streaming_equals_batch_for_any_chunking():
    rng = np.random.default_rng(2)
    for _ in range(300):
        p, labels, fr, cfg = random_case(rng)
        batch = decode_events(p, labels, fr, cfg, start_s=1.5, file="f")
        dec = StreamingDecoder(labels, fr, cfg, start_s=1.5, file="f")
        streamed = []
        for a, b in random_chunks(rng, len(p)):
            out = dec.push(p[a:b])
            assert out == sorted(out, key=lambda e: (e.start_s, e.label))
            streamed += out
        streamed += dec.flush()
        assert dec.frames_pushed == len(p)
        # exact equality, floats included; across classes emission order may differ
        assert sorted(streamed, key=lambda e: (e.start_s, e.label)) == batch
        for label in labels:
            assert [e for e in streamed if e.label == label] == [
                e for e in batch if e.label == label
            ]


def sparse_case(rng):
    """Long quiet stretches with bursts of activity per class: the decoder's fast path (skip
    idle classes, skip whole idle pushes) alternates with open events, merge gaps and splits."""
    n_classes, n = int(rng.integers(1, 5)), int(rng.integers(50, 600))
    p = rng.uniform(0.0, 0.3, (n, n_classes))
    for _ in range(int(rng.integers(0, 12))):
        c, a = int(rng.integers(n_classes)), int(rng.integers(n))
        p[a : a + int(rng.integers(1, 40)), c] = rng.uniform(0.35, 1.0)
    labels = [f"c{c}" for c in range(n_classes)]
    cfg = DecoderConfig(
        threshold=list(rng.uniform(0.3, 0.9, n_classes)),
        hysteresis=list(rng.choice([0.0, 0.1, 0.3], n_classes)),
        min_duration_s=list(rng.choice([0.0, 0.1, 0.3], n_classes)),
        merge_gap_s=list(rng.choice([0.0, 0.1, 0.5, 2.0], n_classes)),
        max_duration_s=None if rng.random() < 0.4 else float(rng.choice([0.1, 0.4, 1.0])),
        emit=[bool(v) for v in rng.random(n_classes) < 0.85],
    )
    return p.astype(rng.choice([np.float32, np.float64])), labels, 10.0, cfg


def test_fast_path_gives_the_same_events_as_visiting_every_class():
    rng = np.random.default_rng(7)
    skipped = 0
    for _ in range(300):
        p, labels, fr, cfg = random_case(rng) if rng.random() < 0.3 else sparse_case(rng)
        fast = StreamingDecoder(labels, fr, cfg, start_s=2.0, file="f")
        slow = StreamingDecoder(labels, fr, cfg, start_s=2.0, file="f")
        slow._fast = False
        for a, b in random_chunks(rng, len(p)):
            idle = not any(st.alive or st.open for st in fast._states)
            skipped += idle and b > a and not (p[a:b] >= fast._on).any()
            assert fast.push(p[a:b]) == slow.push(p[a:b])  # same events, same order, same bits
        assert fast.flush() == slow.flush()
        assert fast.frames_pushed == slow.frames_pushed == len(p)
    assert skipped > 100  # whole pushes did take the fast path


def test_merge_gap_spanning_many_pushes():
    p = np.zeros((30, 1))
    p[2:4], p[14:16] = 0.9, 0.9  # 10-frame gap, merge gap 1 s = 10 frames
    cfg = DecoderConfig(merge_gap_s=1.0, max_duration_s=0.5)
    dec = StreamingDecoder(["a"], 10.0, cfg)
    out = []
    for k in range(30):
        out += dec.push(p[k : k + 1])
    assert dec.flush() == []
    assert spans(out) == [("a", 2, 0.2, 0.7), ("a", 7, 0.7, 1.2), ("a", 12, 1.2, 1.6)]
    assert out == decode_events(p, ["a"], 10.0, cfg)


def test_push_after_flush_is_refused():
    dec = StreamingDecoder(["a"], 10.0)
    dec.flush()
    with pytest.raises(RuntimeError):
        dec.push(np.zeros((1, 1)))


# --- events_to_frames --------------------------------------------------------------------------


def test_events_to_frames_edges():
    labels = ["a", "b"]
    evs = [
        Event("a", 0.1, 0.2),  # exactly frame 1: touching frames 0 and 2 is not overlapping
        Event("b", 0.15, 0.25),  # overlaps frames 1 and 2
        Event("a", -1.0, 0.05),  # clipped to frame 0
        Event("b", 0.85, 5.0),  # clipped to the last frames
        Event("a", 0.5, 0.5),  # zero length: marks nothing
        Event("a", 3.0, 4.0),  # entirely outside
    ]
    y = events_to_frames(evs, labels, 10, 10.0)
    assert y.dtype == np.float32 and y.shape == (10, 2)
    assert np.flatnonzero(y[:, 0]).tolist() == [0, 1]
    assert np.flatnonzero(y[:, 1]).tolist() == [1, 2, 8, 9]
    # a clip starting later: times are absolute
    y = events_to_frames([Event("a", 10.3, 10.4)], labels, 5, 10.0, start_s=10.0)
    assert np.flatnonzero(y[:, 0]).tolist() == [3]


def test_events_to_frames_user_errors():
    with pytest.raises(UserError, match="'c'.*x.wav|x.wav.*'c'"):
        events_to_frames([Event("c", 0, 1, file="x.wav")], ["a"], 10, 10.0)
    with pytest.raises(UserError, match="before it starts"):
        events_to_frames([Event("a", 1.0, 0.5)], ["a"], 10, 10.0)


def test_round_trip_frames_to_events():
    rng = np.random.default_rng(3)
    labels, fr, start = ["a", "b", "c"], 31.25, 7.0
    for _ in range(30):
        truth = []
        for label in labels:
            t = start + rng.uniform(0, 0.3)
            while True:
                a = round((t - start) * fr) / fr + start  # frame-aligned
                b = a + int(rng.integers(1, 20)) / fr
                if b > start + 8.0:
                    break
                truth.append(Event(label, a, b))
                t = b + rng.uniform(1.5, 3.0) / fr  # at least one empty frame between events
        y = events_to_frames(truth, labels, int(8.0 * fr), fr, start_s=start)
        got = decode_events(y, labels, fr, DecoderConfig(threshold=0.5), start_s=start)
        key = sorted(truth, key=lambda e: (e.start_s, e.label))
        assert [(e.label, round(e.start_s, 6), round(e.end_s, 6)) for e in got] == [
            (e.label, round(e.start_s, 6), round(e.end_s, 6)) for e in key
        ]
        assert all(e.confidence_max == e.confidence_mean == 1.0 for e in got)
