"""`meerkit`: the umbrella command. Each sub-command lives in its own module, named in
COMMANDS as "module:register"; only the chosen command's module is imported, so each extra
(`pip install 'meerkit[server]'`, `[edge]`, `[train]`, ...) runs its own commands without
the others installed, and `meerkit --help` imports none of them.

Global flags (-v/--verbose, -q/--quiet) go before or after the command. Exit status: the
command's; 2 for a usage error or a missing extra; 130 on Ctrl-C; 141 (128 + SIGPIPE, as
coreutils report) when the reader of stdout goes away early, as in `meerkit ... | head`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple

from edge_runtime.contract.command_line import add_global_flags, run_command_line
from edge_runtime.contract.errors import run_handler

Registrar = Callable[[argparse._SubParsersAction], None]


class Command(NamedTuple):
    target: str  # "module:function" that adds the sub-parser (see register() in each module)
    extra: str  # what `pip install 'meerkit[EXTRA]'` makes it run
    help: str  # one line for `meerkit --help`, without importing the module


COMMANDS: dict[str, Command] = {
    "synth": Command("train.data.synth_cli:register", "train",
                     "generate the synthetic benchmark dataset"),
    "data": Command("train.data.cli:register", "train",
                    "validate, import and export datasets"),
    "train": Command("train.cli:register", "train",
                     "pretrain, finetune and evaluate the teacher"),
    "export": Command("export.cli:register", "train,export",
                      "distil, quantize, export and verify edge models"),
    "demo": Command("meerkit.demo:register", "all",
                    "run the whole pipeline end to end"),
    "analyze": Command("edge_runtime.batch_cli:register", "analyze",
                       "detect events in folders of recordings (WAV/FLAC) with a .tflite model"),
    "subscribe": Command("server.cli:register", "server",
                         "store MQTT detections from edge devices in SQLite or PostgreSQL"),
}
_OWN_PACKAGES = {"meerkit", "train", "export", "edge_runtime", "server", "benchmarks"}


class MissingExtra(Exception):
    """A command's third-party dependency is not installed."""


def package_version() -> str:
    """The installed distribution's version; the source tree's when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meerkit")
    except PackageNotFoundError:
        from edge_runtime import __version__

        return __version__


def _missing_extra(name: str, err: ModuleNotFoundError) -> MissingExtra | None:
    """The one-line error for a third-party module the command's extra provides; None for a
    missing module of meerkit itself (a bug, which keeps its traceback)."""
    if (err.name or "").split(".")[0] in _OWN_PACKAGES:
        return None
    extra = COMMANDS[name].extra
    return MissingExtra(f"meerkit {name} needs the [{extra}] extra: "
                        f"pip install 'meerkit[{extra}]' (missing module: {err.name})")


def load_registrar(name: str) -> Registrar:
    module, _, function = COMMANDS[name].target.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except ModuleNotFoundError as err:
        missing = _missing_extra(name, err)
        if missing is None:
            raise
        raise missing from None


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `meerkit` parser. Commands in `load` (default: all, which imports every module)
    get their real sub-parser; the others are listed in --help from COMMANDS alone."""
    parser = argparse.ArgumentParser(
        prog="meerkit",
        description="meerkit: bioacoustic event detection from training cluster to field recorder.",
        epilog="Run `meerkit COMMAND --help` for the options of each command. -v/--verbose and "
               "-q/--quiet also work after COMMAND.",
    )
    parser.add_argument("--version", action="version", version=f"meerkit {package_version()}")
    add_global_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        if load is None or name in load:
            load_registrar(name)(sub)
        else:
            sub.add_parser(name, help=command.help, add_help=False)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command in `argv`: the first word that is not an option (the top-level options
    take no values)."""
    for arg in argv:
        if arg == "--":
            return None
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command handler, turning user mistakes into a one-line error and exit code."""
    return run_handler(handler, args, "meerkit")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name = chosen_command(argv)
    try:
        parser = build_parser({name} if name else ())
    except MissingExtra as err:
        print(err, file=sys.stderr)
        return 2
    try:
        return run_command_line(parser, argv, "meerkit")
    except ModuleNotFoundError as err:  # a handler's lazy import of its extra's library
        missing = _missing_extra(name, err) if name else None
        if missing is None:
            raise
        print(missing, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
