"""`meerkit analyze --clips DIR`: one audio clip per detection, with pre- and post-roll.

Clips keep the recording's own rate, channels and sample format (16-bit stays 16-bit, float
stays float; FLAC holds at most 24 bits), so a clip's samples are the recording's samples. A
clip is named after its detection, `<rel dir>/<stem>_<start>s-<end>s_<label>.<wav|flac>`
(times of the detection within the file, to the millisecond), mirroring the card's folders,
and the `clip` column of the csv/raven-combined/parquet outputs holds that name relative to
DIR: a row finds its clip and a clip its row. Cutting reads the file a second time, block by
block, holding only the clips still open; each clip is written atomically.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edge_runtime.audio import SOUNDFILE_HINT, Source, WavSource
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import Event
from edge_runtime.contract.wav import write_wav

CLIP_FORMATS = ("wav", "flac")


@dataclass(frozen=True)
class ClipSettings:
    dir: str  # the clips folder
    pre_s: float = 1.0  # audio kept before each detection
    post_s: float = 1.0  # and after it
    format: str = "wav"  # "wav" or "flac"

    def check(self) -> None:
        """User errors up front, before any file is analysed."""
        if self.format not in CLIP_FORMATS:
            raise UserError(f"--clips-format {self.format!r}: choose from "
                            f"{', '.join(CLIP_FORMATS)}")
        for flag, value in (("--clips-pre-s", self.pre_s), ("--clips-post-s", self.post_s)):
            if not value >= 0:
                raise UserError(f"{flag} {value:g}: must be >= 0")
        if self.format == "flac":
            _soundfile("--clips-format flac")

    def describe(self) -> dict[str, Any]:
        """What the manifest compares: other clips mean analysing again."""
        return {"dir": os.path.abspath(self.dir), "pre_s": self.pre_s, "post_s": self.post_s,
                "format": self.format}


def clip_name(rel: str, label: str, start_s: float, end_s: float, fmt: str) -> str:
    """The clip of a detection, relative to the clips folder (posix)."""
    p = PurePosixPath(rel)
    safe = re.sub(r"[^A-Za-z0-9-]+", "_", label).strip("_") or "label"
    return (p.parent / f"{p.stem}_{start_s:.3f}s-{end_s:.3f}s_{safe}.{fmt}").as_posix()


def write_clips(source: Source, rel: str, events: Sequence[Event],
                clips: ClipSettings) -> list[str]:
    """Cut and write the clip of every event (in `events` order); returns their names."""
    rate = source.sample_rate
    names = [clip_name(rel, e.label, e.start_s, e.end_s, clips.format) for e in events]
    spans = sorted((max(0, round((e.start_s - clips.pre_s) * rate)),
                    max(1, round((e.end_s + clips.post_s) * rate)), name)
                   for e, name in zip(events, names, strict=True))
    if not spans:
        return names
    writer = _Writer(Path(clips.dir), rate, source, clips.format)
    parts: list[list[np.ndarray]] = [[] for _ in spans]
    state = {"pos": 0, "first": 0}  # samples read; clips before `first` are written
    done = threading.Event()

    def put(block: np.ndarray) -> None:
        pos, end = state["pos"], state["pos"] + len(block)
        for i in range(state["first"], len(spans)):
            lo, hi, _ = spans[i]
            if lo >= end:  # sorted by start: the rest start later still
                break
            if max(lo, pos) < min(hi, end):
                parts[i].append(block[max(lo, pos) - pos : min(hi, end) - pos].copy())
        state["pos"] = end
        while state["first"] < len(spans) and spans[state["first"]][1] <= end:
            _flush(state["first"])
            state["first"] += 1
        if state["first"] == len(spans):
            done.set()  # the rest of the file holds no clip: stop reading

    def _flush(i: int) -> None:
        writer.write(spans[i][2], np.concatenate(parts[i]) if parts[i] else
                     np.zeros((0, source.channels), np.float32))
        parts[i] = []

    source.run(put, done)
    for i in range(state["first"], len(spans)):  # clips cut short by the end of the file
        _flush(i)
    return names


class _Writer:
    """Writes clips in the recording's sample format, atomically."""

    def __init__(self, folder: Path, rate: int, source: Source, fmt: str):
        self.folder, self.rate, self.fmt = folder, rate, fmt
        bits = _source_bits(source)
        self.wav_bits = bits
        self.flac_subtype = "PCM_16" if bits == 16 else "PCM_24"
        self.sf = _soundfile("--clips-format flac") if fmt == "flac" else None

    def write(self, name: str, samples: np.ndarray) -> None:
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        if self.sf is not None:
            self.sf.write(str(tmp), samples, self.rate, subtype=self.flac_subtype, format="FLAC")
        else:
            write_wav(tmp, samples, self.rate, bits=self.wav_bits)
        os.replace(tmp, path)


def _source_bits(source: Source) -> int:
    """write_wav's `bits` that keeps the source's samples exactly: 16 or 24-bit PCM as they
    are, 8-bit PCM as 16, anything else (float, 32-bit PCM) as float32."""
    if isinstance(source, WavSource):
        info = source.info
        if info.is_float:
            return -32
        return 16 if info.bits_per_sample <= 16 else 24 if info.bits_per_sample == 24 else -32
    subtype = getattr(source, "subtype", "")
    return {"PCM_S8": 16, "PCM_U8": 16, "PCM_16": 16, "PCM_24": 24}.get(subtype, -32)


def _soundfile(what: str) -> Any:
    try:
        return importlib.import_module("soundfile")
    except ImportError:
        raise UserError(f"{what} needs the soundfile package ({SOUNDFILE_HINT})") from None
