"""edge_runtime.contract.settings: declared help/range/choices, one reader for mappings with
one-line errors (key, value, what is allowed, the TOML line), flags generated from the fields."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.settings import (
    add_flags,
    flag_values,
    from_mapping,
    help_text,
    setting,
    to_mapping,
)

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")


@dataclass(frozen=True)
class Head:
    name: str
    weight: float = setting(1.0, help="loss weight", min=0)

    def __post_init__(self) -> None:
        if self.name == "bad":
            raise UserError("head 'bad' is reserved")


@dataclass
class Link:
    host: str = setting("localhost", help="broker host")
    port: int = setting(0, help="broker port", min=0, max=65535)
    keepalive_s: int = setting(30, help="keepalive", min=5, max=65535, unit="s")
    ratio: float = setting(0.5, help="a share", gt=0, lt=1)
    level: str = setting("info", help="log level", choices=("debug", "info", "error"))
    tls: bool = setting(False, help="use TLS")
    timeout_s: float | None = setting(None, help="give up after", min=0, unit="s")
    weights: dict[str, float] = setting(help="per label", default_factory=dict, min=0, max=1)
    layers: tuple[tuple[int, int], ...] = ((1, 2),)
    heads: tuple[Head, ...] = ()


@dataclass
class Root:
    link: Link = field(default_factory=Link)
    other: Link = field(default_factory=Link)


def load(tmp_path, text: str) -> Root:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return from_mapping(Root, tomllib.loads(text), "c.toml", path)


def test_values_are_converted_to_their_types(tmp_path):
    cfg = load(tmp_path, '[link]\nport = 1883\nratio = 1e-1\ntimeout_s = 2\n'
                         'layers = [[3, 4], [5, 6]]\nheads = [{name = "a"}, {name = "b", '
                         'weight = 2}]\n[link.weights]\nbird = 1\n')
    link = cfg.link
    assert link.port == 1883 and link.ratio == 0.1 and link.timeout_s == 2.0
    assert isinstance(link.timeout_s, float) and link.weights == {"bird": 1.0}
    assert link.layers == ((3, 4), (5, 6)) and link.heads == (Head("a"), Head("b", 2.0))
    assert cfg.other == Link()
    assert from_mapping(Root, to_mapping(cfg), "again") == cfg


@pytest.mark.parametrize("text, message", [
    ("[link]\nport = 70000\n", r"^c\.toml:2: link\.port = 70000 is out of range \(0\.\.65535\)$"),
    ("[link]\n\nkeepalive_s = 1\n",
     r"^c\.toml:3: link\.keepalive_s = 1 is out of range \(5\.\.65535\)$"),
    ("[link]\nratio = 1\n", r"link\.ratio = 1\.0 is out of range \(> 0 and < 1\)$"),
    ("[link]\nratio = 0\n", r"link\.ratio = 0\.0 is out of range \(> 0 and < 1\)$"),
    ("[link]\ntimeout_s = -1\n", r"link\.timeout_s = -1\.0 is out of range \(>= 0\)$"),
    ('[link]\nlevel = "infos"\n',
     r"^c\.toml:2: link\.level = 'infos' is not one of debug, info, error "
     r"\(did you mean 'info'\?\)$"),
    ('[link]\nport = "80"\n', r"link\.port must be a number, not the string '80'$"),
    ("[link]\nport = 80.5\n", r"link\.port must be an integer, got 80\.5$"),
    ("[link]\nport = true\n", r"link\.port must be an integer, got True$"),
    ("[link]\ntls = 1\n", r"link\.tls must be true or false, got 1$"),
    ("[link]\nhost = 3\n", r"link\.host must be a string, got 3$"),
    ("[link]\nratio = nan\n", r"link\.ratio must be a finite number, got nan$"),
    ("[link]\nlayers = [[1, 2, 3]]\n", r"^c\.toml:2: link\.layers = \[1, 2, 3\] must have 2 values, got 3$"),
    ("[link]\nlayers = 5\n", r"link\.layers must be a list, got 5$"),
    ("[link.weights]\nbird = 2\n",
     r"^c\.toml:2: link\.weights\.bird = 2\.0 is out of range \(0\.\.1\)$"),
    ("[link]\nweights = {bird = -1}\n", r"^c\.toml:2: link\.weights\.bird = -1\.0 is out"),
    ("link.port = -1\n", r"^c\.toml:1: link\.port = -1 is out of range"),
    ("[link]\nweights = 3\n", r"link\.weights must be a table of key = value, got 3$"),
    ("[link]\nhots = 1\n",
     r"^c\.toml:2: unknown key 'hots' in \[link\] \(did you mean 'host'\?\)$"),
    ("[link]\nzzz = 1\n", r"unknown key 'zzz' in \[link\]; keys are host, port, keepalive_s"),
    ("[lnk]\n", r"^c\.toml:1: unknown section \[lnk\] \(did you mean 'link'\?\); "
                r"sections are link, other$"),
    ("link = 5\n", r"^c\.toml:1: link must be a table/object of settings, got 5$"),
    ('[link]\nheads = [{name = "a", wieght = 1}]\n',
     r"^c\.toml:2: link\.heads\[0\]: unknown key 'wieght' \(did you mean 'weight'\?\)$"),
    ("[link]\nheads = [{weight = 1}]\n", r"^c\.toml:2: link\.heads\[0\]: lacks name$"),
    ('[link]\nheads = [{name = "a", weight = -1}]\n',
     r"^c\.toml:2: link\.heads\[0\]: weight = -1\.0 is out of range \(>= 0\)$"),
    ('[link]\nheads = [{name = "bad"}]\n', r"^c\.toml:2: link\.heads\[0\]: head 'bad' is reserved$"),
])
def test_every_mistake_is_one_line_naming_key_value_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load(tmp_path, text)


def test_without_a_file_there_is_no_line_and_what_names_the_whole():
    with pytest.raises(UserError, match=r"^card\.json: the head lacks name$"):
        from_mapping(Head, {}, "card.json", what="the head")
    with pytest.raises(UserError, match=r"^card\.json: link\.port = -1 is out of range"):
        from_mapping(Root, {"link": {"port": -1}}, "card.json")


def test_base_keeps_what_the_mapping_does_not_set():
    base = from_mapping(Root, {"link": {"port": 1, "weights": {"a": 0.5}}}, "file")
    merged = from_mapping(Root, {"link": {"host": "b", "weights": {"c": 0.1}}}, "", base=base)
    assert merged.link.port == 1 and merged.link.host == "b"
    assert merged.link.weights == {"c": 0.1}  # a table is replaced, not merged
    assert base.link.host == "localhost"  # the base itself is not changed


def parser_for(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, {"link": Link}, {("link", "port"): ("--port",)})
    return parser.parse_args(list(argv))


def test_flags_are_generated_with_help_and_take_text():
    args = parser_for("--link-port", "8883", "--link-tls", "--link-timeout-s", "none",
                      "--link-weights", "a=0.5", "--link-weights", "b=1", "--link-layers", "")
    given = flag_values(args, ["link"])
    assert given == {"link": {"port": "8883", "tls": True, "timeout_s": "none",
                              "weights": {"a": "0.5", "b": "1"}, "layers": ""}}
    cfg = from_mapping(Root, given, "", base=Root(), flags=True)
    assert cfg.link.port == 8883 and cfg.link.tls is True and cfg.link.timeout_s is None
    assert cfg.link.weights == {"a": 0.5, "b": 1.0} and cfg.link.layers == ()
    assert parser_for("--port", "1").link__port == "1"


@pytest.mark.parametrize("argv, message", [
    (["--link-port", "eighty"], r"^--link-port must be an integer, got 'eighty'$"),
    (["--link-port", "70000"], r"^--link-port 70000 is out of range \(0\.\.65535\)$"),
    (["--link-level", "loud"], r"^--link-level 'loud' is not one of debug, info, error$"),
    (["--link-weights", "a=2"], r"^--link-weights-a 2\.0 is out of range \(0\.\.1\)$"),
    (["--link-weights", "a"], r"^--link-weights 'a': expected LABEL=VALUE$"),
])
def test_bad_flag_values_name_the_flag(argv, message):
    with pytest.raises(UserError, match=message):
        from_mapping(Root, flag_values(parser_for(*argv), ["link"]), "", base=Root(), flags=True)


def test_help_text_shows_default_unit_range_and_choices():
    from dataclasses import fields

    helps = {f.name: help_text(f) for f in fields(Link)}
    assert helps["keepalive_s"] == "keepalive (default 30 s; 5..65535)"
    assert helps["ratio"] == "a share (default 0.5; > 0 and < 1)"
    assert helps["level"] == "log level (default info; one of debug, info, error)"
    assert helps["timeout_s"] == "give up after (default unset; >= 0)"
    assert helps["host"] == "broker host (default localhost)"
    assert helps["tls"] == "use TLS (default false)"


def test_a_list_setting_holds_any_number_of_values():
    from dataclasses import dataclass

    from edge_runtime.contract.settings import from_mapping, setting

    @dataclass
    class Labels:
        allow: list[str] = setting(default_factory=list, help="labels to report")
        pair: tuple[int, str] = setting(default=(1, "a"), help="a fixed pair")

    got = from_mapping(Labels, {"allow": ["a", "b", "c"], "pair": [2, "b"]}, "labels")
    assert got.allow == ["a", "b", "c"] and got.pair == (2, "b")
