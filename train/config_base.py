"""The plumbing every training config shares: a plain-dict round trip (checkpoints carry their
configs as dicts, never pickles) and one-line `UserError`s for bad values, with a suggestion
for a mistyped choice."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, TypeVar

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.settings import from_mapping

C = TypeVar("C", bound="ConfigBase")


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"{what} '{value}' is not one of {', '.join(choices)}{hint}")


class ConfigBase:
    """`to_dict` / `from_dict` for the dataclasses below. `from_dict` converts each value to
    its field's type (JSON lists to tuples, nested heads to their config) and rejects unknown
    keys and wrong types with a one-line `UserError` (`edge_runtime.contract.settings`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
        return from_mapping(cls, data, where or cls.__name__)
