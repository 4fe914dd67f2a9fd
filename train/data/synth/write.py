"""Writing the dataset folder: tables, subsets, audio (in parallel, byte-identical for any
worker count) and synth.json."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing as mp
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_runtime.contract.atomic import write_text_atomic
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from train.data.synth.config import (
    ANNOTATED_SPLITS,
    BUDGET_SUBSETS,
    GENERATOR_VERSION,
    LABELS,
    SPLITS,
    STATS_FRAME_RATE_HZ,
    SUBSET_MIN_EVENTS,
    SUBSET_PERCENTS,
    SynthConfig,
    subset_name,
)
from train.data.synth.plan import FilePlan, fscale, plan_file, plan_split
from train.data.synth.render import RESONANCE_SIGMA_OCT, render_file
from train.data.synth.stats import event_counts, imprint_association, select_subsets, split_stats
from train.data.synth.world import (
    DIALECT_REF_LAT,
    IMPRINTS,
    REGIONS,
    RESONANCE_DB,
    SEASON_PEAK_DOY,
    SHIFT_REGION,
    WHINE_DBFS,
    World,
    build_world,
    favoured_label,
    imprint_label,
)

log = logging.getLogger(__name__)

OUTPUTS = ("audio", "subsets", "annotations.csv", "metadata.csv", "splits.csv", "labels.txt",
           "synth.json", "synth.partial.json")
# synth.json is written last, so a folder holding it is complete: a generation that was
# interrupted leaves only synth.partial.json (which still marks the folder as ours for --force).
PARTIAL = "synth.partial.json"
ANNOTATION_COLUMNS = ["file", "start_s", "end_s", "label", "low_hz", "high_hz", "snr_db"]
METADATA_COLUMNS = ["file", "lat", "lon", "elevation_m", "recorded_at", "recorder_id", "site",
                    "habitat"]

_WORKER: dict = {}


def _init_worker(config: SynthConfig, world: World, out_dir: Path) -> None:
    _WORKER.update(config=config, world=world, out_dir=out_dir)


def _render_and_write(task: tuple[str, int]) -> str:
    config, world, out_dir = _WORKER["config"], _WORKER["world"], _WORKER["out_dir"]
    plan = plan_file(config, world, *task)
    write_wav(out_dir / "audio" / plan.file, render_file(plan, config), config.sample_rate,
              bits=16)
    return plan.file


def _prepare_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UserError(f"{out}: folder is not empty; pass --force to overwrite an earlier "
                            "`meerkit synth` output there, or choose a new folder")
        if not ((out / "synth.json").is_file() or (out / PARTIAL).is_file()):
            raise UserError(f"{out}: not empty and not a `meerkit synth` output (no synth.json); "
                            "refusing to delete it even with --force")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_tables(out: Path, plans: dict[str, list[FilePlan]],
                  subsets: dict[str, list[str]]) -> None:
    every = [p for split in SPLITS for p in plans[split]]
    _write_csv(out / "annotations.csv", ANNOTATION_COLUMNS,
               ([p.file, f"{c.start_s:.4f}", f"{c.end_s:.4f}", c.label, f"{c.low_hz:.1f}",
                 f"{c.high_hz:.1f}", f"{c.snr_db:.2f}"]
                for p in every if p.split in ANNOTATED_SPLITS for c in p.calls))
    _write_csv(out / "metadata.csv", METADATA_COLUMNS,
               ([p.metadata[k] for k in METADATA_COLUMNS] for p in every))
    _write_csv(out / "splits.csv", ["file", "split"], ([p.file, p.split] for p in every))
    (out / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    (out / "subsets").mkdir(exist_ok=True)
    for name, files in subsets.items():
        (out / "subsets" / f"{name}.txt").write_text("".join(f"{f}\n" for f in files),
                                                     encoding="utf-8")


def _describe_world(world: World, config: SynthConfig) -> dict:
    return dict(
        regions={r.name: dict(lat=r.lat, lon=r.lon, elevation_m=r.elevation_m, habitat=r.habitat,
                              class_weights=dict(zip(LABELS, r.class_weights, strict=True)),
                              splits=["shift"] if r.name == SHIFT_REGION else
                              [s for s in SPLITS if s != "shift"])
                 for r in REGIONS},
        recorders=[{**{k: (round(v, 4) if isinstance(v, float) else v)
                       for k, v in asdict(r).items() if k != "hum_harmonics"},
                    "favoured_label": favoured_label(r, config)} for r in world.recorders],
    )


def _describe_cues(config: SynthConfig, plans: dict[str, list[FilePlan]]) -> dict:
    fs = fscale(config.sample_rate)
    shift_how = {"reversed": "each shift recorder's site favours another class than its "
                             "imprint kind's train class",
                 "absent": "shift sites favour no class"}[config.imprint_shift]
    return dict(
        spurious=dict(
            what="in-band recorder imprint: each recorder is of one of "
                 f"{len(IMPRINTS)} imprint kinds, a 1/3-octave resonance on the acoustic path "
                 "plus a steady whine tone, both within the calls' 1-6 kHz. In the train "
                 "family (train, val, test, pretrain) a recorder's site favours the class tied "
                 f"to its imprint kind; in shift {shift_how}. An adversarial recorder head "
                 "should help on shift.",
            imprint_boost=config.imprint_boost, shift=config.imprint_shift,
            resonance_db=list(RESONANCE_DB), resonance_sigma_octaves=RESONANCE_SIGMA_OCT,
            whine_dbfs=list(WHINE_DBFS),
            kinds=[dict(kind=k, resonance_hz=round(r * fs), whine_hz=round(w * fs),
                        train_label=imprint_label(k, False, config),
                        shift_label=imprint_label(k, True, config))
                   for k, (r, w) in enumerate(IMPRINTS)],
            association={s: imprint_association(plans[s]) for s in ANNOTATED_SPLITS},
        ),
        robust=dict(
            what="call dialect: every call's frequencies are shifted by "
                 "semitones_per_degree_north * (lat - reference_lat) + season_semitones * "
                 "cos(2 pi (day_of_year - peak) / 365), with each class's breeding peak, by the "
                 "same rule in every region (the unseen one too). Hour-of-day and season "
                 "priors of each class are also the same functions everywhere. A location / "
                 "season head should help on shift or at few labels.",
            semitones_per_degree_north=config.dialect_st_per_degree,
            reference_lat=DIALECT_REF_LAT, season_semitones=config.dialect_season_st,
            season_peak_doy=SEASON_PEAK_DOY,
            region_offset_semitones={
                r.name: round(config.dialect_st_per_degree * (r.lat - DIALECT_REF_LAT), 2)
                for r in REGIONS},
        ),
    )


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")


@dataclass(frozen=True)
class SynthResult:
    out_dir: Path
    stats: dict  # what synth.json holds
    wall_s: float


def generate(config: SynthConfig, out_dir: str | Path, *, workers: int = 1, force: bool = False,
             progress: bool = True) -> SynthResult:
    """Write the dataset folder; output is identical for any `workers`."""
    config.validate()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    _prepare_out_dir(out, force)
    header = dict(generator="meerkit.synth", version=GENERATOR_VERSION, seed=config.seed,
                  config=asdict(config), complete=False)
    _write_json(out / PARTIAL, header)  # marks the folder as ours even if interrupted

    world = build_world(config.seed)
    plans = {split: plan_split(config, split, world) for split in SPLITS}
    subsets = select_subsets(plans["train"], config.seed)
    _write_tables(out, plans, subsets)
    for split in SPLITS:
        (out / "audio" / split).mkdir(parents=True, exist_ok=True)

    tasks = [(p.split, p.index) for split in SPLITS for p in plans[split]]
    _render_all(tasks, config, world, out, workers, progress)

    stats = {split: split_stats(plans[split], config) for split in SPLITS}
    annotated = [p for s in ANNOTATED_SPLITS for p in plans[s]]
    overall = split_stats(annotated, config)["call_frame_fraction"]
    if overall > 0.1:
        log.warning("%.1f%% of 50-fps frames contain a call (the benchmark intends < 10%%); "
                    "lower calls_per_minute", 100 * overall)
    by_file = {p.file: p for p in plans["train"]}
    subset_stats = {}
    for pct in SUBSET_PERCENTS:
        name = subset_name(pct)
        events = event_counts(by_file[f] for f in subsets[name])
        subset_stats[name] = dict(path=f"subsets/{name}.txt", percent=pct,
                                  files=len(subsets[name]), events=events,
                                  min_events_met=min(events.values()) >= SUBSET_MIN_EVENTS)
    payload = dict(
        header, complete=True, labels=list(LABELS), frame_rate_hz=STATS_FRAME_RATE_HZ,
        hours=round(sum(s["hours"] for s in stats.values()), 4), call_frame_fraction=overall,
        splits=stats, subsets=subset_stats, subset_min_events=SUBSET_MIN_EVENTS,
        budget_subsets=list(BUDGET_SUBSETS), cues=_describe_cues(config, plans),
        **_describe_world(world, config),
    )
    _write_json(out / "synth.json", payload)  # last: its presence means complete
    (out / PARTIAL).unlink()
    return SynthResult(out, payload, time.perf_counter() - t0)


def _render_all(tasks: list[tuple[str, int]], config: SynthConfig, world: World, out: Path,
                workers: int, progress: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), unit="file", desc="synth", file=sys.stderr, disable=not progress)
    with bar:
        if workers == 1:
            _init_worker(config, world, out)
            for task in tasks:
                _render_and_write(task)
                bar.update()
            return
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        with mp.get_context().Pool(workers, _init_worker, (config, world, out)) as pool:
            for _ in pool.imap_unordered(_render_and_write, tasks, chunksize=chunk):
                bar.update()
