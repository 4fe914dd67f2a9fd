"""Optional: a WAV clip of each detection with pre- and post-roll, under a retention limit.

The recorder keeps the last `pre_s + max_event_s + post_s` seconds of model-rate audio; a
clip is written once the audio `post_s` after the event's end has arrived (or at the end of
the stream). Oldest clips are deleted beyond `max_files` or `max_mb`. Clips never hold back
publishing: the fan-out hands each detection to the delivery sink first, and a clip that
cannot be written (full disk) is logged, not raised (`essential = False`).

Linking (detection schema 2): a clip's file name, offset and length are known when its event
closes (`<onset UTC>_<label>_<event_id>.wav`, pre_s + event + post_s; audio before the stream
start or after its end is silence), so `reference(d)` gives the detection its `clip` object at
once, before the clip exists (why: edge_runtime/message.py). Once a clip is written its bytes
go to `on_written` (file name, bytes as written), which `clips.mqtt` points at the MQTT
sink's clip sender.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.config import RuntimeConfig
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.wav import write_wav
from edge_runtime.detect import Detection

log = logging.getLogger(__name__)

ClipWritten = Callable[[Detection, str, bytes], None]  # (detection, file name, file bytes)


class ClipRecorder:
    """A sink (detections to write) and an audio tap (the recent audio they are cut from)."""

    essential = False

    def __init__(self, directory: str | Path, sample_rate: int, pre_s: float = 1.0,
                 post_s: float = 1.0, max_files: int = 500, max_mb: float = 200.0,
                 max_event_s: float = 30.0, topic_for: Callable[[str], str] | None = None,
                 on_written: ClipWritten | None = None):
        """`topic_for`: event_id -> the MQTT topic its clip is published on (None: clips stay
        on the device); `on_written`: told of every clip written."""
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
        self.topic_for, self.on_written = topic_for, on_written

    def file_name(self, d: Detection) -> str:
        """Deterministic: the same detection always names the same file."""
        stamp = datetime.fromtimestamp(d.start, timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", d.label)
        return f"{stamp}_{label}_{d.event_id}.wav"

    def reference(self, d: Detection) -> dict[str, Any]:
        """The detection's `clip` object (schema 2), known before the clip is written."""
        a, b = self._span(d)
        ref: dict[str, Any] = {"file": self.file_name(d), "format": "wav",
                               "offset_s": round(self.pre / self.sr, 6),
                               "duration_s": round((b - a) / self.sr, 6)}
        if self.topic_for is not None:
            ref["topic"] = self.topic_for(d.event_id)
        return ref

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

    def _span(self, d: Detection) -> tuple[int, int]:
        """The clip's first and one-past-last sample index."""
        return round(d.stream_start_s * self.sr) - self.pre, self._end(d)

    def _write(self, d: Detection) -> None:
        a, b = self._span(d)
        clip = np.zeros(max(0, b - a), np.float32)
        for start, x in self._chunks:
            lo, hi = max(a, start), min(b, start + len(x))
            if hi > lo:
                clip[lo - a : hi - a] = x[lo - start : hi - start]
        path = self.dir / self.file_name(d)
        try:
            write_wav(path, clip, self.sr)
            data = path.read_bytes() if self.on_written is not None else b""
        except OSError as err:
            log.error("clip %s not written: %s", path, err.strerror)
            return
        self.written += 1
        self._enforce_retention()
        if self.on_written is not None:
            self.on_written(d, path.name, data)

    def _enforce_retention(self) -> None:
        files = sorted(self.dir.glob("*.wav"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        while files and (len(files) > self.max_files or total > self.max_bytes):
            oldest = files.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)


def clip_recorder(cfg: RuntimeConfig, sample_rate: int) -> ClipRecorder:
    """The recorder `[clips]` asks for; with `clips.mqtt` (and MQTT on) its references name
    the topic each clip will be published on (the caller connects `on_written`)."""
    from edge_runtime.publish import clip_topic

    c = cfg.clips
    topic_for = None
    if c.mqtt and cfg.mqtt.enabled:
        topic_for = partial(clip_topic, cfg.mqtt, cfg.device_id)
    elif c.mqtt:
        log.warning("clips.mqtt is on but MQTT is not (mqtt.enabled = false): clips stay in %s",
                    c.dir)
    return ClipRecorder(c.dir, sample_rate, c.pre_s, c.post_s, c.max_files, c.max_mb,
                        cfg.model.max_duration_s, topic_for)
