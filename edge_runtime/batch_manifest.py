"""The manifest of `meerkit analyze` (`manifest.jsonl` in the output folder): one JSON line per
analysed file (path, size, mtime, the settings that shape its result, status, error/warning,
the recording's start time and its source, events, clips); the last line per file wins, and
a line cut short by a crash is ignored. A file whose entry is "ok" for the same size, mtime,
output name and settings, with its clips still there, is done."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.contract.recorder import RecordingStart

if TYPE_CHECKING:
    from edge_runtime.batch import FileResult, Job

log = logging.getLogger("edge_runtime.batch")

MANIFEST = "manifest.jsonl"


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


def manifest_entry(result: FileResult, settings: dict[str, Any]) -> dict[str, Any]:
    job, start = result.job, result.start or RecordingStart(None, "unknown")
    return {
        "path": job.path, "file": job.rel, "size": job.size, "mtime_ns": job.mtime_ns,
        "status": result.status, "error": result.error, "warning": result.warning,
        "settings": settings, "n_events": len(result.events),
        # not rounded: the combined Raven table adds up the durations of the files
        "audio_s": result.audio_s, "sample_rate": result.sample_rate,
        "wall_s": round(result.wall_s, 3),
        "start_unix": start.unix, "time_source": start.source, "time_note": start.note,
        "device_id": start.device_id,
        "tz_offset_s": start.tz_offset.total_seconds() if start.tz_offset is not None else None,
        "analysed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # compact: label, start_s, end_s, confidence max, mean
        "events": [[e.label, e.start_s, e.end_s, float(e.confidence_max),
                    float(e.confidence_mean)] for e in result.events],
        "clips": result.clips,  # per event, relative to settings["clips"]["dir"]
    }


def is_done(entry: dict[str, Any] | None, job: Job, settings: dict[str, Any]) -> bool:
    return bool(entry) and entry.get("status") == "ok" and entry.get("size") == job.size \
        and entry.get("mtime_ns") == job.mtime_ns and entry.get("file") == job.rel \
        and entry.get("settings") == settings and all(p.is_file() for p in clip_paths(entry))


def clip_paths(entry: dict[str, Any]) -> list[Path]:
    clips = (entry.get("settings") or {}).get("clips")
    return [Path(clips["dir"]) / name for name in entry.get("clips") or []] if clips else []


def remove_old_clips(entries: Sequence[dict[str, Any]], settings: dict[str, Any]) -> None:
    """The clips of files analysed again, when they lie where this run writes its clips:
    their names (detection times) may change, and an orphan clip would match no row."""
    now = settings["clips"]
    for entry in entries:
        old = (entry.get("settings") or {}).get("clips")
        if now and old and old.get("dir") == now["dir"]:
            for path in clip_paths(entry):
                path.unlink(missing_ok=True)
