"""Audio -> `Detection`s: capture thread -> bounded ring buffer -> inference thread -> windows
-> decoder. No JSON, no MQTT: what happens to a detection is the sinks' business
(`edge_runtime.sinks`), its wire format is `edge_runtime.message`.

* `RingBuffer` holds captured blocks, each stamped with its index in the source's sample
  count. Live sources never wait: when inference falls behind and the buffer is full, the
  incoming block is dropped and counted (status: `dropped_audio_s`, `overruns`). Files read
  as fast as possible wait instead (back-pressure): there is no sound card to keep up with.
* `Detector` (no threads) turns model-rate mono audio into `Detection`s with
  `edge_runtime.contract.windows.WindowedStream` + `edge_runtime.contract.events.StreamingDecoder` — the same
  objects the offline tools use, so a replayed file gives the offline events; batch analysis
  (`edge_runtime.batch`) is the same Detector fed from files. A gap in the input (dropped
  audio) ends the current segment (its events are closed) and starts a new one at the right
  time: event times never slide after an overrun.
* Event ids are sha256(device, model sha256, label, onset sample)[:16] with the onset as an
  absolute sample index (Unix time x sample rate): a resend, or a re-run of the same file with
  the same start time, gives the same id.
* `decoder_settings` is the one place where the card's per-label decoder settings meet the
  user's overrides (`edge-runtime` and `meerkit analyze` both call it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_runtime.audio import Conformer, Source
from edge_runtime.config import suggest
from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.events import DecoderConfig, Event, StreamingDecoder
from edge_runtime.contract.windows import WindowedStream, WindowFn, WindowGeometry
from edge_runtime.message import event_id

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------- ring buffer
class RingBuffer:
    """Bounded FIFO of (start index, samples) blocks between two threads."""

    def __init__(self, capacity_frames: int, wait_when_full: bool,
                 clock: Callable[[], float] = time.time):
        self.capacity = max(1, capacity_frames)
        self.clock = clock  # wall clock stamped on each block at capture (injected in tests)
        self.wait_when_full = wait_when_full
        self._blocks: deque[tuple[int, np.ndarray, float]] = deque()
        self._fill = 0
        self._next = 0  # source index of the next block put
        self._closed = False
        self._cond = threading.Condition()
        self.dropped_frames = 0
        self.overruns = 0
        self.high_water = 0

    def put(self, block: np.ndarray) -> None:
        n = len(block)
        with self._cond:
            if self._closed:
                return
            start, self._next = self._next, self._next + n
            if self._fill + n > self.capacity and self._fill:
                if not self.wait_when_full:
                    self.overruns += 1
                    self.dropped_frames += n
                    if self.overruns == 1 or self.overruns % 100 == 0:
                        log.warning("audio overrun: inference is behind, %d block(s) of audio "
                                    "dropped so far (see status dropped_audio_s)", self.overruns)
                    return
                while self._fill + n > self.capacity and self._fill and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            self._blocks.append((start, block, self.clock()))  # wall clock at capture
            self._fill += n
            self.high_water = max(self.high_water, self._fill)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> tuple[int, np.ndarray, float] | None:
        """The next (start index, block, wall time of its arrival); None at the end (closed
        and drained). Raises TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._blocks or self._closed, timeout):
                raise TimeoutError
            if not self._blocks:
                return None
            item = self._blocks.popleft()
            self._fill -= len(item[1])
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more input: get() drains what is buffered, then returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def fill(self) -> int:
        return self._fill


# ------------------------------------------------------------------------- detections
@dataclass(frozen=True)
class Detection:
    event_id: str
    label: str
    start: float  # Unix time of the onset
    end: float
    confidence_max: float
    confidence_mean: float
    onset_sample: int  # absolute: Unix time x sample rate
    stream_start_s: float  # onset relative to the stream start (clips, tests, batch)
    stream_end_s: float

    @property
    def duration_s(self) -> float:
        return self.end - self.start

    def event(self, file: str = "") -> Event:
        """As the offline tools' `Event`, in stream time (what batch analysis reports)."""
        return Event(self.label, self.stream_start_s, self.stream_end_s, self.confidence_max,
                     self.confidence_mean, file=file)


def decoder_settings(card: ModelCard, *, threshold: float | None = None,
                     thresholds: Mapping[str, float] | None = None,
                     hysteresis: float | None = None, min_duration_s: float | None = None,
                     merge_gap_s: float | None = None, max_duration_s: float | None = None,
                     emit_undetectable: bool = False,
                     where: str = "model.thresholds") -> DecoderConfig:
    """The card's per-label decoder settings with the user's overrides: `threshold` replaces
    every label's, then `thresholds` single labels (`where` names the setting in the error for
    a label the model does not have); any other value given replaces the card's for every
    label. The labels the card marks undetectable are off unless `emit_undetectable`."""
    labels = list(card.labels)
    on = [threshold] * len(labels) if threshold is not None else list(card.thresholds)
    for label, value in (thresholds or {}).items():
        if label not in labels:
            raise UserError(f"{where}: the model has no label {label!r}"
                            f"{suggest(label, labels)}; labels are {', '.join(labels)}")
        on[labels.index(label)] = value
    return card.decoder_config(on, hysteresis, min_duration_s, merge_gap_s, max_duration_s,
                               emit_undetectable)


class Detector:
    """Model-rate mono audio (with its sample index) -> detections. Not thread-safe.

    `start_time` (Unix time of sample 0) and `device_id` only enter the detections' absolute
    times and event ids; batch analysis of a file leaves them at their defaults and reads the
    stream-relative times."""

    def __init__(self, window_fn: WindowFn, card: ModelCard, geometry: WindowGeometry,
                 decoder: DecoderConfig, device_id: str = "", start_time: float = 0.0):
        self.fn, self.card, self.g, self.decoder_cfg = window_fn, card, geometry, decoder
        self.device_id, self.start_time = device_id, start_time
        self._origin = round(start_time * card.sample_rate)  # absolute index of sample 0
        self._segment = 0  # sample index where the current segment starts
        self._next = 0  # expected index of the next sample
        self.samples = 0  # samples processed
        self.segments = 1
        self._open()

    def _open(self) -> None:
        # Batches of windows amortise the per-call numpy overhead (the interpreter still runs
        # them one by one: artifacts have static batch-1 shapes).
        self._stream = WindowedStream(self.g, self.fn, batch=16)
        self._decoder = StreamingDecoder(self.card.labels, self.card.frame_rate_hz,
                                         self.decoder_cfg,
                                         start_s=self._segment / self.card.sample_rate)

    def _detections(self, events: list[Event]) -> list[Detection]:
        sr, fr = self.card.sample_rate, self.card.frame_rate_hz
        out = []
        for e in events:
            onset = self._origin + self._segment + round(e.onset_frame * sr / fr)
            out.append(Detection(
                event_id=event_id(self.device_id, self.card.sha256, e.label, onset),
                label=e.label, start=self.start_time + e.start_s, end=self.start_time + e.end_s,
                confidence_max=float(e.confidence_max), confidence_mean=float(e.confidence_mean),
                onset_sample=onset, stream_start_s=e.start_s, stream_end_s=e.end_s))
        return out

    def push(self, samples: np.ndarray, at: int | None = None) -> list[Detection]:
        """Add mono float32 samples whose first one has index `at` (default: contiguous)."""
        out: list[Detection] = []
        if at is not None and at != self._next:
            out = self._close_segment()
            self._segment = self._next = at
            self.segments += 1
            self._open()
        self._next += len(samples)
        self.samples += len(samples)
        frames = self._stream.push(samples)
        if frames.size:
            out += self._detections(self._decoder.push(frames))
        return out

    def _close_segment(self) -> list[Detection]:
        out: list[Detection] = []
        if self._next > self._segment:
            frames = self._stream.flush()
            if frames.size:
                out += self._detections(self._decoder.push(frames))
        out += self._detections(self._decoder.flush())
        return out

    def flush(self) -> list[Detection]:
        """End of the stream: every remaining event."""
        out = self._close_segment()
        self._segment = self._next
        self._open()
        return out


# ------------------------------------------------------------------------- threads
class Output(Protocol):
    """Where the pipeline hands its results (`edge_runtime.sinks.FanOut`); it never knows what
    happens to them."""

    def handle(self, detections: list[Detection]) -> None:
        """New detections (never an empty list)."""

    def feed(self, mono: np.ndarray, at: int) -> None:
        """Model-rate mono samples, `at` = index of the first (clips keep recent audio)."""


class Progress(Protocol):
    """Told how much audio arrived and how much was processed (edge_runtime.watchdog)."""

    def audio_received(self, frames: int) -> None: ...

    def audio_processed(self, samples: int) -> None: ...


class Pipeline:
    """Runs a source and detection: a live source in a capture thread feeding an inference
    thread through the ring buffer; a source that is not live (a file, a blocking pipe) inline
    in the inference thread, with no hand-off per block (nothing to keep up with, so nothing a
    second thread would buy but lock traffic and GIL switches)."""

    def __init__(self, source: Source, conformer: Conformer, detector: Detector, output: Output,
                 buffer_s: float = 30.0, max_clock_drift_s: float = 0.2, drift_blocks: int = 50,
                 progress: Progress | None = None, clock: Callable[[], float] = time.time):
        self.source, self.conformer, self.detector = source, conformer, detector
        self.progress = progress
        self.max_clock_drift_s, self.drift_blocks = max_clock_drift_s, drift_blocks
        self.reanchors = 0
        self.output = output
        self.inline = not source.live
        self.ring = RingBuffer(round(buffer_s * source.sample_rate), wait_when_full=not source.live,
                               clock=clock)
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.busy_s = 0.0  # inference-thread time spent processing (not waiting)
        self.detections = 0
        self.started_at = time.monotonic()
        # per-block state of the inference side
        self._ratio = detector.card.sample_rate / source.sample_rate
        self._clocked = bool(getattr(source, "clocked", False))  # test sources may lack it
        self._expected = 0  # source index of the next contiguous block
        self._model_index = 0  # model-rate index of the conformer's next output sample
        self._offset = 0  # source frames added to capture indices to follow the wall clock
        self._lags: deque[float] = deque(maxlen=drift_blocks)
        self._read = 0  # source frames read (inline: the capture index)
        self._failed = False  # the inference side raised (inline: not the source's error)
        self._capture = threading.Thread(target=self._capture_main, name="capture", daemon=True)
        self._infer = threading.Thread(target=self._inline_main if self.inline
                                       else self._infer_main, name="inference", daemon=True)

    def start(self) -> None:
        self.started_at = time.monotonic()
        if not self.inline:
            self._capture.start()
        self._infer.start()

    def stop(self) -> None:
        """Stop capturing; the inference thread finishes what was captured, then ends."""
        self.stop_event.set()
        if self.inline:  # the source sees the event before its next read
            return
        # A capture thread blocked in a read (stdin) cannot be interrupted: end the buffer.
        self._capture.join(timeout=1.0)
        self.ring.close()

    def join(self, timeout: float | None = None) -> bool:
        self._infer.join(timeout)
        return not self._infer.is_alive()

    @property
    def done(self) -> bool:
        return not self._infer.is_alive()

    def _capture_main(self) -> None:
        try:
            put = self.ring.put
            if self.progress is not None:
                received = self.progress.audio_received

                def put(block: np.ndarray) -> None:
                    received(len(block))
                    self.ring.put(block)

            self.source.run(put, self.stop_event)
        except BaseException as err:  # reported by the supervisor, not swallowed
            self.error = err
        finally:
            self.ring.close()

    def _infer_main(self) -> None:
        try:
            self._infer_loop()
        except BaseException as err:
            self.error = err
            self.stop_event.set()
            self.ring.close()

    def _inline_main(self) -> None:
        try:
            try:
                self.source.run(self._take, self.stop_event)
            except BaseException as err:
                if self._failed:
                    raise
                self.error = err  # the source's: what it delivered is still finished
            self._finish()
        except BaseException as err:
            self.error = err
            self.stop_event.set()

    def _take(self, block: np.ndarray) -> None:
        """Inline: one block from the source, processed at once."""
        if self.progress is not None:
            self.progress.audio_received(len(block))
        start, self._read = self._read, self._read + len(block)
        try:
            self._process(start, block, 0.0)
        except BaseException:
            self._failed = True
            raise

    def _infer_loop(self) -> None:
        while True:
            try:
                item = self.ring.get(timeout=0.5)
            except TimeoutError:
                continue
            if item is None:
                break
            self._process(*item)
        self._finish()

    def _process(self, start: int, block: np.ndarray, wall: float) -> None:
        t0 = time.perf_counter()
        det, rate = self.detector, self.source.sample_rate
        # A sound card's clock is not the system clock (tens of ppm: seconds per day).
        # Event times come from the sample count, so for clocked sources the lag between
        # block arrival and its predicted time is watched; its minimum over `drift_blocks`
        # blocks (scheduling only ever delays arrivals) beyond `max_clock_drift_s` shifts
        # the index, i.e. starts a new segment on the wall clock's time.
        if self._clocked:
            lags = self._lags
            lags.append(wall - det.start_time - (start + self._offset + len(block)) / rate)
            if len(lags) == lags.maxlen and abs(min(lags)) > self.max_clock_drift_s:
                log.info("audio clock is %+.3f s off the system clock: re-anchoring event "
                         "times (new segment)", min(lags))
                self._offset += round(min(lags) * rate)
                self.reanchors += 1
                lags.clear()
        start += self._offset
        conf = self.conformer
        if start != self._expected:  # audio was dropped (or re-anchored): close the segment
            self._push(conf.flush(), self._model_index)
            self._model_index = round(start * self._ratio)
            conf.reset()
        self._expected = start + len(block)
        mono = conf.process(block)
        self._push(mono, self._model_index)
        self._model_index += len(mono)
        self.busy_s += time.perf_counter() - t0
        if self.progress is not None:
            self.progress.audio_processed(len(block))

    def _finish(self) -> None:
        t0 = time.perf_counter()
        self._push(self.conformer.flush(), self._model_index)
        self._emit(self.detector.flush())
        self.busy_s += time.perf_counter() - t0

    def _push(self, mono: np.ndarray, at: int) -> None:
        if len(mono):
            self.output.feed(mono, at)
        self._emit(self.detector.push(mono, at))

    def _emit(self, detections: list[Detection]) -> None:
        if detections:
            self.detections += len(detections)
            self.output.handle(detections)

    def stats(self) -> dict[str, Any]:
        sr = self.detector.card.sample_rate
        audio_s = self.detector.samples / sr
        return {
            "audio_s": round(audio_s, 3),
            "busy_s": round(self.busy_s, 3),
            "real_time_factor": round(self.busy_s / audio_s, 5) if audio_s else None,
            "dropped_audio_s": round(self.ring.dropped_frames / self.source.sample_rate, 3),
            "overruns": self.ring.overruns + int(getattr(self.source, "overflows", 0)),
            "buffer_high_water_s": round(self.ring.high_water / self.source.sample_rate, 3),
            "nonfinite_samples": self.conformer.nonfinite,
            "segments": self.detector.segments,
            "clock_reanchors": self.reanchors,
            "detections": self.detections,
        }
