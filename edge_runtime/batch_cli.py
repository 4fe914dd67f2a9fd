"""`meerkit analyze`: the command line of batch detection (`edge_runtime.batch` does the work).

Flags share `edge-runtime`'s names for the same settings (`--model-thresholds`,
`--model-hysteresis`, `--model-min-duration-s`, `--model-merge-gap-s`, `--model-hop-s`,
`--emit-undetectable`, `--audio-channel`, `--audio-start-time`, `--clips-pre-s`,
`--clips-post-s`), and BirdNET-Analyzer's where users know those (`--rtype`, `--overlap`). The
old spellings (`--threshold`, `--hysteresis`, `--min-duration`, `--merge-gap`, `--channel`)
still work for one release: hidden from --help, with a warning. Folders are searched
recursively (`--no-recursive` opts out; `--recursive`/`-r` is accepted and does nothing).
"""

from __future__ import annotations

import argparse
import logging
import sys

from edge_runtime.batch_clips import CLIP_FORMATS
from edge_runtime.contract.command_line import add_deprecated
from edge_runtime.output_formats import RTYPES

log = logging.getLogger("edge_runtime.batch")

EPILOG = """\
examples:
  meerkit analyze /media/SDCARD --model student_int8.tflite --out results
  meerkit analyze card1/ card2/ --model m.tflite --out results --workers 4 \\
      --rtype raven-combined,csv,kaleidoscope --timezone Europe/Berlin
  meerkit analyze card/ --model m.tflite --out results --model-thresholds 0.7 \\
      --model-thresholds call=0.4                 # 0.7 for every label, 0.4 for 'call'
  meerkit analyze card/ --model m.tflite --out results --clips results/clips --overlap 0.5

Writes the --rtype outputs (default: one Raven selection table per audio file,
<name>.Table.1.selections.txt mirroring the input folders, and events.csv; --rtype
...,parquet adds events.parquet, with pyarrow) and manifest.jsonl. Rerunning skips files
already analysed with the same model and settings (unless --force) and retries failed ones;
other --rtype values rewrite the tables without analysing again. Start times (start_utc, and
time_source saying where they came from): the recorder's header (AudioMoth comment, GUANO),
else the file name (20250601_053000.WAV, UTC unless --timezone), else --audio-start-time;
files with none get an empty start_utc and a warning.

exit status: 0 every file analysed (a truncated WAV is analysed up to its end and reported as
a warning), 1 some files failed (listed at the end; the rest are done), 2 usage error.
"""


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
    d.add_argument("--overlap", dest="overlap_s", type=float, metavar="S",
                   help="overlap of consecutive windows in seconds, as in BirdNET-Analyzer: "
                        "the hop is the window minus S (default: the card's hop)")
    d.add_argument("--model-hop-s", dest="hop_s", type=float, metavar="S",
                   help="window hop in seconds, edge-runtime's name (window - --overlap); "
                        "0 = the card's")
    d.add_argument("--model-lookahead-s", dest="lookahead_s", type=float, metavar="S",
                   help="right context each frame gets (edge-runtime's option; give the same "
                        "value to reproduce a device's detections); default: centred")
    o = p.add_argument_group("outputs")
    o.add_argument("--rtype", metavar="TYPE[,TYPE...]",
                   help=f"output types, comma-separated: {', '.join(RTYPES)} (default: raven,"
                        "csv; parquet needs pyarrow, the `analyze` extra)")
    o.add_argument("--clips", "--clips-dir", dest="clips", metavar="DIR",
                   help="write one audio clip per detection into DIR (named in the `clip` "
                        "column of csv, raven-combined and parquet)")
    o.add_argument("--clips-pre-s", type=float, default=1.0, metavar="S",
                   help="audio kept before each detection (default: %(default)s)")
    o.add_argument("--clips-post-s", type=float, default=1.0, metavar="S",
                   help="audio kept after each detection (default: %(default)s)")
    o.add_argument("--clips-format", choices=CLIP_FORMATS, default="wav",
                   help="clip format; flac needs soundfile (default: %(default)s)")
    t = p.add_argument_group("recording times")
    t.add_argument("--audio-start-time", metavar="ISO",
                   help="start of files whose header and name give no time, e.g. "
                        "2025-06-01T05:30:00+02:00 (a header or name time wins)")
    t.add_argument("--timezone", metavar="IANA",
                   help="the recorder's zone (e.g. Europe/Berlin) for file names and GUANO "
                        "times without a UTC offset (default: names are UTC, AudioMoth's "
                        "default)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false",
                   help="do not search subfolders (searched by default)")
    p.add_argument("--recursive", "-r", dest="recursive", action="store_true",
                   help=argparse.SUPPRESS)  # the default now; accepted for old scripts
    p.add_argument("--force", action="store_true",
                   help="analyse every file again, even those the manifest says are done")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from edge_runtime.batch import AnalyzeConfig, analyze
    from edge_runtime.batch_clips import ClipSettings
    from edge_runtime.batch_outputs import format_summary
    from edge_runtime.output_formats import parse_rtypes

    every = [value for label, value in args.thresholds if not label]
    cfg = AnalyzeConfig(model=args.model, out=args.out, workers=args.workers,
                        threshold=every[-1] if every else None,
                        thresholds={label: v for label, v in args.thresholds if label},
                        hysteresis=args.hysteresis, min_duration_s=args.min_duration_s,
                        merge_gap_s=args.merge_gap_s, emit_undetectable=args.emit_undetectable,
                        channel=args.channel, hop_s=args.hop_s, overlap_s=args.overlap_s,
                        lookahead_s=args.lookahead_s,
                        audio_start_time=args.audio_start_time, timezone=args.timezone,
                        rtypes=parse_rtypes(args.rtype) if args.rtype else None,
                        clips=ClipSettings(args.clips, args.clips_pre_s, args.clips_post_s,
                                           args.clips_format) if args.clips else None,
                        recursive=args.recursive, force=args.force,
                        progress=not args.no_progress)
    summary = analyze(args.paths, cfg)
    print(format_summary(summary), file=sys.stdout if summary.ok else sys.stderr)
    return 0 if summary.ok else 1
