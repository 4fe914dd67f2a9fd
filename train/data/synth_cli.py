"""`meerkit synth`: write the synthetic MeerKAT-like benchmark (see train/data/synth/)."""

from __future__ import annotations

import argparse
import os

from train.data.synth import BUDGET_SUBSETS, LABELS, PRESETS, SPLITS, SynthConfig, generate

_EPILOG = """\
example:
  meerkit synth data/synth --preset small --seed 0
  meerkit synth /tmp/t --preset tiny --train 100 --pretrain 0 --force

Writes audio/<split>/*.wav, annotations.csv (with each call's snr_db), metadata.csv,
splits.csv, labels.txt, nested label-budget subsets subsets/train_{1,5,10,25}pct.txt and
synth.json (stats, subsets' events per class, and the planted cues). The same seed and
options give byte-identical files, whatever --workers is. Presets: tiny (tests, ~6 min of
5 s clips), small (demo, ~26 min), default (benchmarks, ~4.4 h of 10 s clips).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic benchmark dataset",
        description=f"Generate a synthetic MeerKAT-like bioacoustic benchmark: sparse calls of\n"
        f"{len(LABELS)} classes ({', '.join(LABELS)})\n"
        "in field noise, with class priors that depend on region, hour and season, a channel\n"
        "imprint per recorder, train/val/test/shift/pretrain splits and label-budget subsets.\n"
        "Two cues test metadata heads: an in-band recorder imprint tied to a class in train\n"
        "but not in shift (spurious), and call dialects that follow latitude and season\n"
        "everywhere (robust).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", metavar="OUT",
                   help="output folder (created; must be empty unless --force)")
    p.add_argument("--preset", choices=PRESETS, default="default",
                   help="size preset (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--sample-rate", type=int, metavar="HZ", help="sample rate (default: 16000)")
    p.add_argument("--clip-s", type=float, metavar="S",
                   help="clip length in seconds (preset's default)")
    for split in SPLITS:
        p.add_argument(f"--{split}", type=int, metavar="N", dest=f"n_{split}",
                       help=f"number of {split} files (overrides the preset)")
    p.add_argument("--whine-pulse-s", type=float, metavar="S",
                   help="switch each recorder's in-band whine on and off with about this "
                   "period (default 0: steady, which per-clip band centring removes; a pulsed "
                   "imprint survives it, for testing an adversarial recorder head)")
    p.add_argument("--workers", type=int, metavar="N", default=min(8, os.cpu_count() or 1),
                   help="parallel processes; output does not depend on it (default: %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an earlier `meerkit synth` output in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=handler)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    overrides: dict[str, object] = {"seed": args.seed}
    if args.sample_rate is not None:
        overrides["sample_rate"] = args.sample_rate
    if args.clip_s is not None:
        overrides["clip_s"] = args.clip_s
    if args.whine_pulse_s is not None:
        overrides["whine_pulse_s"] = args.whine_pulse_s
    for split in SPLITS:
        if getattr(args, f"n_{split}") is not None:
            overrides[f"n_{split}"] = getattr(args, f"n_{split}")
    return SynthConfig.preset(args.preset, **overrides)


def handler(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = generate(config, args.out, workers=args.workers, force=args.force,
                      progress=not args.no_progress)
    s = result.stats
    splits = ", ".join(f"{name} {s['splits'][name]['files']}" for name in SPLITS)
    calls = sum(sum(s["splits"][name]["events"].values()) for name in SPLITS
                if s["splits"][name]["annotated"])
    speed = s["hours"] / max(result.wall_s / 60, 1e-9)
    shift = s["splits"]["shift"]
    short = f" (< {s['subset_min_events']} events of some class)"
    budgets = ", ".join(f"{name} {sub['files']} files{'' if sub['min_events_met'] else short}"
                        for name, sub in s["subsets"].items())
    print(
        f"Wrote {s['hours']:.2f} h of audio to {result.out_dir} ({splits} files of "
        f"{config.clip_s:g} s at {config.sample_rate} Hz, seed {config.seed}) in "
        f"{result.wall_s:.1f} s ({speed:.1f} h of audio per minute, {args.workers} worker(s)). "
        f"{calls} annotated calls of {len(LABELS)} labels; {100 * s['call_frame_fraction']:.1f}% "
        f"of 50-fps frames contain a call. The shift split is region {'/'.join(shift['regions'])} "
        f"with {len(shift['recorders'])} recorders unseen elsewhere; pretrain has no annotations; "
        f"label-budget subsets in subsets/: {budgets}; sweeps use {', '.join(BUDGET_SUBSETS)}. "
        "Details in synth.json."
    )
    return 0
