"""`meerkit`: the umbrella command. Each sub-command lives in its own module and registers
itself here with `register(subparsers)`; handlers return an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from edge_runtime.contract.errors import UserError

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    # Imported lazily so `meerkit --help` stays fast and a missing optional extra
    # (torch, tensorflow) only matters for the command that needs it.
    from export import cli as export_cli
    from meerkit import apps_cli, demo
    from train import cli as train_cli
    from train.data import cli as data_cli
    from train.data import synth_cli

    return [synth_cli.register, data_cli.register, train_cli.register, export_cli.register,
            demo.register, apps_cli.register]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meerkit",
        description="meerkit: bioacoustic event detection from training cluster to field recorder.",
        epilog="Run `meerkit COMMAND --help` for the options of each command.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Call a command handler, turning user mistakes into a one-line error and exit code."""
    try:
        return int(handler(args) or 0)
    except UserError as err:
        print(f"meerkit: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("meerkit: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
