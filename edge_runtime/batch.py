"""`meerkit analyze`: batch detection over recorder SD cards (folders of WAV; FLAC and the other
formats soundfile reads when it is installed), resumable, parallel over files. numpy + the TFLite
interpreter only, so it also runs on the recorder itself.

Each file is read in blocks (an hour at 384 kHz never sits in memory), mixed to mono and
resampled to the model's rate (`audio.Conformer`, as in the field runtime) and run through the
field runtime's `detect.Detector` with the card's per-label decoder settings
(`detect.decoder_settings`: `threshold` etc. override them) and the card's window hop (or
`hop_s`, or `overlap_s` = window - hop, BirdNET-Analyzer's name); labels the card marks
undetectable are not reported unless `emit_undetectable`. The Detector equals whole-file
`windows.track` + `events.decode_events` by test, so results match `meerkit` evaluation and
`edge-runtime` replaying the same file.

Times: every event's UTC time comes from `contract.recorder.recording_start` (the recorder's
header, an AudioMoth comment or GUANO, then the file name, then `audio_start_time`; `timezone`
reads names and offset-less headers in local time), the same rules `edge-runtime`'s
`audio.start_time = "filename"` uses. The outputs say which source each time came from; a file
whose time cannot be known gets an empty UTC column and a warning, never a guess.

Outputs in `out`: the `rtypes` of `output_formats` (default: per-file Raven tables and events.csv;
events.parquet when asked), built from the manifest after every run; `clips` cuts one clip per
detection (`batch_clips`), named in the `clip` column; and
  manifest.jsonl       one JSON line per analysed file (path, size, mtime, settings incl. the
                       artifact's sha256, hop, time and clip settings, status, error/warning,
                       start time and its source, events, clips); the last line wins

Resume: a file is skipped when its latest manifest entry is "ok" for the same size, mtime,
output name and settings (and its clips are still there); new, touched and failed files (and
everything after a model, threshold, hop, time or clip change) are analysed. Another `rtypes`
needs no analysis: the tables are rewritten from the manifest. `force` analyses everything. A
failed file (corrupt, empty, not audio) is reported and the run goes on; a truncated WAV is
analysed up to its last whole sample and reported as a warning. The CLI exits 0 when every file
was analysed, 1 when some failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from edge_runtime.audio import Conformer, open_file_source
from edge_runtime.batch_clips import ClipSettings, write_clips
from edge_runtime.batch_manifest import (
    MANIFEST,
    file_sha256,
    is_done,
    manifest_entry,
    read_manifest,
    remove_old_clips,
)
from edge_runtime.batch_outputs import Progress, write_results
from edge_runtime.contract import recorder
from edge_runtime.contract.atomic import write_text_atomic
from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig, Event
from edge_runtime.contract.model import TFLiteModel, model_geometry
from edge_runtime.contract.raven import table_name
from edge_runtime.detect import Detection, Detector, decoder_settings
from edge_runtime.output_formats import default_rtypes, parse_rtypes

log = logging.getLogger(__name__)
__all__ = ["MANIFEST", "AnalyzeConfig", "FileResult", "Job", "Summary", "analyze", "find_audio",
           "read_manifest", "window_hop"]

AUDIO_SUFFIXES = (".wav", ".flac")


@dataclass
class AnalyzeConfig:
    model: str  # carded .tflite
    out: str  # output folder
    workers: int = 0  # processes; 0 = one per CPU core (pass 1 on a recorder that also listens)
    threshold: float | None = None  # overrides every label's card threshold
    thresholds: dict[str, float] = field(default_factory=dict)  # per label, after `threshold`
    hysteresis: float | None = None  # None: the card's per label (0.1 on older cards)
    min_duration_s: float | None = None  # None: the card's per label (0 on older cards)
    merge_gap_s: float | None = None  # None: the card's per label (0 on older cards)
    emit_undetectable: bool = False  # also report labels the card marks undetectable
    channel: str = "mix"  # "mix" or a 0-based channel index
    hop_s: float | None = None  # window hop; None: the card's (or window - overlap_s)
    overlap_s: float | None = None  # window overlap, BirdNET-Analyzer's name for it
    lookahead_s: float | None = None  # right context per frame; None: centred (model_geometry)
    audio_start_time: str | None = None  # ISO 8601 start of files without header or name time
    timezone: str | None = None  # IANA zone of names/headers in local time without an offset
    rtypes: list[str] | None = None  # output_formats.RTYPES; None: default_rtypes()
    clips: ClipSettings | None = None  # one clip per detection
    recursive: bool = True  # search subfolders (AudioMoth writes daily folders)
    force: bool = False  # analyse files the manifest says are done
    progress: bool = True
    block_s: float = 10.0  # read block; bounds memory for long files


@dataclass(frozen=True)
class Job:
    path: str  # absolute
    rel: str  # posix path relative to the inputs' common folder (output name)
    size: int
    mtime_ns: int


@dataclass
class FileResult:
    job: Job
    status: str  # "ok" | "failed"
    events: list[Event] = field(default_factory=list)
    error: str = ""
    warning: str = ""
    audio_s: float = 0.0
    sample_rate: int = 0
    start: recorder.RecordingStart | None = None  # the first sample's time and its source
    clips: list[str] = field(default_factory=list)  # per event, relative to the clips folder
    wall_s: float = 0.0


@dataclass
class Summary:
    out: Path
    files: int = 0  # audio files found
    analysed_files: list[str] = field(default_factory=list)  # now (ok or failed), relative
    skipped: int = 0  # done in an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    events: int = 0  # in the outputs (all files of this run, skipped ones included)
    rtypes: list[str] = field(default_factory=list)  # the outputs written
    audio_s: float = 0.0  # analysed now
    wall_s: float = 0.0

    @property
    def analysed(self) -> int:
        return len(self.analysed_files)

    @property
    def ok(self) -> bool:
        return not self.failed


# ------------------------------------------------------------------------- inputs
def _is_audio(path: Path) -> bool:
    # AudioMoth/macOS cards carry `._NAME.WAV` AppleDouble files: hidden, not audio.
    return path.suffix.lower() in AUDIO_SUFFIXES and not path.name.startswith(".")


def find_audio(paths: Sequence[str | Path], recursive: bool = True) -> list[Job]:
    """Audio files under `paths` (files or folders), in a stable order, each once."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            walk = p.rglob("*") if recursive else p.iterdir()
            files = sorted(f for f in walk if f.is_file() and _is_audio(f))
            if not files:
                hint = "" if recursive else " (subfolders not searched: --no-recursive)"
                log.warning("%s: no .wav/.flac files%s", p, hint)
            found.update((f.resolve(), None) for f in files)
        elif p.is_file():
            if p.suffix.lower() not in AUDIO_SUFFIXES:
                raise UserError(f"{p}: not a .wav or .flac file")
            found[p.resolve()] = None
        else:
            raise UserError(f"{p}: no such file or folder")
    if not found:
        raise UserError(f"no .wav/.flac files in {', '.join(map(str, paths))}")
    bases = [p.resolve() if p.is_dir() else p.resolve().parent for p in map(Path, paths)]
    root = Path(os.path.commonpath(bases))
    jobs = []
    for f in found:
        st = f.stat()
        jobs.append(Job(str(f), f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return jobs


# ------------------------------------------------------------------------- one file
@dataclass(frozen=True)
class FileSettings:
    """What every worker needs besides the model (picklable: sent to spawned processes)."""

    decoder: DecoderConfig
    channel: str
    block_s: float
    hop_s: float  # 0 = the card's
    start_time: datetime | None  # explicit start of files with no header or name time
    timezone: str | None
    clips: ClipSettings | None
    lookahead_s: float | None = None


class _Analyser:
    """Per-process state: the interpreter and the settings (one per worker)."""

    def __init__(self, model_path: str, settings: FileSettings, model: TFLiteModel | None = None):
        self.model = model or TFLiteModel(model_path, threads=1)
        self.geometry = model_geometry(self.model.card, settings.hop_s, settings.lookahead_s)
        self.settings = settings

    def run(self, job: Job) -> FileResult:
        t0 = time.perf_counter()
        try:
            result = self._analyse(job)
        except UserError as err:
            result = FileResult(job, "failed", error=str(err))
        except Exception as err:  # a corrupt file must not stop a night's batch
            log.debug("%s failed", job.path, exc_info=True)
            result = FileResult(job, "failed", error=f"{job.path}: {type(err).__name__}: {err}")
        result.wall_s = time.perf_counter() - t0
        return result

    def _analyse(self, job: Job) -> FileResult:
        card, cfg = self.model.card, self.settings
        source = open_file_source(job.path, cfg.block_s)  # names what it is not
        if cfg.channel != "mix" and int(cfg.channel) >= source.channels:
            raise UserError(f"{job.path}: --audio-channel {cfg.channel}: the file has "
                            f"{source.channels} channel(s) (0-based index)")
        conformer = Conformer(source.sample_rate, source.channels, card.sample_rate, cfg.channel)
        detector = Detector(self.model.window_fn, card, self.geometry, cfg.decoder)
        detections: list[Detection] = []
        n = 0

        def put(block: np.ndarray) -> None:
            nonlocal n
            n += len(block)
            detections.extend(detector.push(conformer.process(block)))

        source.run(put, threading.Event())
        if n == 0:
            raise UserError(f"{job.path}: no audio samples")
        detections.extend(detector.push(conformer.flush()) + detector.flush())
        events = sorted((d.event(job.rel) for d in detections), key=lambda e: (e.start_s, e.label))
        clips = write_clips(source, job.rel, events, cfg.clips) if cfg.clips else []
        start = recorder.recording_start(job.path, cfg.start_time, cfg.timezone)
        warnings = [source.warning] if source.warning else []
        if start.utc is None:
            warnings.append(f"{job.path}: recording time unknown ({start.note}); start_utc "
                            "left empty")
        return FileResult(job, "ok", events, warning="; ".join(warnings),
                          audio_s=n / source.sample_rate, sample_rate=source.sample_rate,
                          start=start, clips=clips)


# ------------------------------------------------------------------------- workers
_WORKER: _Analyser | None = None


def _init_worker(args: tuple, level: int) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group; the parent handles it (and the manifest).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _WORKER = _Analyser(*args)


def _work(job: Job) -> FileResult:
    assert _WORKER is not None
    return _WORKER.run(job)


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One `analyze` per output folder: two would interleave manifest lines."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"{out}: another `meerkit analyze` is writing to this folder") from None
        yield


# ------------------------------------------------------------------------- the batch
def analyze(inputs: Sequence[str | Path], cfg: AnalyzeConfig) -> Summary:
    """Analyse every audio file under `inputs` (see the module docstring)."""
    t0 = time.perf_counter()
    if cfg.workers < 0:
        raise UserError(f"--workers {cfg.workers}: must be >= 0 (0 = one per CPU core)")
    given = {"": cfg.threshold} if cfg.threshold is not None else {}
    for label, value in {**given, **cfg.thresholds}.items():
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--model-thresholds {label}{'=' if label else ''}{value:g}: must "
                            "be in [0, 1]")
    if cfg.channel != "mix" and not cfg.channel.isdigit():
        raise UserError(f"--audio-channel {cfg.channel!r}: 'mix' or a 0-based channel index")
    rtypes = parse_rtypes(cfg.rtypes) if cfg.rtypes else default_rtypes()
    start_time = (recorder.parse_explicit_start(cfg.audio_start_time)
                  if cfg.audio_start_time else None)
    recorder.zone(cfg.timezone, "--timezone")
    if cfg.clips:
        cfg.clips.check()
    jobs = find_audio(inputs, cfg.recursive)
    model = TFLiteModel(cfg.model, threads=1)  # refuses a card-less artifact before any work
    card = model.card
    hop_s = window_hop(card, cfg.hop_s, cfg.overlap_s)
    model_geometry(card, hop_s, cfg.lookahead_s)  # a bad lookahead fails before any work
    decoder = decoder_settings(card, threshold=cfg.threshold, thresholds=cfg.thresholds,
                               hysteresis=cfg.hysteresis, min_duration_s=cfg.min_duration_s,
                               merge_gap_s=cfg.merge_gap_s,
                               emit_undetectable=cfg.emit_undetectable,
                               where="--model-thresholds")
    off = card.suppressed(cfg.emit_undetectable)
    if off:
        log.warning("not reported, the card marks them undetectable (--emit-undetectable "
                    "reports them): %s", "; ".join(f"{u.label} ({u.reason})" for u in off))
    settings = {"model_sha256": file_sha256(cfg.model), "labels": list(card.labels),
                "thresholds": list(decoder.threshold), "hysteresis": decoder.hysteresis,
                "min_duration_s": decoder.min_duration_s, "merge_gap_s": decoder.merge_gap_s,
                "not_reported": [u.label for u in off], "channel": cfg.channel,
                "hop_s": hop_s or card.hop_s,
                # only when set, so manifests written before the option still match
                **({"lookahead_s": cfg.lookahead_s} if cfg.lookahead_s is not None else {}),
                "audio_start_time": start_time.isoformat() if start_time else None,
                "timezone": cfg.timezone,
                "clips": cfg.clips.describe() if cfg.clips else None}
    file_settings = FileSettings(decoder, cfg.channel, cfg.block_s, hop_s, start_time,
                                 cfg.timezone, cfg.clips, cfg.lookahead_s)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out=out, files=len(jobs), rtypes=rtypes)
    _check_table_names(jobs)

    with _lock(out):
        manifest = out / MANIFEST
        latest = read_manifest(manifest)
        todo = [j for j in jobs if cfg.force or not is_done(latest.get(j.path), j, settings)]
        summary.skipped = len(jobs) - len(todo)
        if summary.skipped:
            log.info("%d of %d files already analysed with these settings (manifest %s); "
                     "--force analyses them again", summary.skipped, len(jobs), manifest)
        remove_old_clips([latest[j.path] for j in todo if j.path in latest], settings)
        workers = min(cfg.workers or os.cpu_count() or 1, max(1, len(todo)))
        progress = Progress(len(todo), cfg.progress)
        try:
            with open(manifest, "a", encoding="utf-8") as fh:
                for result in _run(todo, workers, model, cfg.model, file_settings):
                    entry = manifest_entry(result, settings)
                    fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
                    fh.flush()  # a crash loses at most the file being analysed
                    latest[result.job.path] = entry
                    summary.analysed_files.append(result.job.rel)
                    summary.audio_s += result.audio_s
                    if result.status != "ok":
                        summary.failed.append((result.job.path, result.error))
                    elif result.warning:
                        summary.warnings.append((result.job.path, result.warning))
                    progress.update(result)
        finally:
            progress.close()
        # The interpreter is done: free it before the tables are written (pyarrow's import
        # alone is ~36 MB; the two together set the peak RSS of a one-worker run).
        del model
        # Compact: one line per file, so the manifest does not grow with every rerun.
        write_text_atomic(manifest, "".join(json.dumps(e, separators=(",", ":")) + "\n"
                                        for e in latest.values()))
        done = [latest[j.path] for j in jobs if latest.get(j.path, {}).get("status") == "ok"]
        failed = [j.rel for j in jobs if latest.get(j.path, {}).get("status") == "failed"]
        summary.events = write_results(out, rtypes, done, failed)
    summary.wall_s = time.perf_counter() - t0
    return summary


def window_hop(card: ModelCard, hop_s: float | None, overlap_s: float | None) -> float:
    """The hop from `--model-hop-s` or `--overlap` (window - hop); 0 = the card's. Both given
    must agree. A hop of 0 means the card's, as `model.hop_s = 0` does on the device."""
    hop_s = hop_s or None
    if overlap_s is not None and not 0 <= overlap_s < card.window_s:
        raise UserError(f"--overlap {overlap_s:g}: must be >= 0 and below the model's window "
                        f"({card.window_s:g} s)")
    from_overlap = card.window_s - overlap_s if overlap_s is not None else None
    if hop_s is not None and from_overlap is not None and abs(hop_s - from_overlap) > 1e-9:
        raise UserError(f"--overlap {overlap_s:g} means a hop of {from_overlap:g} s (window "
                        f"{card.window_s:g} s), but --model-hop-s is {hop_s:g}; give one")
    hop = hop_s if hop_s is not None else from_overlap or 0.0
    if hop_s is not None and not 0 < hop_s <= card.window_s:
        raise UserError(f"--model-hop-s {hop_s:g}: must be in (0, window {card.window_s:g} s]")
    try:
        model_geometry(card, hop)
    except UserError as err:
        raise UserError(f"--overlap/--model-hop-s: {err}") from None
    return hop


def _check_table_names(jobs: Sequence[Job]) -> None:
    seen: dict[str, str] = {}
    for j in jobs:
        key = (Path(j.rel).parent / table_name(j.rel)).as_posix().lower()  # and .labels.txt
        if key in seen:
            raise UserError(f"{j.path} and {seen[key]} would write the same Raven table "
                            f"({key}); analyse them into different --out folders")
        seen[key] = j.path


def _run(todo: Sequence[Job], workers: int, model: TFLiteModel, model_path: str,
         settings: FileSettings) -> Iterator[FileResult]:
    """Results in completion order; in-process for one worker."""
    if workers <= 1:
        analyser = _Analyser(model_path, settings, model)
        for job in todo:
            yield analyser.run(job)
        return
    import multiprocessing

    # spawn, not fork: the parent may hold threads (tqdm, a test's tensorflow) that fork breaks.
    args = (model_path, settings)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker,
                             initargs=(args, logging.getLogger().getEffectiveLevel())) as pool:
        futures = {pool.submit(_work, job): job for job in todo}
        try:
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    result = FileResult(futures[future], "failed",
                                        error=f"{futures[future].path}: the worker process died "
                                              "(out of memory or an interpreter crash); rerun "
                                              "to retry")
                yield result
        except BaseException:  # Ctrl-C, or the caller stopped: drop the queued files
            pool.shutdown(wait=False, cancel_futures=True)
            raise
