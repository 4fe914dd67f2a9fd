"""The student checkpoint carries the tuned decoder settings and undetectable labels into the
model card; checkpoints saved before them (thresholds only) still load."""

import dataclasses

import pytest
import torch

from edge_runtime.contract.card import LabelDecoder, UndetectableLabel
from edge_runtime.contract.errors import UserError
from export.source import load_source
from export.student import StudentConfig, StudentSpec, default_frontend, load_student, save_student

LABELS = ("bird", "noise")
DECODER = (LabelDecoder("bird", 0.55, 0.275, 0.04, 0.1), LabelDecoder("noise", 0.9, 0.0))
UNDETECTABLE = (UndetectableLabel("noise", "no events in the tuning files"),)


def spec(**kw) -> StudentSpec:
    tiny = StudentConfig(channels=8, kernel=3, dilations=(1,))
    return StudentSpec("tiny", tiny, default_frontend(16000), 16000, 1.0, 0.5, LABELS,
                       (0.5, 0.5), **kw)


def test_spec_round_trips_with_decoder_settings_and_old_specs_still_load():
    tuned = dataclasses.replace(spec(), thresholds=(0.55, 0.9), decoder=DECODER,
                                undetectable_labels=UNDETECTABLE)
    assert StudentSpec.from_dict(tuned.to_dict()) == tuned
    old = spec().to_dict()
    del old["decoder"], old["undetectable_labels"]
    loaded = StudentSpec.from_dict(old)
    assert loaded == spec() and loaded.decoder == () and loaded.undetectable_labels == ()


@pytest.mark.parametrize("kw, message", [
    ({"decoder": DECODER}, "same thresholds"),  # spec thresholds are (0.5, 0.5)
    ({"thresholds": (0.55, 0.9), "decoder": DECODER[::-1]}, "follow the labels in order"),
    ({"undetectable_labels": (UndetectableLabel("frog", "no events"),)}, "not labels"),
])
def test_inconsistent_specs_are_refused(kw, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(spec(), **kw)


def test_checkpoint_settings_reach_the_model_card(tmp_path):
    tuned = dataclasses.replace(spec(), thresholds=(0.55, 0.9), decoder=DECODER,
                                undetectable_labels=UNDETECTABLE)
    torch.manual_seed(0)
    save_student(tmp_path / "s.pt", tuned.build(), tuned, {"teacher": "t"})
    _, loaded, _ = load_student(tmp_path / "s.pt")
    assert loaded == tuned
    card = load_source(tmp_path / "s.pt").card
    assert card.thresholds == (0.55, 0.9) and card.decoder == DECODER
    assert card.undetectable_labels == UNDETECTABLE
    # a checkpoint from before the decoder search: thresholds only
    save_student(tmp_path / "old.pt", spec().build(), spec(), {"teacher": "t"})
    record = torch.load(tmp_path / "old.pt", weights_only=True)
    del record["spec"]["decoder"], record["spec"]["undetectable_labels"]
    torch.save(record, tmp_path / "old.pt")
    card = load_source(tmp_path / "old.pt").card
    assert card.thresholds == (0.5, 0.5) and card.decoder == () and card.undetectable_labels == ()
