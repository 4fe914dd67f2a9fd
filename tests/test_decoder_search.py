"""export/decoder_search.py: per-label decoder settings chosen for event F1 on constructed
probability tracks (numpy only, no model)."""

import logging

import numpy as np
import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig, Event, decode_events
from edge_runtime.contract.metrics import event_scores
from export import decoder_search
from export.decoder_search import SearchGrid, tune_decoder

FR = 50.0  # frames per second: 1 frame = 20 ms


def event_f1(probs, events, labels, config, iou=0.0):
    predicted = [e for f, x in probs.items() for e in decode_events(x, labels, FR, config, file=f)]
    reference = [e for f, evs in events.items() for e in evs]
    return event_scores(reference, predicted, iou=iou, labels=labels)["per_class"]


def frame_f1_threshold(p, y):
    """What distillation does today: the threshold on 0.02..0.98 maximising frame F1."""
    grid = np.round(np.linspace(0.02, 0.98, 49), 2)
    decided = p[:, None] >= grid[None, :]
    tp = (decided & y[:, None]).sum(0)
    return float(grid[int(np.argmax(2 * tp / (decided.sum(0) + y.sum())))])


def calls_with_traps(n_files=6):
    """'call': calls at 0.9 (frames), each with a 15-frame dip to 0.4 in the middle and a 4-frame
    gap (0.05) near its end, both inside one annotation; between calls 0.1 background, 20-frame
    bumps at 0.5 that are not calls and 1-frame spikes at 0.95. Good settings: threshold above
    0.5, off threshold in (0.1, 0.4] (hysteresis), merge gap >= 4 frames, min duration >= 2
    frames."""
    probs, events = {}, {}
    for k in range(n_files):
        x = np.full(400, 0.1)
        evs = []
        for start in (20, 220):
            x[start : start + 10] = 0.9
            x[start + 10 : start + 25] = 0.4  # dip: needs hysteresis
            x[start + 25 : start + 35] = 0.9
            x[start + 35 : start + 39] = 0.05  # gap: needs a merge gap
            x[start + 39 : start + 45] = 0.9
            evs.append(Event("call", start / FR, (start + 45) / FR, file=f"f{k}"))
        x[120:140] = 0.5  # bump: needs a threshold above 0.5
        x[170] = x[330 + k] = 0.95  # spikes: need a min duration
        probs[f"f{k}"] = x[:, None]
        events[f"f{k}"] = evs
    return probs, events


def test_recovers_a_known_good_setting():
    probs, events = calls_with_traps()
    tuned = tune_decoder(probs, events, ["call"], FR)
    (d,) = tuned.decoders
    assert tuned.scores["call"]["f1"] == 1.0 and not tuned.undetectable
    assert 0.5 < d.threshold <= 0.9 and 0.1 < d.off_threshold <= 0.4
    assert d.merge_gap_s >= 0.08 and 0.04 <= d.min_duration_s <= 0.9
    # Ties go to the simplest decoder, then the middle of the tied thresholds: hysteresis
    # ratio 0.25 leaves the off threshold above 0.4, so 0.5; thresholds 0.55..0.8 tie.
    assert (d.threshold, d.hysteresis, d.min_duration_s, d.merge_gap_s) == (0.65, 0.325, 0.04, 0.1)
    # ... and the settings decode to exactly the annotations
    got = [e for f, x in probs.items() for e in
           decode_events(x, ["call"], FR, tuned.decoder_config(), file=f)]
    assert [(e.file, e.start_s, e.end_s) for e in got] == \
        [(e.file, e.start_s, e.end_s) for evs in events.values() for e in evs]
    # each trap alone breaks the best setting
    for change in ({"hysteresis": 0.0}, {"merge_gap_s": 0.0}, {"min_duration_s": 0.0},
                   {"threshold": 0.5, "hysteresis": 0.25}):
        settings = {"threshold": d.threshold, "hysteresis": d.hysteresis,
                    "merge_gap_s": d.merge_gap_s, "min_duration_s": d.min_duration_s, **change}
        assert event_f1(probs, events, ["call"], DecoderConfig(**settings))["call"]["f1"] < 1.0


def plateau_files(seed=0, n_files=8):
    """'burst': two 1 s annotations per 10 s file where the model says ~0.3, over a long
    low-level plateau at ~0.15: frame F1 is perfect from 0.18 up, so it picks a low threshold,
    and the plateau then holds every event on (off threshold = threshold - 0.1)."""
    rng = np.random.default_rng(seed)
    probs, events = {}, {}
    for k in range(n_files):
        x = 0.15 + 0.01 * rng.standard_normal(500)
        evs = []
        for start in (80 + 10 * k, 300):
            x[start : start + 50] = 0.3 + 0.01 * rng.standard_normal(50)
            evs.append(Event("burst", start / FR, (start + 50) / FR, file=f"f{k}"))
        probs[f"f{k}"] = np.clip(x, 0, 1)[:, None]
        events[f"f{k}"] = evs
    return probs, events


def test_beats_the_frame_f1_threshold_on_a_low_plateau():
    probs, events = plateau_files()
    p = np.concatenate([x[:, 0] for x in probs.values()])
    y = np.concatenate([np.isin(np.arange(500), np.r_[80 + 10 * k : 130 + 10 * k, 300:350])
                        for k in range(len(probs))])
    thr = frame_f1_threshold(p, y)
    assert thr <= 0.2  # the frame view: low
    baseline = event_f1(probs, events, ["burst"], DecoderConfig(threshold=thr))["burst"]["f1"]
    tuned = tune_decoder(probs, events, ["burst"], FR)
    # the reported score is event_scores on decode_events with the chosen settings
    assert tuned.scores["burst"]["f1"] == \
        event_f1(probs, events, ["burst"], tuned.decoder_config())["burst"]["f1"]
    assert tuned.scores["burst"]["f1"] >= 0.9 > baseline + 0.2


def test_classes_without_signal_or_events_are_undetectable():
    probs, events = calls_with_traps(3)
    probs = {f: np.concatenate([x, np.full((len(x), 2), 0.02)], axis=1) for f, x in probs.items()}
    events = {f: evs + [Event("silent", 1.0, 1.5, file=f)] for f, evs in events.items()}
    labels = ["call", "silent", "absent"]
    tuned = tune_decoder(probs, events, labels, FR)
    why = {u.label: u for u in tuned.undetectable}
    assert set(why) == {"silent", "absent"}
    assert why["silent"].best_f1 == 0.0 and "below 0.2" in why["silent"].reason
    assert why["absent"].best_f1 is None and "no events" in why["absent"].reason
    assert [d.label for d in tuned.decoders] == labels  # settings for every label all the same
    config = tuned.decoder_config()
    assert config.emit == [True, False, False]
    assert tuned.decoder_config(emit_undetectable=True).emit == [True, True, True]
    # the floor is configurable
    low = tune_decoder(probs, events, labels, FR, min_f1=0.0)
    assert [u.label for u in low.undetectable] == ["absent"]
    strict = tune_decoder(probs, events, labels, FR, min_f1=1.0)
    assert {u.label for u in strict.undetectable} == {"silent", "absent"}  # call reaches 1.0


def test_deterministic_whatever_the_file_order_or_memory_bound(monkeypatch):
    probs, events = plateau_files(seed=3)
    a = tune_decoder(probs, events, ["burst"], FR)
    shuffled = {f: probs[f] for f in reversed(list(probs))}
    b = tune_decoder(shuffled, dict(reversed(list(events.items()))), ["burst"], FR)
    assert a == b and a.to_dict() == b.to_dict()
    monkeypatch.setattr(decoder_search, "_MAX_CELLS", 5000)  # a few thresholds per pass
    assert tune_decoder(probs, events, ["burst"], FR) == a


@pytest.mark.parametrize("iou", [0.0, 0.3])
def test_the_search_counts_what_event_scores_counts(iou, caplog):
    """Single-setting grids on messy data (overlapping, zero-length and out-of-file annotations,
    files of different lengths): the search's own counts equal event_scores on decode_events
    (tune_decoder warns otherwise)."""
    rng = np.random.default_rng(7)
    labels = ["a", "b"]
    probs, events = {}, {}
    for k in range(5):
        n = int(rng.integers(50, 300))
        x = np.clip(np.cumsum(rng.normal(0, 0.08, (n, 2)), axis=0) % 1.0, 0, 1)
        probs[f"f{k}"] = x
        evs = []
        for _ in range(int(rng.integers(0, 8))):
            s = float(rng.uniform(-0.5, n / FR))
            evs.append(Event(str(rng.choice(labels)), s, s + float(rng.choice([0, 0.05, 0.4, 2])),
                             file=f"f{k}"))
        events[f"f{k}"] = evs
    caplog.set_level(logging.WARNING, logger="export.decoder_search")
    for _ in range(25):
        grid = SearchGrid(thresholds=(float(rng.choice([0.1, 0.3, 0.5, 0.7])),),
                          hysteresis_ratios=(float(rng.choice([0.0, 0.5, 1.0])),),
                          min_durations_s=(float(rng.choice([0.0, 0.03, 0.1])),),
                          merge_gaps_s=(float(rng.choice([0.0, 0.05, 0.3])),))
        tuned = tune_decoder(probs, events, labels, FR, grid=grid, iou=iou, min_f1=0.0)
        want = event_f1(probs, events, labels, tuned.decoder_config(), iou=iou)
        assert {k: tuned.scores[k]["f1"] for k in labels} == {k: want[k]["f1"] for k in labels}
    assert "the search counted" not in caplog.text


@pytest.mark.parametrize("call, message", [
    (lambda: tune_decoder({"f": np.zeros((10, 3))}, {}, ["a", "b"], FR), r"\(frames, 2\)"),
    (lambda: tune_decoder({"f": np.full((10, 1), np.nan)}, {}, ["a"], FR), "finite"),
    (lambda: tune_decoder({}, {}, ["a"], FR), "no files"),
    (lambda: tune_decoder({"f": np.zeros((10, 1))}, {"g": [Event("a", 0, 1)]}, ["a"], FR),
     "none of the files"),
    (lambda: SearchGrid(thresholds=(0.0, 0.5)), "thresholds"),
    (lambda: SearchGrid(min_durations_s=()), "min_durations_s"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(UserError, match=message):
        call()


def short_and_long_calls(n_files=6):
    """'call': per file four long calls (30 frames at 0.9) and one short one (3 frames at 0.9),
    plus two 5-frame false bumps at 0.9 between them. F1 alone prefers a 0.16 s (8-frame)
    minimum duration, which drops the bumps and the short calls; the short calls are 1 in 5
    of the references."""
    probs, events = {}, {}
    for k in range(n_files):
        x = np.full(600, 0.05)
        evs = []
        for start in (20, 120, 220, 320):
            x[start : start + 30] = 0.9
            evs.append(Event("call", start / FR, (start + 30) / FR, file=f"f{k}"))
        x[450:453] = 0.9
        evs.append(Event("call", 450 / FR, 453 / FR, file=f"f{k}"))
        x[400:405] = x[520:525] = 0.9
        probs[f"f{k}"] = x[:, None]
        events[f"f{k}"] = evs
    return probs, events


def test_the_minimum_duration_is_capped_by_the_references_short_calls():
    probs, events = short_and_long_calls()
    free = tune_decoder(probs, events, ["call"], FR)  # no cap unless asked
    assert free.decoders[0].min_duration_s == 0.16  # F1 alone: 24/30 found, no false alarm
    capped = tune_decoder(probs, events, ["call"], FR,
                          duration_quantile=decoder_search.DURATION_QUANTILE)  # 0.06 s
    assert capped.decoders[0].min_duration_s <= 0.06
    assert capped.scores["call"]["recall"] == 1.0  # the short calls survive
    assert capped.scores["call"]["f1"] < free.scores["call"]["f1"]  # at a price, paid knowingly
    # a quantile above every duration allows the whole grid again
    assert tune_decoder(probs, events, ["call"], FR, duration_quantile=1.0) == free
    with pytest.raises(UserError, match="duration_quantile"):
        tune_decoder(probs, events, ["call"], FR, duration_quantile=1.5)
