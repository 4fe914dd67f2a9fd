"""What the command lines built from `register(subparsers)` modules share (`meerkit`,
`python -m train`, `python -m export`): the global flags, accepted before or after the
sub-command; logging, with the libraries underneath quiet unless -v; and dispatch to the
chosen handler with one-line errors and a quiet end when stdout's reader goes away."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from edge_runtime.contract.errors import quiet_broken_pipe, run_handler

log = logging.getLogger(__name__)

# Python loggers of libraries some commands pull in, and the level they get unless -v: their
# INFO/WARNING chatter (TensorFlow/absl start-up, matplotlib's font cache, paho's connects)
# says nothing a user can act on.
NOISY_LOGGERS = {"absl": logging.ERROR, "tensorflow": logging.ERROR, "h5py": logging.ERROR,
                 "matplotlib": logging.ERROR, "PIL": logging.WARNING, "onnx2tf": logging.ERROR,
                 "onnxscript": logging.WARNING, "onnxruntime": logging.WARNING,
                 "torch.onnx": logging.WARNING, "paho": logging.WARNING,
                 "fsspec": logging.WARNING, "filelock": logging.WARNING}
# TensorFlow's C++ logs (oneDNN, cuDNN/cuFFT factory registration, CPU feature lines): kept
# to errors unless -v. Set before TensorFlow is imported (every command imports it lazily, in
# its handler) and inherited by the onnx2tf subprocess. A value the user set wins.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}


def add_global_flags(parser: argparse.ArgumentParser, *, inherited: bool = False) -> None:
    """-v/--verbose and -q/--quiet. On sub-parsers (`inherited`) they default to SUPPRESS so
    a flag given before the sub-command is not reset by the sub-parser's default."""
    default = argparse.SUPPRESS if inherited else False
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", default=default,
                       help="debug logging, including the libraries underneath "
                            "(TensorFlow, onnx2tf, matplotlib, paho)")
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="warnings and errors only")


def add_global_flags_everywhere(parser: argparse.ArgumentParser) -> None:
    """Give every sub-parser below `parser` (any depth) the global flags, so `meerkit train
    pretrain ... -v` works like `meerkit -v train pretrain ...`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(p): p for p in action.choices.values()}.values():  # aliases
                if not {"-v", "--verbose", "-q", "--quiet"} & child._option_string_actions.keys():
                    add_global_flags(child, inherited=True)
                add_global_flags_everywhere(child)


def subcommand_parser(prog: str,
                      register: Callable[[argparse._SubParsersAction], None]
                      ) -> argparse.ArgumentParser:
    """The parser `register` adds, on its own (`python -m train` parses what `meerkit train`
    would): its prog reads "<prog> <command>"."""
    sub = argparse.ArgumentParser(prog=prog).add_subparsers()
    register(sub)
    (parser,) = set(sub.choices.values())
    add_global_flags(parser)
    return parser


def log_to_stderr(level: int) -> None:
    # force=True, as edge-runtime does: one handler on the current stderr, whatever ran before.
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr at INFO (DEBUG with -v, WARNING with -q); quiet the libraries
    underneath unless -v."""
    log_to_stderr(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if verbose:
        return
    for name, noisy_level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(noisy_level)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def run_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                     prog: str) -> int:
    """Parse `argv` with `parser` (whose leaves set `func`), set up logging and run the
    handler: its exit code; 2 with the help when no command was given; 141 when stdout's
    reader closed the pipe early (`| head`)."""
    add_global_flags_everywhere(parser)
    with quiet_broken_pipe():
        log_to_stderr(logging.INFO)  # parsing may warn already (a deprecated flag spelling)
        args = parser.parse_args(argv)
        setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return run_handler(args.func, args, prog)


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: does what the new flag does, hidden from --help, and logs
    "--old is deprecated; use --new" each time it is used."""

    def __init__(self, option_strings: list[str], dest: str, new: argparse.Action,
                 **kwargs: Any):
        kwargs.update(nargs=new.nargs, type=new.type, metavar=new.metavar,
                      default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        log.warning("%s is deprecated; use %s", option_string, self.new.option_strings[0])
        self.new(parser, namespace, values, option_string)


def add_deprecated(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str,
                   new: argparse.Action) -> None:
    parser.add_argument(old, action=DeprecatedAlias, dest=new.dest, new=new)
