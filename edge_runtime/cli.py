"""`edge-runtime`: the field-recorder entry point.

The streaming loop, MQTT publisher and outbox arrive with the edge-runtime issue; until then
this entry point only reports its version so the console script is installed and testable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from edge_runtime import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Stream audio, detect bioacoustic events with a TFLite model, publish them over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("edge-runtime: streaming detection is not implemented yet (see the edge_runtime issue).",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
