"""`meerkit analyze`: batch detection over recorder SD cards (folders of WAV, FLAC with
soundfile), resumable, parallel over files. numpy + the TFLite interpreter only, so it also runs
on the recorder itself.

Each file is read in blocks (an hour at 384 kHz never sits in memory), mixed to mono and
resampled to the model's rate (`audio.Conformer`, as in the field runtime) and run through the
field runtime's `detect.Detector` with the card's per-label decoder settings
(`detect.decoder_settings`: `threshold` etc. override them); labels the card marks
undetectable are not reported unless `emit_undetectable`. The Detector equals whole-file
`windows.track` + `events.decode_events` by test, so results match `meerkit` evaluation and
`edge-runtime` replaying the same file. The output files are `batch_outputs`'.

Outputs in `out`:
  <rel dir>/<stem>.Table.1.selections.txt   one Raven table per audio file (header only when
                       nothing was detected); `rel` is the file's path relative to the deepest
                       folder holding every input, so cards with identical file names
                       (`SD1/20250601_053000.WAV`, `SD2/...`) do not collide
  events.csv           file,label,start_s,end_s,confidence_max,confidence_mean,start_utc of
                       every input file of this run (start_utc: AudioMoth-style names
                       `20250601_053000.WAV` are UTC start times; empty otherwise)
  events.parquet       the same table, when pyarrow is installed
  manifest.jsonl       one JSON line per analysed file (path, size, mtime, settings incl. the
                       artifact's sha256, status, error/warning, events); the last line wins

Resume: a file is skipped when its latest manifest entry is "ok" for the same size, mtime,
output name and settings; new, touched and failed files (and everything after a model or
threshold change) are analysed. `force` analyses everything. A failed file (corrupt, empty,
not audio) is reported and the run goes on; a truncated WAV is analysed up to its last whole
sample and reported as a warning. The CLI exits 0 when every file was analysed, 1 when some
failed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.audio import Conformer, Put, WavSource, recording_start
from edge_runtime.batch_outputs import (
    Progress,
    event_rows,
    table_path,
    write_atomic,
    write_events,
    write_table,
)
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig, Event
from edge_runtime.contract.model import TFLiteModel, model_geometry
from edge_runtime.contract.raven import table_name
from edge_runtime.detect import Detection, Detector, decoder_settings

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac")
MANIFEST = "manifest.jsonl"
Reader = Callable[[Put], None]  # calls put(block) for every block of a file


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
    recursive: bool = False
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
    start_unix: float | None = None  # first sample, from an AudioMoth-style name
    wall_s: float = 0.0


@dataclass
class Summary:
    out: Path
    files: int = 0  # audio files found
    analysed_files: list[str] = field(default_factory=list)  # now (ok or failed), relative
    skipped: int = 0  # done in an earlier run
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, error)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    events: int = 0  # in events.csv (all files of this run, skipped ones included)
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


def find_audio(paths: Sequence[str | Path], recursive: bool = False) -> list[Job]:
    """Audio files under `paths` (files or folders), in a stable order, each once."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_dir():
            walk = p.rglob("*") if recursive else p.iterdir()
            files = sorted(f for f in walk if f.is_file() and _is_audio(f))
            if not files:
                hint = "" if recursive else " (add --recursive to search subfolders)"
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
class _Analyser:
    """Per-process state: the interpreter and the settings (one per worker)."""

    def __init__(self, model_path: str, decoder: DecoderConfig, channel: str, out: str,
                 block_s: float, model: TFLiteModel | None = None):
        self.model = model or TFLiteModel(model_path, threads=1)
        self.geometry = model_geometry(self.model.card)
        self.decoder, self.channel, self.out, self.block_s = decoder, channel, Path(out), block_s

    def run(self, job: Job) -> FileResult:
        t0 = time.perf_counter()
        try:
            result = self._analyse(job)
        except UserError as err:
            result = FileResult(job, "failed", error=str(err))
        except Exception as err:  # a corrupt file must not stop a night's batch
            log.debug("%s failed", job.path, exc_info=True)
            result = FileResult(job, "failed", error=f"{job.path}: {type(err).__name__}: {err}")
        if result.status != "ok":  # a table from an earlier, successful run is now stale
            table_path(self.out, job.rel).unlink(missing_ok=True)
        result.wall_s = time.perf_counter() - t0
        return result

    def _analyse(self, job: Job) -> FileResult:
        card = self.model.card
        rate, channels, reader, warning = open_audio(Path(job.path), self.block_s)
        if self.channel != "mix" and int(self.channel) >= channels:
            raise UserError(f"{job.path}: --audio-channel {self.channel}: the file has "
                            f"{channels} channel(s) (0-based index)")
        conformer = Conformer(rate, channels, card.sample_rate, self.channel)
        detector = Detector(self.model.window_fn, card, self.geometry, self.decoder)
        detections: list[Detection] = []
        n = 0

        def put(block: np.ndarray) -> None:
            nonlocal n
            n += len(block)
            detections.extend(detector.push(conformer.process(block)))

        reader(put)
        if n == 0:
            raise UserError(f"{job.path}: no audio samples")
        detections.extend(detector.push(conformer.flush()) + detector.flush())
        events = sorted((d.event(job.rel) for d in detections), key=lambda e: (e.start_s, e.label))
        write_table(self.out, job.rel, events, rate)
        try:
            start = recording_start(job.path).timestamp()
        except UserError:
            start = None
        return FileResult(job, "ok", events, warning=warning, audio_s=n / rate,
                          start_unix=start)


def open_audio(path: Path, block_s: float) -> tuple[int, int, Reader, str]:
    """(sample rate, channels, reader, warning) for a WAV or FLAC file; `reader(put)` calls
    `put` with float32 (frames, channels) blocks, one at a time (as the field runtime's
    sources do), so only one block is ever in memory."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    if magic == b"fLaC" or path.suffix.lower() == ".flac":
        return _open_flac(path, block_s)
    source = WavSource(path, block_s=block_s)  # refuses non-WAV and empty files, naming them
    warning = (f"{path}: WAV data chunk is truncated; analysed the {source.info.duration_s:.1f} s "
               "present") if source.info.truncated else ""
    return (source.sample_rate, source.channels,
            lambda put: source.run(put, threading.Event()), warning)


def _open_flac(path: Path, block_s: float) -> tuple[int, int, Reader, str]:
    try:
        sf = importlib.import_module("soundfile")
    except ImportError:
        raise UserError(f"{path}: reading FLAC needs the soundfile package (`pip install "
                        "soundfile`), or convert it to WAV (`sox in.flac out.wav`)") from None
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile's errors have no common public base class
        raise UserError(f"{path}: cannot decode FLAC ({err})") from None

    def reader(put: Put) -> None:
        size = max(1, round(block_s * info.samplerate))
        with sf.SoundFile(str(path)) as fh:
            for block in fh.blocks(blocksize=size, dtype="float32", always_2d=True):
                put(block)

    return int(info.samplerate), int(info.channels), reader, ""


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


# ------------------------------------------------------------------------- manifest
def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """Latest entry per absolute audio path. A line cut short by a crash is ignored."""
    latest: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return latest
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            latest[entry["path"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            log.warning("%s:%d: unreadable manifest line ignored (interrupted write?)", path, i)
    return latest


def _entry(result: FileResult, settings: dict[str, Any]) -> dict[str, Any]:
    job = result.job
    return {
        "path": job.path, "file": job.rel, "size": job.size, "mtime_ns": job.mtime_ns,
        "status": result.status, "error": result.error, "warning": result.warning,
        "settings": settings, "n_events": len(result.events),
        "audio_s": round(result.audio_s, 3), "wall_s": round(result.wall_s, 3),
        "start_unix": result.start_unix,
        "analysed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # compact: label, start_s, end_s, confidence max, mean
        "events": [[e.label, e.start_s, e.end_s, float(e.confidence_max),
                    float(e.confidence_mean)] for e in result.events],
    }


def _is_done(entry: dict[str, Any] | None, job: Job, settings: dict[str, Any], out: Path) -> bool:
    return bool(entry) and entry.get("status") == "ok" and entry.get("size") == job.size \
        and entry.get("mtime_ns") == job.mtime_ns and entry.get("file") == job.rel \
        and entry.get("settings") == settings and table_path(out, job.rel).is_file()


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
    jobs = find_audio(inputs, cfg.recursive)
    model = TFLiteModel(cfg.model, threads=1)  # refuses a card-less artifact before any work
    card = model.card
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
                "not_reported": [u.label for u in off], "channel": cfg.channel}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary(out=out, files=len(jobs))
    _check_table_names(jobs)

    with _lock(out):
        manifest = out / MANIFEST
        latest = read_manifest(manifest)
        todo = [j for j in jobs if cfg.force or not _is_done(latest.get(j.path), j, settings, out)]
        summary.skipped = len(jobs) - len(todo)
        if summary.skipped:
            log.info("%d of %d files already analysed with these settings (manifest %s); "
                     "--force analyses them again", summary.skipped, len(jobs), manifest)
        workers = min(cfg.workers or os.cpu_count() or 1, max(1, len(todo)))
        progress = Progress(len(todo), cfg.progress)
        try:
            with open(manifest, "a", encoding="utf-8") as fh:
                for result in _run(todo, workers, model, cfg, decoder):
                    entry = _entry(result, settings)
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
        # Compact: one line per file, so the manifest does not grow with every rerun.
        write_atomic(manifest, "".join(json.dumps(e, separators=(",", ":")) + "\n"
                                        for e in latest.values()))
        done = [latest[j.path] for j in jobs if latest.get(j.path, {}).get("status") == "ok"]
        rows = event_rows(done)
        write_events(out, rows)
    summary.events = len(rows)
    summary.wall_s = time.perf_counter() - t0
    return summary


def _check_table_names(jobs: Sequence[Job]) -> None:
    seen: dict[str, str] = {}
    for j in jobs:
        key = (Path(j.rel).parent / table_name(j.rel)).as_posix().lower()
        if key in seen:
            raise UserError(f"{j.path} and {seen[key]} would write the same Raven table "
                            f"({key}); analyse them into different --out folders")
        seen[key] = j.path


def _run(todo: Sequence[Job], workers: int, model: TFLiteModel, cfg: AnalyzeConfig,
         decoder: DecoderConfig) -> Iterator[FileResult]:
    """Results in completion order; in-process for one worker."""
    if workers <= 1:
        analyser = _Analyser(cfg.model, decoder, cfg.channel, cfg.out, cfg.block_s, model)
        for job in todo:
            yield analyser.run(job)
        return
    import multiprocessing

    # spawn, not fork: the parent may hold threads (tqdm, a test's tensorflow) that fork breaks.
    args = (cfg.model, decoder, cfg.channel, cfg.out, cfg.block_s)
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
