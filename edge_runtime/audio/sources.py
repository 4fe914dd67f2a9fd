"""Audio sources: microphone, audio file (WAV; FLAC and more with soundfile), raw PCM on stdin.

A source runs in the capture thread: `source.run(put, stop)` calls `put(block)` with float32
(frames, channels) blocks at the source's own rate until the audio ends or `stop` is set.
A live source (`live = True`) is never held back: when inference falls behind, the ring
buffer drops and counts its blocks (see detect.RingBuffer). A source that is not live (a
file, stdin that is a file or a pipe) waits instead, so nothing is lost.
"""

from __future__ import annotations

import logging
import os
import re
import select
import stat
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edge_runtime.audio.devices import import_pyaudio, input_devices, quiet_stderr, select_device
from edge_runtime.contract import wav
from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)

Put = Callable[[np.ndarray], None]

# A source nobody waits for (a file read as fast as possible, a blocking pipe) is read in
# blocks of at least this: the per-block costs (read, decode, conformer, the decoder's per-push
# numpy calls) are then amortised over 8 windows at a 0.5 s hop (measured on one thread: the
# whole process ~0.6-1 ms per audio second above invoke() + front end with 4 s blocks, ~2 ms
# with 1 s blocks), at ~3 MB more RSS. Block size changes no output (windows do not depend on
# it); a blocking pipe still hands on whatever has arrived (a read returns what is there).
BATCH_BLOCK_S = 4.0


def block_frames(block_s: float, sample_rate: int, live: bool) -> int:
    """Frames per block: `block_s` for live audio (it bounds latency), at least
    `BATCH_BLOCK_S` otherwise."""
    return max(1, round((block_s if live else max(block_s, BATCH_BLOCK_S)) * sample_rate))


class Source:
    """Base of the audio sources: rate, channels, whether it is live, and `run`."""

    sample_rate: int
    channels: int
    live: bool  # live audio is dropped (and counted) when inference falls behind
    clocked: bool = False  # paced by a sound card: event times follow the wall clock
    description: str
    warning: str = ""  # something the user should know about the input (a truncated file)

    def run(self, put: Put, stop: threading.Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------- files
# soundfile (libsndfile) is not in the `edge` extra: a recorder reads its own WAVs without it.
SOUNDFILE_HINT = "pip install soundfile, or pip install 'meerkit[analyze]'"


def open_file_source(path: str | Path, block_s: float = 0.1, realtime: bool = False) -> Source:
    """An audio file as a source: WAV by our own reader (no libsndfile needed), anything else
    (FLAC, OGG, AIFF, ...) by soundfile when it is installed; without it, FLAC is refused with
    the package to install."""
    path = Path(path)
    head = _head(path)
    if head[:4] in (b"RIFF", b"RF64", b""):  # WAV, or nothing at all: WavSource says what
        return WavSource(path, block_s, realtime)
    try:
        import soundfile
    except ImportError:
        if head[:4] == b"fLaC" or path.suffix.lower() == ".flac":
            raise UserError(f"{path}: reading FLAC needs the soundfile package ({SOUNDFILE_HINT}),"
                            " or convert it to WAV (`sox in.flac out.wav`)") from None
        return WavSource(path, block_s, realtime)  # says what it is not
    return SoundFileSource(path, soundfile, block_s, realtime)


def _head(path: Path) -> bytes:
    if not path.is_file():
        raise UserError(f"{path}: audio file not found")
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 16)
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None


class _Pace:
    """Hands blocks over no faster than real time when asked to, as a microphone would."""

    def __init__(self, sample_rate: int, realtime: bool):
        self.rate, self.realtime = sample_rate, realtime
        self.sent, self.t0 = 0, time.monotonic()

    def wait(self, frames: int, stop: threading.Event) -> bool:
        """Wait until `frames` more may go; False when `stop` was set meanwhile."""
        if self.realtime:
            delay = self.t0 + (self.sent + frames) / self.rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return False
        self.sent += frames
        return True


class WavSource(Source):
    """A WAV file read block by block (never whole: an hour of audio would not fit the RSS
    budget), as fast as possible or paced to real time."""

    def __init__(self, path: str | Path, block_s: float = 0.1, realtime: bool = False):
        self.path = Path(path)
        head = _head(self.path)
        self.info, self._offset = wav._parse(self.path, head, self.path.stat().st_size)
        if self.info.frames == 0:
            raise UserError(f"{self.path}: WAV file has no audio samples")
        if self.info.truncated:
            self.warning = (f"{self.path}: WAV data chunk is truncated; analysed the "
                            f"{self.info.duration_s:.1f} s present")
            log.warning("%s: WAV data chunk is truncated; reading the %d whole frames present",
                        self.path, self.info.frames)
        self.sample_rate, self.channels = self.info.sample_rate, self.info.channels
        self.block = block_frames(block_s, self.sample_rate, realtime)
        self.realtime = realtime
        self.live = realtime
        self.description = (f"{self.path} ({self.info.duration_s:.1f} s, {self.sample_rate} Hz, "
                            f"{self.channels} ch, {'float' if self.info.is_float else 'PCM'} "
                            f"{self.info.bits_per_sample}-bit"
                            f"{', real-time' if realtime else ''})")

    def run(self, put: Put, stop: threading.Event) -> None:
        info = self.info
        frame_bytes = info.channels * info.bits_per_sample // 8
        remaining = info.frames
        pace = _Pace(self.sample_rate, self.realtime)
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            while remaining > 0 and not stop.is_set():
                raw = fh.read(min(self.block, remaining) * frame_bytes)
                if not raw:
                    break
                x = wav.decode_pcm(raw, info.bits_per_sample, info.is_float, info.channels)
                remaining -= len(x)
                if not pace.wait(len(x), stop):
                    break
                put(x)


class SoundFileSource(Source):
    """Any file libsndfile decodes (FLAC, OGG, AIFF, ...), block by block, via soundfile."""

    def __init__(self, path: str | Path, soundfile: Any, block_s: float = 0.1,
                 realtime: bool = False):
        self.path, self.sf = Path(path), soundfile
        try:
            info = soundfile.info(str(self.path))
        except Exception as err:  # libsndfile's errors have no common public base class
            what = "cannot decode FLAC" if self.path.suffix.lower() == ".flac" else \
                "not a WAV file, nor audio that soundfile reads"
            raise UserError(f"{self.path}: {what} ({_one_line(err)})") from None
        if info.frames == 0:
            raise UserError(f"{self.path}: audio file has no audio samples")
        self.sample_rate, self.channels = int(info.samplerate), int(info.channels)
        self.subtype, self.frames = str(info.subtype), int(info.frames)
        self.block = block_frames(block_s, self.sample_rate, realtime)
        self.realtime = self.live = realtime
        self.description = (f"{self.path} ({self.frames / self.sample_rate:.1f} s, "
                            f"{self.sample_rate} Hz, {self.channels} ch, {info.format} "
                            f"{self.subtype}{', real-time' if realtime else ''})")

    def run(self, put: Put, stop: threading.Event) -> None:
        pace = _Pace(self.sample_rate, self.realtime)
        with self.sf.SoundFile(str(self.path)) as fh:
            for block in fh.blocks(blocksize=self.block, dtype="float32", always_2d=True):
                if stop.is_set() or not pace.wait(len(block), stop):
                    break
                put(block)


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def recording_start(path: str | Path, local_tz: str | None = None) -> datetime:
    """`audio.start_time = "filename"`: the first sample's UTC time from the recorder's header
    (AudioMoth comment, GUANO), else its name (`20240131_235959.WAV`, UTC unless `local_tz`),
    by `contract.recorder.recording_start`, the rules `meerkit analyze` uses too."""
    from edge_runtime.contract import recorder  # only for this setting: kept off start-up

    if not Path(path).is_file():  # the microphone, stdin, or a typo
        raise UserError(f"audio.start_time = \"filename\" needs an audio file as audio.input; "
                        f"{path} is not one")
    start = recorder.recording_start(path, local_tz=local_tz)
    if start.utc is None:
        # recording_start's note names batch flags when nothing was found: say it our way
        why = start.note if start.note.startswith("GUANO") else "it has neither"
        raise UserError(f"{path}: audio.start_time = \"filename\" needs a name like "
                        f"20240131_235959.WAV or a recorder header (AudioMoth comment, GUANO); "
                        f"{why}")
    return start.utc


def parse_start_time(spec: str, input_path: str) -> float | None:
    """audio.start_time -> Unix time of the first sample, or None for "when capture starts"."""
    if spec == "now":
        return None
    if spec == "filename":
        return recording_start(input_path).timestamp()
    if not re.match(r"\s*\d{4}-", spec):  # not even the start of a date: say what is allowed
        raise UserError(f"audio.start_time {spec!r}: expected now, filename or an ISO 8601 time "
                        "such as 2024-01-31T23:59:59Z")
    from edge_runtime.contract import recorder

    return recorder.parse_explicit_start(spec, "audio.start_time").timestamp()


# ------------------------------------------------------------------------- stdin
_STDIN_DTYPES = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", float(1 << 31)), "f32le": ("<f4", 1.0)}
STDIN_PACES = ("auto", "block", "realtime")


def stdin_pace_for(stream: BinaryIO) -> str:
    """What `audio.stdin_pace = "auto"` means for this stream: "block" (wait for inference,
    lose nothing) when it is a regular file or a pipe/FIFO, "realtime" (never hold the writer
    back, drop and count what inference cannot take) when it is clearly live: a character
    device (a terminal, a sound device node) or a socket.

    A pipe cannot tell `cat rec.raw |` from `arecord |`; both block. A live writer then loses
    audio on its side once the ring buffer and the pipe are full (arecord prints "overrun"),
    so live pipes should say `--audio-stdin-pace realtime`: the drops are then counted here
    and event times stay true across them. A stream without a file descriptor (an in-process
    reader) keeps the old behaviour, realtime."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return "realtime"
    return "block" if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) else "realtime"


class StdinSource(Source):
    """Raw interleaved PCM on stdin (e.g. `arecord -f S16_LE -r 48000 -c 2 | edge-runtime -i -`).
    `pace`: "block", "realtime" or "auto" (decided from what stdin is: `stdin_pace_for`)."""

    def __init__(self, fmt: str, rate: int, channels: int, block_s: float = 0.1,
                 stream: BinaryIO | None = None, pace: str = "auto"):
        if fmt not in _STDIN_DTYPES:
            raise UserError(f"stdin.format {fmt!r} is not one of {', '.join(_STDIN_DTYPES)}")
        if pace not in STDIN_PACES:
            raise UserError(f"audio.stdin_pace {pace!r} is not one of {', '.join(STDIN_PACES)}")
        self.dtype, self.scale = _STDIN_DTYPES[fmt]
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.sample_rate, self.channels = rate, channels
        self.frame_bytes = np.dtype(self.dtype).itemsize * channels
        self.pace = stdin_pace_for(self.stream) if pace == "auto" else pace
        self.live = self.pace == "realtime"
        self.block_bytes = block_frames(block_s, rate, self.live) * self.frame_bytes
        self.description = (f"stdin ({fmt}, {rate} Hz, {channels} ch, "
                            f"{'realtime: drops when behind' if self.live else 'blocking'}"
                            f"{' (auto)' if pace == 'auto' else ''})")
        self.bytes_read = 0

    def _reader(self, stop: threading.Event) -> Callable[[], bytes]:
        """A read function that returns b"" at the end of input or once `stop` is set.
        A real file descriptor is polled with select, so a stop request is honoured even when
        no data comes (a thread blocked in a buffered read would hang interpreter shutdown)."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is None:
            read = getattr(self.stream, "read1", self.stream.read)
            return lambda: b"" if stop.is_set() else read(self.block_bytes)

        def read_fd() -> bytes:
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    return os.read(fd, self.block_bytes)
            return b""

        return read_fd

    def run(self, put: Put, stop: threading.Event) -> None:
        pending = b""
        read = self._reader(stop)
        while True:
            chunk = read()
            if not chunk:
                break
            self.bytes_read += len(chunk)
            pending += chunk
            whole = len(pending) - len(pending) % self.frame_bytes
            if whole:
                x = np.frombuffer(pending[:whole], self.dtype).astype(np.float32) / self.scale
                pending = pending[whole:]
                put(x.reshape(-1, self.channels))
        if pending:
            log.warning("stdin ended inside a sample frame: %d trailing bytes ignored "
                        "(check stdin.format/stdin.channels)", len(pending))


# ------------------------------------------------------------------------- microphone
class MicSource(Source):
    """A PortAudio input stream in callback mode: the callback (PortAudio's thread) only
    copies the block into the ring buffer, and counts the input overflows PortAudio reports."""

    def __init__(self, device: str, rate: int, channels: int, model_rate: int,
                 block_s: float = 0.1):
        self._pyaudio = import_pyaudio()
        # ALSA/JACK print pages of probing noise while PortAudio starts and probes formats
        with quiet_stderr():
            self.pa = self._pyaudio.PyAudio()
            try:
                self._open_device(device, rate, channels, model_rate)
            except BaseException:
                self.pa.terminate()
                raise
        self.block = max(1, round(block_s * self.sample_rate))
        self.live = True
        self.clocked = True
        self.overflows = 0  # reported by PortAudio: audio lost before it reached us
        self.description = (f"microphone {self.device.index} ({self.device.name}), "
                            f"{self.sample_rate} Hz, {self.channels} ch")

    def _open_device(self, device: str, rate: int, channels: int, model_rate: int) -> None:
        try:
            default = self.pa.get_default_input_device_info()["index"]
        except OSError:
            default = None
        self.device = select_device(input_devices(self.pa), device, default)
        self.channels = min(channels, self.device.channels)
        self.sample_rate = rate or (model_rate if self._supported(model_rate)
                                    else self.device.default_rate)
        if not self._supported(self.sample_rate):
            raise UserError(f"input device {self.device.index} ({self.device.name}) does not "
                            f"support {self.sample_rate} Hz x {self.channels} ch")

    def _supported(self, rate: int) -> bool:
        try:
            return bool(self.pa.is_format_supported(
                rate, input_device=self.device.index, input_channels=self.channels,
                input_format=self._pyaudio.paFloat32))
        except ValueError:
            return False

    def run(self, put: Put, stop: threading.Event) -> None:
        pa_mod = self._pyaudio

        def callback(data, frames, time_info, status):
            if status & pa_mod.paInputOverflow:
                self.overflows += 1
            put(np.frombuffer(data, np.float32).reshape(-1, self.channels).copy())
            return None, pa_mod.paContinue

        stream = self.pa.open(format=pa_mod.paFloat32, channels=self.channels,
                              rate=self.sample_rate, input=True,
                              input_device_index=self.device.index,
                              frames_per_buffer=self.block, stream_callback=callback)
        try:
            stream.start_stream()
            while not stop.wait(0.2) and stream.is_active():
                pass
        finally:
            stream.stop_stream()
            stream.close()
            self.pa.terminate()
