"""Which labels a site reports: a per-site allow list and deny list over the card's labels.

    [labels]
    allow = ["owl", "nightjar"]   # only these (omit or leave empty: every label)
    deny = ["engine"]             # never these

A name that is not one of the model card's labels is a mistake (a typo would otherwise
silence or flood a site without a word): one line naming the key, the name and the closest
card label. Names match exactly, as the card spells them; the suggestion also catches case.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edge_runtime.contract.errors import UserError

CONFIG_KEYS = ("allow", "deny")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'Owl'?)` for the closest of `choices` (case-insensitive), or ""."""
    by_lower: dict[str, str] = {}
    for choice in choices:
        by_lower.setdefault(choice.lower(), choice)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


class LabelFilter:
    """`keep(label)`: report this label at this site?"""

    def __init__(self, card_labels: Sequence[str], allow: Iterable[str] | None = None,
                 deny: Iterable[str] | None = None, where: str = "labels") -> None:
        self.card_labels = tuple(card_labels)
        self.allow = self._checked(allow, f"{where}.allow")
        self.deny = self._checked(deny, f"{where}.deny")
        both = [label for label in self.allow if label in self.deny]
        if both:
            raise UserError(f"{where}: '{both[0]}' is in both {where}.allow and {where}.deny")
        kept = [label for label in self.card_labels if self._keeps(label)]
        if not kept:
            raise UserError(f"{where}: allow/deny leave no label of the model to report")
        self.kept = tuple(kept)

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, card_labels: Sequence[str],
                    where: str = "labels") -> LabelFilter:
        """From the `[labels]` table (None or empty: every label)."""
        section = dict(section or {})
        unknown = sorted(set(section) - set(CONFIG_KEYS))
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: unknown key"
                            f"{did_you_mean(unknown[0], CONFIG_KEYS)}; known: allow, deny")
        return cls(card_labels, section.get("allow"), section.get("deny"), where)

    def _checked(self, names: Iterable[str] | None, key: str) -> frozenset[str]:
        if names is None:
            return frozenset()
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise UserError(f"{key}: expected a list of labels, e.g. [\"owl\", \"nightjar\"]")
        known = set(self.card_labels)
        for name in names:
            if not isinstance(name, str):
                raise UserError(f"{key}: {name!r} is not a label name (a string)")
            if name not in known:
                raise UserError(f"{key}: '{name}' is not a label of the model"
                                f"{did_you_mean(name, self.card_labels)}; labels: "
                                f"{', '.join(self.card_labels)}")
        return frozenset(names)

    def _keeps(self, label: str) -> bool:
        return (not self.allow or label in self.allow) and label not in self.deny

    def keep(self, label: str) -> bool:
        """Whether detections of `label` are reported at this site."""
        return self._keeps(label)

    @property
    def filters(self) -> bool:
        """Whether anything is filtered out at all."""
        return len(self.kept) < len(self.card_labels)

    def describe(self) -> dict[str, Any]:
        """For the stats message and the startup log."""
        return {"allow": sorted(self.allow), "deny": sorted(self.deny), "reported": list(self.kept),
                "suppressed": [lb for lb in self.card_labels if lb not in self.kept]}
