"""Optional: a WAV clip of each detection with pre- and post-roll, under a retention limit.

The recorder keeps the last `pre_s + max_event_s + post_s` seconds of model-rate audio; a
clip is written once the audio `post_s` after the event's end has arrived (or at the end of
the stream). Oldest clips are deleted beyond `max_files` or `max_mb`. Clips never hold back
publishing: the fan-out hands each detection to the delivery sink first, and a clip that
cannot be written (full disk) is logged, not raised (`essential = False`).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from edge_runtime.detect import Detection

log = logging.getLogger(__name__)


class ClipRecorder:
    """A sink (detections to write) and an audio tap (the recent audio they are cut from)."""

    essential = False

    def __init__(self, directory: str | Path, sample_rate: int, pre_s: float = 1.0,
                 post_s: float = 1.0, max_files: int = 500, max_mb: float = 200.0,
                 max_event_s: float = 30.0):
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"clips.dir {self.dir}: cannot create ({err.strerror})") from None
        self.sr, self.pre, self.post = sample_rate, round(pre_s * sample_rate), round(post_s * sample_rate)
        self.keep = self.pre + self.post + round(max_event_s * sample_rate)
        self.max_files, self.max_bytes = max_files, int(max_mb * 1e6)
        self._chunks: deque[tuple[int, np.ndarray]] = deque()  # (first index, samples)
        self._held = 0
        self._newest = 0  # one past the newest sample index
        self._pending: list[Detection] = []
        self.written = 0

    def feed(self, mono: np.ndarray, at: int) -> None:
        self._chunks.append((at, np.asarray(mono, np.float32)))
        self._held += len(mono)
        self._newest = at + len(mono)
        while self._chunks and self._held - len(self._chunks[0][1]) >= self.keep:
            self._held -= len(self._chunks.popleft()[1])
        ready = [d for d in self._pending if self._end(d) <= self._newest]
        for d in ready:
            self._pending.remove(d)
            self._write(d)

    def handle(self, detections: list[Detection]) -> None:
        self._pending.extend(detections)

    def status(self, stats: dict[str, Any]) -> None:
        pass

    def close(self, timeout_s: float) -> int:
        """Write the clips still waiting for their post-roll (the stream has ended)."""
        for d in self._pending:
            self._write(d)
        self._pending = []
        return 0

    def _end(self, d: Detection) -> int:
        return round(d.stream_end_s * self.sr) + self.post

    def _write(self, d: Detection) -> None:
        a, b = round(d.stream_start_s * self.sr) - self.pre, self._end(d)
        clip = np.zeros(max(0, b - a), np.float32)
        for start, x in self._chunks:
            lo, hi = max(a, start), min(b, start + len(x))
            if hi > lo:
                clip[lo - a : hi - a] = x[lo - start : hi - start]
        stamp = datetime.fromtimestamp(d.start, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", d.label)
        path = self.dir / f"{stamp}_{label}_{d.event_id}.wav"
        try:
            write_wav(path, clip, self.sr)
        except OSError as err:
            log.error("clip %s not written: %s", path, err.strerror)
            return
        self.written += 1
        self._enforce_retention()

    def _enforce_retention(self) -> None:
        files = sorted(self.dir.glob("*.wav"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and (len(files) > self.max_files or total > self.max_bytes):
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
