"""Audio sources (microphone, WAV file, raw PCM on stdin) and conversion to the model's format.

A source runs in the capture thread: `source.run(put, stop)` calls `put(block)` with float32
(frames, channels) blocks at the source's own rate until the audio ends or `stop` is set.
`put` never blocks for live sources (see stream.RingBuffer), so capture keeps pace with the
sound card whatever inference does.

`Conformer` turns any rate and channel count into the model's mono rate on the inference
thread: channel select or mix, non-finite samples counted and zeroed, then resampling with
soxr when installed, else a numpy windowed-sinc (Kaiser, 16 zero crossings) interpolator —
slower, but band-limited (it low-passes below the new Nyquist when downsampling), streaming
and within ~1e-3 of soxr on speech-band audio.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import select
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edge_runtime.contract import wav
from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)

Put = Callable[[np.ndarray], None]


class Source:
    """Base of the audio sources: rate, channels, whether it is live, and `run`."""

    sample_rate: int
    channels: int
    live: bool  # live audio is dropped (and counted) when inference falls behind
    clocked: bool = False  # paced by a sound card: event times follow the wall clock
    description: str

    def run(self, put: Put, stop: threading.Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError


# ------------------------------------------------------------------------- WAV files
class WavSource(Source):
    """A WAV file read block by block (never whole: an hour of audio would not fit the RSS
    budget), as fast as possible or paced to real time."""

    def __init__(self, path: str | Path, block_s: float = 0.1, realtime: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: audio file not found")
        try:
            with open(self.path, "rb") as fh:
                head = fh.read(1 << 16)
        except OSError as err:
            raise UserError(f"{self.path}: cannot read ({err.strerror})") from None
        if head[:4] == b"fLaC" or self.path.suffix.lower() == ".flac":
            raise UserError(f"{self.path}: FLAC is not supported on the device (no libsndfile "
                            "in the edge install); convert it first, e.g. `sox in.flac out.wav`")
        self.info, self._offset = wav._parse(self.path, head, self.path.stat().st_size)
        if self.info.frames == 0:
            raise UserError(f"{self.path}: WAV file has no audio samples")
        if self.info.truncated:
            log.warning("%s: WAV data chunk is truncated; reading the %d whole frames present",
                        self.path, self.info.frames)
        self.sample_rate, self.channels = self.info.sample_rate, self.info.channels
        self.block = max(1, round(block_s * self.sample_rate))
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
        sent = 0
        t0 = time.monotonic()
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            while remaining > 0 and not stop.is_set():
                n = min(self.block, remaining)
                raw = fh.read(n * frame_bytes)
                if not raw:
                    break
                x = wav.decode_pcm(raw, info.bits_per_sample, info.is_float, info.channels)
                remaining -= len(x)
                if self.realtime:
                    # a microphone hands over a block once it has been recorded
                    delay = t0 + (sent + len(x)) / self.sample_rate - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                sent += len(x)
                put(x)


def recording_start(path: str | Path) -> datetime:
    """AudioMoth-style file names (`20240131_235959.WAV`, UTC) -> the first sample's time."""
    match = re.search(r"(\d{8})_(\d{6})", Path(path).stem)
    if not match:
        raise UserError(f"{path}: audio.start_time = \"filename\" needs a name like "
                        "20240131_235959.WAV (AudioMoth, UTC)")
    try:
        return datetime.strptime("".join(match.groups()), "%Y%m%d%H%M%S").replace(
            tzinfo=timezone.utc)
    except ValueError:
        raise UserError(f"{path}: {match.group(0)} is not a valid date and time") from None


def parse_start_time(spec: str, input_path: str) -> float | None:
    """audio.start_time -> Unix time of the first sample, or None for "when capture starts"."""
    if spec == "now":
        return None
    if spec == "filename":
        return recording_start(input_path).timestamp()
    try:
        when = datetime.fromisoformat(spec.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"audio.start_time {spec!r}: expected now, filename or an ISO 8601 time "
                        "such as 2024-01-31T23:59:59Z") from None
    if when.tzinfo is None:
        raise UserError(f"audio.start_time {spec!r} has no time zone; add Z or +hh:mm")
    return when.timestamp()


# ------------------------------------------------------------------------- stdin
_STDIN_DTYPES = {"s16le": ("<i2", 32768.0), "s32le": ("<i4", float(1 << 31)), "f32le": ("<f4", 1.0)}


class StdinSource(Source):
    """Raw interleaved PCM on stdin (e.g. `arecord -f S16_LE -r 48000 -c 2 | edge-runtime -i -`)."""

    def __init__(self, fmt: str, rate: int, channels: int, block_s: float = 0.1,
                 stream: BinaryIO | None = None):
        if fmt not in _STDIN_DTYPES:
            raise UserError(f"stdin.format {fmt!r} is not one of {', '.join(_STDIN_DTYPES)}")
        self.dtype, self.scale = _STDIN_DTYPES[fmt]
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.sample_rate, self.channels = rate, channels
        self.frame_bytes = np.dtype(self.dtype).itemsize * channels
        self.block_bytes = max(1, round(block_s * rate)) * self.frame_bytes
        self.live = True  # a pipe from a sound card: never hold the writer back
        self.description = f"stdin ({fmt}, {rate} Hz, {channels} ch)"
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
def import_pyaudio():
    try:
        return importlib.import_module("pyaudio")
    except ImportError:
        raise UserError("microphone input needs PyAudio: `pip install 'meerkit[mic]'` "
                        "(and `apt install portaudio19-dev` before it)") from None


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: int


def input_devices(pa) -> list[InputDevice]:
    """The capture devices PortAudio sees (devices without input channels are left out)."""
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append(InputDevice(i, str(info.get("name", "")), int(info["maxInputChannels"]),
                                   int(info.get("defaultSampleRate", 0))))
    return out


def select_device(devices: list[InputDevice], spec: str, default: int | None = None
                  ) -> InputDevice:
    """`spec`: "" = the default input (else the first), a device index, or a name substring
    (case-insensitive; must match exactly one device)."""
    if not devices:
        raise UserError("no audio input device found: PortAudio lists no capture devices "
                        "(is the USB microphone / sound card connected? check `arecord -l`; "
                        "is the user in the 'audio' group?)")
    listing = "; ".join(f"{d.index}: {d.name}" for d in devices)
    if not spec:
        return next((d for d in devices if d.index == default), devices[0])
    if spec.strip().isdigit():
        for d in devices:
            if d.index == int(spec):
                return d
        raise UserError(f"audio.mic_device {spec}: no input device with that index ({listing})")
    matches = [d for d in devices if spec.lower() in d.name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"audio.mic_device {spec!r} matches no input device ({listing})")
    raise UserError(f"audio.mic_device {spec!r} matches {len(matches)} devices "
                    f"({'; '.join(f'{d.index}: {d.name}' for d in matches)}); use the index")


def list_devices() -> list[InputDevice]:
    pyaudio = import_pyaudio()
    pa = pyaudio.PyAudio()
    try:
        return input_devices(pa)
    finally:
        pa.terminate()


class MicSource(Source):
    """A PortAudio input stream in callback mode: the callback (PortAudio's thread) only
    copies the block into the ring buffer, and counts the input overflows PortAudio reports."""

    def __init__(self, device: str, rate: int, channels: int, model_rate: int,
                 block_s: float = 0.1):
        self._pyaudio = import_pyaudio()
        self.pa = self._pyaudio.PyAudio()
        try:
            default = self.pa.get_default_input_device_info()["index"]
        except OSError:
            default = None
        try:
            self.device = select_device(input_devices(self.pa), device, default)
        except UserError:
            self.pa.terminate()
            raise
        self.channels = min(channels, self.device.channels)
        self.sample_rate = rate or (model_rate if self._supported(model_rate)
                                    else self.device.default_rate)
        if not self._supported(self.sample_rate):
            self.pa.terminate()
            raise UserError(f"input device {self.device.index} ({self.device.name}) does not "
                            f"support {self.sample_rate} Hz x {self.channels} ch")
        self.block = max(1, round(block_s * self.sample_rate))
        self.live = True
        self.clocked = True
        self.overflows = 0  # reported by PortAudio: audio lost before it reached us
        self.description = (f"microphone {self.device.index} ({self.device.name}), "
                            f"{self.sample_rate} Hz, {self.channels} ch")

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


# ------------------------------------------------------------------------- conversion
class SincResampler:
    """Streaming band-limited resampler in numpy (the fallback when soxr is missing).

    Output sample n sits at input position n * in_rate / out_rate (exact integer arithmetic,
    so hours of audio do not drift); it is a Kaiser-windowed sinc sum over `zeros` zero
    crossings each side, with the cutoff at the lower of the two Nyquist frequencies.
    """

    def __init__(self, in_rate: int, out_rate: int, zeros: int = 16, beta: float = 8.6):
        g = math.gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g  # position n -> n * down / up
        self.cutoff = min(1.0, out_rate / in_rate)
        self.half = math.ceil(zeros / self.cutoff)  # taps each side, in input samples
        self.beta = beta
        self._buf = np.zeros(self.half, np.float64)  # input history; buf[0] is sample `_base`
        self._base = -self.half
        self._n_in = 0  # input samples received
        self._n_out = 0  # output samples produced
        self._taps = np.arange(-self.half + 1, self.half + 1)
        self._table = self._kernel(np.arange(self.up) / self.up) if self.up <= 4096 else None

    def _kernel(self, frac: np.ndarray) -> np.ndarray:
        """(len(frac), taps) weights for outputs at fractional offsets `frac` past a sample."""
        dist = frac[:, None] - self._taps[None, :]  # output position - tap position
        window = np.i0(self.beta * np.sqrt(np.clip(1 - (dist / (self.half + 1)) ** 2, 0, 1)))
        return self.cutoff * np.sinc(self.cutoff * dist) * window / np.i0(self.beta)

    def _run(self, x: np.ndarray, final: bool) -> np.ndarray:
        self._buf = np.concatenate([self._buf, np.asarray(x, np.float64)])
        self._n_in += len(x)
        end = self._base + len(self._buf)  # one past the last input sample held
        if final:  # the last outputs: every n with position < n_in
            stop = -(-self._n_in * self.up // self.down)
            pad = self.half + 1
            self._buf = np.concatenate([self._buf, np.zeros(pad)])
        else:  # outputs whose right-hand taps are all here
            stop = max(self._n_out, (end - self.half) * self.up // self.down)
        n = np.arange(self._n_out, stop, dtype=np.int64)
        if not len(n):
            return np.zeros(0, np.float32)
        pos_num = n * self.down  # position = pos_num / up
        left = pos_num // self.up
        phase = pos_num - left * self.up
        idx = left[:, None] + self._taps[None, :] - self._base
        # `up` distinct fractional positions: one weight row per phase, computed once
        w = self._table[phase] if self._table is not None else self._kernel(phase / self.up)
        y = (self._buf[idx] * w).sum(axis=1)
        self._n_out = int(stop)
        keep_from = int((self._n_out * self.down) // self.up) - self.half  # input still needed
        drop = max(0, keep_from - self._base)
        self._buf, self._base = self._buf[drop:], self._base + drop
        return y.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        return self._run(x, final=False)

    def flush(self) -> np.ndarray:
        return self._run(np.zeros(0), final=True)


class SoxrResampler:
    def __init__(self, in_rate: int, out_rate: int):
        soxr = importlib.import_module("soxr")
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def process(self, x: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(np.asarray(x, np.float32), last=False)

    def flush(self) -> np.ndarray:
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)


def make_resampler(in_rate: int, out_rate: int, kind: str = "auto"):
    if in_rate == out_rate:
        return None
    if kind in ("auto", "soxr"):
        try:
            return SoxrResampler(in_rate, out_rate)
        except ImportError:
            if kind == "soxr":
                raise UserError("audio.resampler = soxr but soxr is not installed "
                                "(`pip install soxr`)") from None
            log.info("soxr not installed: resampling %d -> %d Hz with the numpy fallback",
                     in_rate, out_rate)
    return SincResampler(in_rate, out_rate)


class Conformer:
    """(frames, channels) blocks at any rate -> mono float32 at the model's rate."""

    def __init__(self, in_rate: int, in_channels: int, out_rate: int, channel: str = "mix",
                 resampler: str = "auto"):
        self.in_rate, self.out_rate = in_rate, out_rate
        if channel != "mix" and int(channel) >= in_channels:
            raise UserError(f"audio.channel {channel}: the input has only {in_channels} "
                            f"channel(s) (0-based index)")
        self.channel = None if channel == "mix" else int(channel)
        self.kind = resampler
        self._resampler = make_resampler(in_rate, out_rate, resampler)
        self.nonfinite = 0  # NaN/Inf samples seen (replaced by 0)

    def reset(self) -> None:
        """After a gap in the input: the resampler must not bridge it."""
        self._resampler = make_resampler(self.in_rate, self.out_rate, self.kind)

    def process(self, block: np.ndarray) -> np.ndarray:
        x = np.asarray(block, np.float32)
        if x.ndim == 1:
            x = x[:, None]
        bad = ~np.isfinite(x)
        if bad.any():
            if not self.nonfinite:
                log.warning("input audio contains NaN/Inf samples: replacing them with 0 "
                            "(counted in status as nonfinite_samples; warned once)")
            self.nonfinite += int(bad.sum())
            x = np.where(bad, np.float32(0), x)
        mono = x[:, self.channel] if self.channel is not None else (
            x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32))
        return self._resampler.process(mono) if self._resampler else np.ascontiguousarray(mono)

    def flush(self) -> np.ndarray:
        return self._resampler.flush() if self._resampler else np.zeros(0, np.float32)
