"""`meerkit data ...`: validate a dataset folder, import annotations, export Raven tables."""

from __future__ import annotations

import argparse
import contextlib
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import events_to_frames
from train.data.audio_io import audio_info, list_audio
from train.data.dataset import Dataset
from train.data.metadata import METADATA_FIELDS
from train.data.raven import export_raven

SUMMARY_FRAME_RATE_HZ = 50.0

_LAYOUT = """\
A dataset is a folder:
  audio/           .wav/.flac recordings (any rate, any channels, subfolders allowed)
  annotations.csv  file,start_s,end_s,label[,low_hz,high_hz,focal,snr_db]  (file relative to audio/)
  metadata.csv     file + any of lat,lon,elevation_m,recorded_at,recorder_id,site,habitat,
                   individual (empty cell = missing; recorded_at ISO 8601 with time zone)
  splits.csv       file,split (optional; split names like train, val, test, shift, pretrain)
  labels.txt       the ordered label set, one per line (optional)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    data = subparsers.add_parser(
        "data", help="validate, import and export datasets", formatter_class=fmt,
        description="Work with dataset folders.\n\n" + _LAYOUT,
        epilog="Run `meerkit data COMMAND --help` for examples.")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "validate", help="check a dataset folder and print a summary", formatter_class=fmt,
        description=_wrap("Check a dataset folder against the data contract and summarise "
                          "it: files, hours, labels, event frame coverage, metadata "
                          "completeness, splits. The first problem stops it with file:line "
                          "and what is wrong.") + "\n\n" + _LAYOUT,
        epilog="examples:\n  meerkit data validate data/meerkat\n"
               "  meerkit data validate data/field --lenient --sample-rate 16000")
    p.add_argument("root", type=Path, metavar="ROOT", help="dataset folder")
    _common(p)
    p.add_argument("--sample-rate", type=int, metavar="HZ",
                   help="target rate (needed when the files have different rates)")
    p.set_defaults(func=validate_command)

    p = sub.add_parser(
        "import", help="make a dataset folder from Raven, Audacity or MeerKAT-style labels",
        formatter_class=fmt,
        description=_wrap("Copy annotated audio into a new dataset folder with annotations.csv, "
                    "metadata.csv (file column, for you to fill) and labels.txt, then "
                    "validate it. Only annotated recordings are imported."),
        epilog="examples:\n"
               "  meerkit data import raven tables/ --audio recordings/ --out data/birds\n"
               "  meerkit data import raven a.Table.1.selections.txt --audio rec/ --out d "
               "--label-column 'Call Type'\n"
               "  meerkit data import audacity labels/ --audio recordings/ --out data/frogs\n"
               "  meerkit data import meerkat clips/ --out data/meerkat --link")
    fmts = p.add_subparsers(dest="source", metavar="FORMAT", required=True)
    raven = fmts.add_parser(
        "raven", help="Raven selection tables", formatter_class=fmt,
        description=_wrap("Raven selection tables (tab-separated). The audio file is the Begin "
                    "File/Begin Path column if present, else the table name "
                    "(rec1.Table.1.selections.txt -> rec1.wav). Duplicate view rows "
                    "(Waveform/Spectrogram) are merged by Selection number."),
        epilog="example:\n  meerkit data import raven tables/ --audio recordings/ --out data/birds")
    raven.add_argument("tables", nargs="+", type=Path, metavar="TABLE",
                       help="selection table files, or folders searched for *.selections.txt")
    raven.add_argument("--audio", type=Path, required=True, metavar="DIR",
                       help="folder holding the annotated recordings")
    raven.add_argument("--label-column", metavar="NAME",
                       help="column with the labels (default: Species, Annotation, Label, Class "
                            "or Call Type)")
    _import_common(raven)
    aud = fmts.add_parser(
        "audacity", help="Audacity label tracks", formatter_class=fmt,
        description=_wrap("Audacity label files (File > Export > Labels): start<TAB>end<TAB>label, "
                    "optional spectral-selection lines. rec1.txt or rec1_labels.txt annotates "
                    "rec1.wav."),
        epilog="example:\n  meerkit data import audacity labels/ --audio recordings/ --out data/frogs")
    aud.add_argument("labels", nargs="+", type=Path, metavar="LABELS",
                     help="label files, or folders searched for *.txt")
    aud.add_argument("--audio", type=Path, required=True, metavar="DIR",
                     help="folder holding the annotated recordings")
    _import_common(aud)
    mk = fmts.add_parser(
        "meerkat", help="folder of clips with per-clip label files", formatter_class=fmt,
        description=_wrap("Clips X.wav with label files X.csv or X.txt beside them: "
                    "Name,Start,Duration (times in seconds or m:ss.fff) or start,end,label."),
        epilog="example:\n  meerkit data import meerkat clips/ --out data/meerkat --link")
    mk.add_argument("clips", type=Path, metavar="CLIPS_DIR", help="folder of clips + label files")
    _import_common(mk)
    p.set_defaults(func=import_command)

    p = sub.add_parser(
        "to-raven", help="write one Raven selection table per recording", formatter_class=fmt,
        description=_wrap("Write ROOT's annotations as Raven selection tables, "
                    "<stem>.Table.1.selections.txt per audio file (mirroring audio/ subfolders); "
                    "open them in Raven next to the recording."),
        epilog="example:\n  meerkit data to-raven data/meerkat --out raven_tables/")
    p.add_argument("root", type=Path, metavar="ROOT", help="dataset folder")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the tables")
    _common(p)
    p.set_defaults(func=to_raven_command)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=88)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lenient", action="store_true",
                   help="skip bad rows and unreadable audio (listed) instead of stopping")


def _import_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="new dataset folder (must not exist or be empty)")
    p.add_argument("--link", action="store_true", help="symlink the audio instead of copying it")
    _common(p)


def validate_command(args: argparse.Namespace) -> int:
    dataset = Dataset(args.root, sample_rate=args.sample_rate, lenient=args.lenient)
    print(summary(dataset))
    _print_problems(dataset)
    return 0


def import_command(args: argparse.Namespace) -> int:
    from train.data import importers

    common = dict(link=args.link, lenient=args.lenient)
    if args.source == "raven":
        dataset = importers.import_raven(args.tables, args.audio, args.out,
                                         label_column=args.label_column, **common)
    elif args.source == "audacity":
        dataset = importers.import_audacity(args.labels, args.audio, args.out, **common)
    else:
        dataset = importers.import_meerkat(args.clips, args.out, **common)
    print(f"wrote {args.out}")
    print(summary(dataset))
    _print_problems(dataset)
    return 0


def to_raven_command(args: argparse.Namespace) -> int:
    dataset = Dataset(args.root, lenient=args.lenient, sample_rate=_highest_rate(args.root))
    written = export_raven(dataset, args.out)
    n = sum(len(dataset.annotations(f)) for f in dataset.files)
    print(f"wrote {len(written)} selection table(s) with {n} selection(s) to {args.out}")
    _print_problems(dataset)
    return 0


def _highest_rate(root: Path) -> int | None:
    """Exporting needs no common rate: name one so mixed-rate datasets export too."""
    rates = set()
    for rel in list_audio(root / "audio") if (root / "audio").is_dir() else []:
        with contextlib.suppress(UserError):  # Dataset reports unreadable files
            rates.add(audio_info(root / "audio" / rel).sample_rate)
    return max(rates, default=None)


def summary(dataset: Dataset) -> str:
    """Human-readable overview of a validated dataset."""
    files = dataset.files
    seconds = sum(dataset.info(f).duration_s for f in files)
    counts: Counter[str] = Counter()
    annotated_s: Counter[str] = Counter()
    event_frames = total_frames = 0
    for f in files:
        anns = dataset.annotations(f)
        counts.update(a.label for a in anns)
        for a in anns:
            annotated_s[a.label] += a.duration_s
        n = round(dataset.info(f).duration_s * SUMMARY_FRAME_RATE_HZ)
        if dataset.labels and anns:
            y = events_to_frames(dataset.events(f), dataset.labels, n, SUMMARY_FRAME_RATE_HZ)
            event_frames += int(np.any(y > 0, axis=1).sum())
        total_frames += n
    rates = sorted({dataset.info(f).sample_rate for f in files})
    lines = [
        f"dataset {dataset.root}",
        f"  files: {len(files)}, {seconds / 3600:.2f} h "
        f"(sample rate {'/'.join(map(str, rates))} Hz)",
        f"  labels: {len(dataset.labels)}, annotations: {sum(counts.values())}",
    ]
    for label in dataset.labels:
        lines.append(f"    {label:<24} {counts[label]:>7}  {annotated_s[label]:9.1f} s")
    share = 100.0 * event_frames / total_frames if total_frames else 0.0
    lines.append(f"  frames with an event (at {SUMMARY_FRAME_RATE_HZ:g} fps): {share:.1f}%")
    lines.append("  metadata completeness:")
    for field in METADATA_FIELDS:
        have = sum(not dataset.metadata(f).is_missing(field) for f in files)
        lines.append(f"    {field:<12} {100.0 * have / len(files):5.1f}%")
    split_counts = Counter(dataset.splits.get(f, "(none)") for f in files)
    lines.append("  splits: " + (", ".join(f"{s} {n}" for s, n in sorted(split_counts.items()))
                                 if dataset.splits else "no splits.csv"))
    return "\n".join(lines)


def _print_problems(dataset: Dataset) -> None:
    if dataset.problems:
        print(f"  skipped ({len(dataset.problems)} problem(s)):")
        for problem in dataset.problems:
            print(f"    {problem}")
