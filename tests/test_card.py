"""The model card's decoder settings and undetectable labels: JSON round trip, cards written
before them still load, clear errors for bad values, and the decoder the card prescribes."""

import dataclasses
import json

import pytest

from edge_runtime.contract.card import LabelDecoder, ModelCard, UndetectableLabel
from edge_runtime.contract.errors import UserError

BASE = dict(name="m", version="1", sha256="0" * 64, sample_rate=16000, window_s=2.0, hop_s=1.0,
            frame_rate_hz=50.0, labels=("bird", "noise"), thresholds=(0.6, 0.3))
DECODER = (LabelDecoder("bird", 0.6, hysteresis=0.3, min_duration_s=0.04, merge_gap_s=0.1),
           LabelDecoder("noise", 0.3, hysteresis=0.0))
UNDETECTABLE = (UndetectableLabel("noise", "best event F1 0.050 on the tuning files is below 0.2",
                                  0.05),)


def tuned_card(**kw) -> ModelCard:
    return ModelCard(**{**BASE, "decoder": DECODER, "undetectable_labels": UNDETECTABLE, **kw})


def test_round_trip_with_decoder_settings():
    card = tuned_card()
    back = ModelCard.from_json(card.to_json())
    assert back == card
    data = json.loads(card.to_json())
    assert data["decoder"][0] == {"label": "bird", "threshold": 0.6, "hysteresis": 0.3,
                                  "min_duration_s": 0.04, "merge_gap_s": 0.1}
    assert data["undetectable_labels"] == [{"label": "noise", "best_f1": 0.05,
                                            "reason": UNDETECTABLE[0].reason}]
    assert card.label_decoders()[0].off_threshold == pytest.approx(0.3)


def test_a_card_written_before_the_decoder_fields_still_loads():
    old = json.loads(ModelCard(**BASE).to_json())
    del old["decoder"], old["undetectable_labels"]
    card = ModelCard.from_json(json.dumps(old))
    assert card.decoder == () and card.undetectable_labels == ()
    # its thresholds with the runtime's old defaults, every label emitted
    assert card.label_decoders() == (LabelDecoder("bird", 0.6, 0.1, 0.0, 0.0),
                                     LabelDecoder("noise", 0.3, 0.1, 0.0, 0.0))
    cfg = card.decoder_config()
    assert (cfg.threshold, cfg.hysteresis, cfg.emit) == ([0.6, 0.3], [0.1, 0.1], [True, True])
    assert card.decoder_config([0.2, 0.3]).hysteresis == [0.1, 0.1]  # absolute, as before


def test_the_decoder_the_card_prescribes():
    card = tuned_card()
    cfg = card.decoder_config(max_duration_s=30.0)
    assert cfg.threshold == [0.6, 0.3] and cfg.hysteresis == [0.3, 0.0]
    assert cfg.min_duration_s == [0.04, 0.0] and cfg.merge_gap_s == [0.1, 0.0]
    assert cfg.max_duration_s == 30.0 and cfg.emit == [True, False]  # noise: undetectable
    assert card.suppressed() == UNDETECTABLE and card.suppressed(True) == ()
    assert card.decoder_config(emit_undetectable=True).emit == [True, True]
    # a value given explicitly replaces the card's for every label
    cfg = card.decoder_config([0.5, 0.5], hysteresis=0.05, merge_gap_s=0.0)
    assert cfg.threshold == [0.5, 0.5] and cfg.hysteresis == [0.05, 0.05]
    assert cfg.merge_gap_s == [0.0, 0.0] and cfg.min_duration_s == [0.04, 0.0]
    # a replaced threshold keeps the tuned off/on ratio (bird: off at half the threshold)
    cfg = card.decoder_config([0.2, 0.3])
    assert cfg.hysteresis == [pytest.approx(0.1), 0.0]


@pytest.mark.parametrize("change, message", [
    ({"decoder": DECODER[::-1]}, "must be the card's labels in order"),
    ({"decoder": DECODER[:1]}, "must be the card's labels in order"),
    ({"thresholds": (0.5, 0.3)}, r"decoder\[bird\].threshold 0.6 differs from thresholds\[0\]"),
    ({"decoder": (dataclasses.replace(DECODER[0], min_duration_s=-0.1), DECODER[1])},
     r"decoder\[bird\].min_duration_s must be a finite number >= 0"),
    ({"decoder": (dataclasses.replace(DECODER[0], hysteresis=float("inf")), DECODER[1])},
     r"decoder\[bird\].hysteresis"),
    ({"decoder": (dataclasses.replace(DECODER[0], merge_gap_s="0.1"), DECODER[1])},
     r"decoder\[bird\].merge_gap_s"),
    ({"undetectable_labels": (UndetectableLabel("frog", "no events"),)}, "'frog' is not one"),
    ({"undetectable_labels": UNDETECTABLE * 2}, "listed twice"),
    ({"undetectable_labels": (UndetectableLabel("noise", " "),)}, "needs a reason"),
    ({"undetectable_labels": (UndetectableLabel("noise", "weak", 1.5),)}, "best_f1 must be in"),
])
def test_bad_decoder_values_are_clear_errors(change, message):
    with pytest.raises(UserError, match=message):
        tuned_card(**change)


@pytest.mark.parametrize("change, message", [
    ({"decoder": {"bird": {}}}, "decoder must be a list, got"),
    ({"decoder": [{"label": "bird", "threshold": 0.6, "hysteresys": 0.1}]},
     r"decoder\[0\]: unknown key 'hysteresys' \(did you mean 'hysteresis'\?\)"),
    ({"decoder": [{"label": "bird", "threshold": "0.6"}]},
     r"decoder\[0\]: threshold must be a number, not the string '0.6'"),
    ({"undetectable_labels": ["noise"]},
     r"undetectable_labels\[0\]: must be a table/object of settings, got 'noise'"),
    ({"undetectable_labels": [{"label": "noise"}]}, r"undetectable_labels\[0\]: lacks reason"),
    ({"labels": "bird"}, "labels must be a list, got 'bird'"),
    ({"labels": ["bird", 3]}, "labels must be a string, got 3"),
    ({"thresholds": [0.6, None]}, "thresholds must be a number, got None"),
    ({"sample_rate": 16000.5}, "sample_rate must be an integer, got 16000.5"),
    ({"frontend": {"kind": "logmel", "n_ffts": 512}},
     r"unknown key 'n_ffts' in \[frontend\] \(did you mean 'n_fft'\?\)"),
    ({"qantization": {}}, r"unknown key 'qantization' \(did you mean 'quantization'\?\)"),
    ({"hop_s": 3.0}, r"invalid model card: need 0 < hop_s \(3.0\) <= window_s \(2.0\)"),
])
def test_malformed_json_fields_are_clear_errors(change, message):
    data = {**json.loads(tuned_card().to_json()), **change}
    with pytest.raises(UserError, match=f"card.json: {message}"):
        ModelCard.from_json(json.dumps(data), "card.json")


def test_a_card_that_lacks_fields_names_them_all():
    data = json.loads(tuned_card().to_json())
    del data["name"], data["labels"]
    with pytest.raises(UserError, match=r"^card.json: model card lacks name, labels$"):
        ModelCard.from_dict(data, "card.json")
    with pytest.raises(UserError, match=r"^card.json: model card must be a table/object"):
        ModelCard.from_json("[1, 2]", "card.json")
