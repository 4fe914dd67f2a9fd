"""Typed settings: dataclass fields that carry their help, range, choices and unit, one reader
that turns a plain mapping (a TOML file, a JSON card, a checkpoint, command-line flags) into
the dataclass, and the `--section-key` flags generated from the same fields.

    @dataclass
    class MqttConfig:
        port: int = setting(0, help="broker port; 0 = 1883, or 8883 with TLS", min=0, max=65535)

    cfg = from_mapping(RuntimeConfig, toml_dict, "config.toml", Path("config.toml"))

Every mistake is ONE line naming the file (and line), the key and what is allowed, e.g.
`config.toml:12: mqtt.keepalive_s = 70000 is out of range (5..65535)`; an unknown key is
an error with a "did you mean" suggestion, never silently ignored. Stdlib only: the device
imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from edge_runtime.contract.errors import UserError, location

T = TypeVar("T")
_KEY = "setting"


@dataclass(frozen=True)
class Spec:
    """What a field accepts beyond its type. `min`/`max` are inclusive, `gt`/`lt` exclusive;
    on a table or list they apply to every value."""

    help: str = ""
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple[Any, ...] = ()
    unit: str = ""

    def range_text(self) -> str:
        """`1..65535`, `> 0`, `>= 0 and < 1`, or "" when unbounded."""
        low = self.min if self.min is not None else self.gt
        high = self.max if self.max is not None else self.lt
        if self.min is not None and self.max is not None:
            return f"{_num(self.min)}..{_num(self.max)}"
        parts = []
        if low is not None:
            parts.append(f"{'>=' if self.min is not None else '>'} {_num(low)}")
        if high is not None:
            parts.append(f"{'<=' if self.max is not None else '<'} {_num(high)}")
        return " and ".join(parts)

    def problem(self, value: Any) -> str | None:
        """Why `value` (already of the field's type) is not allowed, or None."""
        if self.choices and value not in self.choices:
            return (f"is not one of {', '.join(map(str, self.choices))}"
                    f"{suggest(str(value), map(str, self.choices))}")
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if number and ((self.min is not None and value < self.min)
                       or (self.max is not None and value > self.max)
                       or (self.gt is not None and value <= self.gt)
                       or (self.lt is not None and value >= self.lt)):
            return f"is out of range ({self.range_text()})"
        return None


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def setting(default: Any = MISSING, *, help: str, default_factory: Any = MISSING,  # noqa: A002
            min: float | None = None, max: float | None = None,  # noqa: A002
            gt: float | None = None, lt: float | None = None,
            choices: Iterable[Any] = (), unit: str = "") -> Any:
    """A dataclass field with its help text, range, choices and unit (see `Spec`)."""
    spec = Spec(help, min, max, gt, lt, tuple(choices), unit)
    return field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get(_KEY) or Spec()


def suggest(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or ""."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def flag_name(*keys: str) -> str:
    """`("mqtt", "keepalive_s")` -> `--mqtt-keepalive-s`."""
    return "--" + "-".join(keys).replace("_", "-")


def settable(cls: type) -> list[dataclasses.Field]:
    """The fields a mapping may set (`init=False` fields are computed, not configured)."""
    return [f for f in dataclasses.fields(cls) if f.init]


# ---------------------------------------------------------------- reading a mapping
@dataclass(frozen=True)
class _At:
    """Where a value came from, for messages: the origin (file or thing), the TOML text for
    line numbers, the key path from the root, and whether it came from flags."""

    where: str
    lines: tuple[str, ...] | None
    keys: tuple[str, ...] = ()
    flags: bool = False

    def child(self, key: str) -> _At:
        return dataclasses.replace(self, keys=(*self.keys, key))

    def element(self, index: int) -> _At:
        """A list element starts a new origin (TOML arrays have no header to point at)."""
        return _At(f"{self.prefix()}{self.name()}[{index}]", None, (), self.flags)

    def name(self) -> str:
        return flag_name(*self.keys) if self.flags else ".".join(self.keys)

    def prefix(self, keys: tuple[str, ...] | None = None) -> str:
        if not self.where:
            return ""
        row = _line_of(self.lines, self.keys if keys is None else keys)
        return f"{location(self.where, row)}: "

    def fail(self, problem: str, value: Any = MISSING) -> NoReturn:
        shown = "" if value is MISSING else f" {value!r}" if self.flags else f" = {value!r}"
        raise UserError(f"{self.prefix()}{self.name()}{shown} {problem}")


def _line_of(lines: tuple[str, ...] | None, keys: tuple[str, ...]) -> int | None:
    """The 1-based TOML line of `keys` (a [section] header, `key =`, a dotted key or an
    inline table holding it), or None."""
    if not lines or not keys:
        return None
    header: tuple[str, ...] = ()
    for n, line in enumerate(lines, 1):
        match = re.match(r"\s*\[\s*([^\[\]]+?)\s*\]", line)
        if match:
            header = _split_key(match.group(1))
            if header == keys:
                return n
            continue
        match = re.match(r"\s*([A-Za-z0-9_\-.\"' ]+?)\s*=", line)
        if match:
            full = (*header, *_split_key(match.group(1)))
            if keys[:len(full)] == full:
                return n
    return None


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def from_mapping(cls: type[T], data: Any, where: str, path: str | Path | None = None, *,
                 base: T | None = None, what: str = "", flags: bool = False) -> T:
    """`data` as a `cls` instance, every value converted and checked; a `UserError` naming
    `where` (with the line of `path`, a TOML file) and the key otherwise. Keys not in `data`
    keep `base`'s values (default: the dataclass defaults). `what` names the whole thing in
    messages ("model card lacks ..."). `flags`: values are command-line text (`"8883"`,
    `"yes"`), named by their `--section-key` flag."""
    lines = None
    if path is not None:
        try:
            lines = tuple(Path(path).read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError):
            lines = None
    return _dataclass(cls, data, _At(where, lines, (), flags), base, what)


def _dataclass(cls: type[T], data: Any, at: _At, base: Any, what: str = "") -> T:
    label = what or at.name()
    if not isinstance(data, Mapping):
        raise UserError(f"{at.prefix()}{label + ' ' if label else ''}must be a table/object "
                        f"of settings, got {data!r}"[:300])
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in settable(cls)}
    for key in data:
        if key not in known:
            _unknown(str(key), known, at, hints)
    if base is None:
        missing = [name for name, f in known.items() if name not in data
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UserError(f"{at.prefix()}{label + ' ' if label else ''}lacks "
                            f"{', '.join(missing)}")
    values = {name: getattr(base, name) for name in known} if base is not None else {}
    for key, value in data.items():
        f, sub = known[key], at.child(str(key))
        nested_base = values.get(key) if dataclasses.is_dataclass(hints[key]) else None
        values[key] = _convert(value, hints[key], spec_of(f), sub, nested_base)
    try:
        return cls(**values)
    except UserError as err:  # its own checks (__post_init__): say where the values came from
        raise UserError(f"{at.prefix()}{err}") from None


def _unknown(key: str, known: Mapping[str, Any], at: _At, hints: Mapping[str, Any]) -> NoReturn:
    keys = (*at.keys, key)
    if not at.keys and known and all(dataclasses.is_dataclass(hints[k]) for k in known):
        raise UserError(f"{at.prefix(keys)}unknown section [{key}]{suggest(key, known)}; "
                        f"sections are {', '.join(known)}")
    if at.flags:
        raise UserError(f"unknown option {flag_name(*keys)}")  # pragma: no cover - argparse
    inside = f" in [{at.name()}]" if at.keys else ""
    hint = suggest(key, known) or f"; keys are {', '.join(known)}"
    raise UserError(f"{at.prefix(keys)}unknown key '{key}'{inside}{hint}")


def _convert(value: Any, kind: Any, spec: Spec, at: _At, base: Any = None) -> Any:
    """`value` as `kind`, checked against `spec` (for containers: each element)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    text = at.flags and isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        empty = value is None or (text and value.strip().lower() in ("", "none", "null"))
        if empty and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], spec, at, base)
    if dataclasses.is_dataclass(kind):
        return _dataclass(kind, value, at, base)
    if origin in (tuple, list):
        if text:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            at.fail(f"must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) != len(value):
            at.fail(f"must have {len(args)} values, got {len(value)}", value)
        # list[X] and tuple[X, ...] repeat one type; tuple[X, Y] gives one per position
        same = origin is not tuple or args[-1:] == (Ellipsis,)
        items = [_convert(v, args[0] if same else args[i], spec,
                          at.element(i) if _is_record(args) else at) if args else v
                 for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or kind is dict:
        if not isinstance(value, Mapping):
            at.fail(f"must be a table of key = value, got {value!r}")
        inner = args[1] if args else Any
        return {str(k): _convert(v, inner, spec, at.child(str(k))) for k, v in value.items()}
    if kind is Any or kind is object:
        return value
    converted = _scalar(value, kind, at, text)
    problem = spec.problem(converted)
    if problem:
        at.fail(problem, converted)
    return converted


def _is_record(args: tuple[Any, ...]) -> bool:
    return bool(args) and dataclasses.is_dataclass(args[0])


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _scalar(value: Any, kind: Any, at: _At, text: bool) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        at.fail(f"must be true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            at.fail(f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if isinstance(value, str) and not text:
            at.fail(f"must be a number, not the string {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            at.fail(f"must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not math.isfinite(number):
            at.fail(f"must be a finite number, got {value!r}")
        if kind is float:
            return number
        if text:
            try:
                return int(value)
            except ValueError:
                at.fail(f"must be an integer, got {value!r}")
        if not number.is_integer():
            at.fail(f"must be an integer, got {value!r}")
        return int(value)
    if kind is str:
        if not isinstance(value, str):
            at.fail(f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported setting type {kind!r}")  # pragma: no cover - programming error


# ---------------------------------------------------------------- writing, flags
def to_mapping(obj: Any) -> Any:
    """A dataclass as plain dicts, lists and scalars (JSON/TOML-ready); `init=False` fields
    are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in settable(type(obj))}
    if isinstance(obj, list | tuple):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_mapping(v) for k, v in obj.items()}
    return obj


def help_text(f: dataclasses.Field) -> str:
    """The field's help with its default, range and choices, e.g. `MQTT keepalive
    (default 30 s; 5..65535)`."""
    spec = spec_of(f)
    default = f.default if f.default is not MISSING else (
        f.default_factory() if f.default_factory is not MISSING else None)
    if default is None or default == {}:
        shown = "unset"
    elif isinstance(default, bool):
        shown = str(default).lower()
    elif default == "":
        shown = '""'
    else:
        shown = f"{default}{' ' + spec.unit if spec.unit else ''}"
    extra = [f"default {shown}"]
    if spec.range_text():
        extra.append(spec.range_text())
    if spec.choices:
        extra.append("one of " + ", ".join(map(str, spec.choices)))
    return f"{spec.help} ({'; '.join(extra)})".replace("%", "%%").strip()


def add_flags(parser: argparse.ArgumentParser, sections: Mapping[str, type],
              aliases: Mapping[tuple[str, str], tuple[str, ...]] | None = None) -> None:
    """One `--section-key` flag per field of each section's dataclass, in an argument group
    per section; dest `section__key`, default None (= not given: the file's value stays).
    Tables (`dict`) take repeatable LABEL=VALUE; booleans get `--no-...` too."""
    aliases = aliases or {}
    for section, cls in sections.items():
        group = parser.add_argument_group(f"[{section}]")
        hints = typing.get_type_hints(cls)
        for f in settable(cls):
            names = (flag_name(section, f.name), *aliases.get((section, f.name), ()))
            kind, dest, text = hints[f.name], f"{section}__{f.name}", help_text(f)
            if kind is bool:
                group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=None, help=text)
            elif typing.get_origin(kind) is dict:
                group.add_argument(*names, dest=dest, action="append", default=None,
                                   metavar="LABEL=VALUE", help=f"{text}; repeatable")
            else:
                group.add_argument(*names, dest=dest, default=None, metavar=f.name.upper(),
                                   help=text)


def flag_values(args: argparse.Namespace, sections: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The values given as flags made by `add_flags`, as {section: {key: text}}; repeated
    LABEL=VALUE flags become one table."""
    sections = set(sections)
    out: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        section, sep, key = dest.partition("__")
        if not sep or section not in sections or value is None:
            continue
        if isinstance(value, list):
            table = {}
            for item in value:
                label, eq, number = item.partition("=")
                if not eq:
                    raise UserError(f"{flag_name(section, key)} {item!r}: expected LABEL=VALUE")
                table[label.strip()] = number.strip()
            value = table
        out.setdefault(section, {})[key] = value
    return out
