"""`meerkit analyze`: the command line of batch detection (`edge_runtime.batch` does the work).

Flags share `edge-runtime`'s names for the same settings (`--model-thresholds`,
`--model-hysteresis`, `--model-min-duration-s`, `--model-merge-gap-s`, `--emit-undetectable`,
`--audio-channel`). The old spellings (`--threshold`, `--hysteresis`, `--min-duration`,
`--merge-gap`, `--channel`) still work for one release: hidden from --help, with a warning.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

log = logging.getLogger("edge_runtime.batch")

EPILOG = """\
examples:
  meerkit analyze /media/SDCARD --model student_int8.tflite --out results
  meerkit analyze card1/ card2/ --recursive --model m.tflite --out results --workers 4
  meerkit analyze card/ --model m.tflite --out results --model-thresholds 0.7 \\
      --model-thresholds call=0.4                 # 0.7 for every label, 0.4 for 'call'

Writes one Raven selection table per audio file (<name>.Table.1.selections.txt, mirroring the
input folders), events.csv (+ events.parquet with pyarrow) and manifest.jsonl. Rerunning skips
files already analysed with the same model and settings (unless --force) and retries failed
ones. AudioMoth names (20250601_053000.WAV, UTC) fill the start_utc column.

exit status: 0 every file analysed (a truncated WAV is analysed up to its end and reported as
a warning), 1 some files failed (listed at the end; the rest are done), 2 usage error.
"""


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


def threshold_value(text: str) -> tuple[str, float]:
    """"X" (every label) or "LABEL=X" -> (label or "", X)."""
    label, sep, number = text.rpartition("=")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected X or LABEL=X with X a number "
                                         "in [0, 1]") from None
    if sep and not label.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: the label before '=' is empty")
    return label.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze", help="detect events in folders of recordings (WAV/FLAC) with a .tflite model",
        description="Batch detection over recorder SD cards: resumable, parallel over files.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders")
    p.add_argument("--model", required=True, metavar="ARTIFACT",
                   help=".tflite with a model card (e.g. from `meerkit export quantize`)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumable)")
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes, one interpreter thread each (default: one per CPU core; "
                        "use 1 on a recorder that is also listening)")
    d = p.add_argument_group("decoder (default: the model card's settings, per label)")
    add_deprecated(d, "--threshold", d.add_argument(
        "--model-thresholds", dest="thresholds", action="append", type=threshold_value,
        default=[], metavar="[LABEL=]X",
        help="detection threshold in [0, 1]: X for every label, LABEL=X for one (wins over "
             "X for that label); repeatable"))
    add_deprecated(d, "--hysteresis", d.add_argument(
        "--model-hysteresis", dest="hysteresis", type=float, metavar="X",
        help="an event stays on while p >= threshold - X, every label (default: the card's "
             "per label, 0.1 on older cards)"))
    add_deprecated(d, "--min-duration", d.add_argument(
        "--model-min-duration-s", dest="min_duration_s", type=float, metavar="S",
        help="drop events shorter than S seconds, every label (default: the card's per "
             "label, 0 on older cards)"))
    add_deprecated(d, "--merge-gap", d.add_argument(
        "--model-merge-gap-s", dest="merge_gap_s", type=float, metavar="S",
        help="merge same-label events at most S seconds apart, every label (default: the "
             "card's per label, 0 on older cards)"))
    d.add_argument("--emit-undetectable", action="store_true",
                   help="also report the labels the model card marks undetectable (not "
                        "reported by default)")
    add_deprecated(p, "--channel", p.add_argument(
        "--audio-channel", dest="channel", default="mix", metavar="mix|N",
        help="mix all channels, or keep channel N (0-based) (default: %(default)s)"))
    p.add_argument("--recursive", "-r", action="store_true", help="search subfolders too")
    p.add_argument("--force", action="store_true",
                   help="analyse every file again, even those the manifest says are done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from edge_runtime.batch import AnalyzeConfig, analyze
    from edge_runtime.batch_outputs import format_summary

    every = [value for label, value in args.thresholds if not label]
    cfg = AnalyzeConfig(model=args.model, out=args.out, workers=args.workers,
                        threshold=every[-1] if every else None,
                        thresholds={label: v for label, v in args.thresholds if label},
                        hysteresis=args.hysteresis, min_duration_s=args.min_duration_s,
                        merge_gap_s=args.merge_gap_s, emit_undetectable=args.emit_undetectable,
                        channel=args.channel, recursive=args.recursive, force=args.force,
                        progress=not args.no_progress)
    summary = analyze(args.paths, cfg)
    print(format_summary(summary), file=sys.stdout if summary.ok else sys.stderr)
    return 0 if summary.ok else 1
