"""Per-site allow/deny lists of labels, checked against the model card's labels."""

from __future__ import annotations

import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.label_filter import LabelFilter, did_you_mean

CARD = ("owl", "nightjar", "frog", "engine", "Siren")


def test_no_lists_keep_everything():
    f = LabelFilter.from_config(None, CARD)
    assert all(f.keep(label) for label in CARD) and not f.filters
    assert f.describe()["suppressed"] == []


def test_allow_list_keeps_only_those():
    f = LabelFilter.from_config({"allow": ["owl", "nightjar"]}, CARD)
    assert [label for label in CARD if f.keep(label)] == ["owl", "nightjar"]
    assert f.kept == ("owl", "nightjar") and f.filters


def test_deny_list_drops_those():
    f = LabelFilter.from_config({"deny": ["engine", "Siren"]}, CARD)
    assert [label for label in CARD if f.keep(label)] == ["owl", "nightjar", "frog"]
    assert f.describe() == {"allow": [], "deny": ["Siren", "engine"],
                            "reported": ["owl", "nightjar", "frog"],
                            "suppressed": ["engine", "Siren"]}


def test_allow_and_deny_together():
    f = LabelFilter.from_config({"allow": ["owl", "frog"], "deny": ["engine"]}, CARD)
    assert f.kept == ("owl", "frog")
    assert LabelFilter.from_config({"allow": [], "deny": []}, CARD).kept == CARD


@pytest.mark.parametrize("section, message", [
    ({"allow": ["nightjr"]},
     "labels.allow: 'nightjr' is not a label of the model (did you mean 'nightjar'?)"),
    ({"deny": ["siren"]},
     "labels.deny: 'siren' is not a label of the model (did you mean 'Siren'?)"),
    ({"deny": ["zebra"]}, "labels.deny: 'zebra' is not a label of the model; labels: owl, "),
    ({"allow": ["owl"], "deny": ["owl"]}, "'owl' is in both labels.allow and labels.deny"),
    ({"allow": "owl"}, "labels.allow: expected a list of labels"),
    ({"allow": [3]}, "labels.allow: 3 is not a label name"),
    ({"alow": ["owl"]}, "labels.alow: unknown key (did you mean 'allow'?)"),
    ({"deny": list(CARD)}, "leave no label of the model to report"),
])
def test_mistakes_are_one_line_errors(section, message):
    with pytest.raises(UserError) as err:
        LabelFilter.from_config(section, CARD)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_site_key_in_messages():
    with pytest.raises(UserError, match=r"sites.north.labels.allow: 'owls'"):
        LabelFilter.from_config({"allow": ["owls"]}, CARD, where="sites.north.labels")


def test_did_you_mean():
    assert did_you_mean("OWL", CARD) == " (did you mean 'owl'?)"
    assert did_you_mean("xyzzy", CARD) == ""
