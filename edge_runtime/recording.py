"""Listening periods: what `edge-runtime` does between opening its audio input and closing it.

Without a schedule a run is one period: the input from its start to its end (or SIGTERM).
With one (`[schedule]`, edge_runtime.schedule) every recording window is a period: the input
is opened when the window opens and closed when it ends, so outside the windows nothing holds
the microphone, and the recorder sleeps. What lives for the whole run: the sinks (MQTT
connection, outbox, clips), the one `Watchdog`, and the statistics, summed over the periods.

    recorder = Recorder(cfg, model, decoder, geometry, sinks, watchdog, open_source, clock,
                        stop, start_time, schedule)
    run_scheduled(schedule, clock.now, recorder.sleep, recorder.listen)   # or listen(None)

Each period gets its own Detector (event times from the clock when the period opens) and
Pipeline; a `Shifted` view of the fan-out keeps stream times and audio indices on one timeline
across periods, so clips are cut from the right audio. The end of a window is seen by the
capture thread at every block (`WindowEnd`): no block is read once the window has closed.

The watchdog is told when the recorder sleeps (`Watchdog.sleep`: READY=1 at once if not yet
sent, so systemd does not time a start out that waits for its first window; WATCHDOG=1 from
the main loop; no stall) and when it listens again (`Watchdog.wake`: the reopened input gets
audio.stall_s to begin). One watchdog rather than one per period: restarts are counted per
process start, and READY=1 must be sent once.

`clock` is injected: tests drive a whole night (or a DST change) in milliseconds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Protocol

import numpy as np

from edge_runtime.audio import Conformer, Source
from edge_runtime.contract.events import DecoderConfig
from edge_runtime.contract.model import TFLiteModel
from edge_runtime.contract.windows import WindowGeometry
from edge_runtime.detect import Detection, Detector, Output, Pipeline, Progress
from edge_runtime.schedule import Schedule
from edge_runtime.sinks import FanOut
from edge_runtime.watchdog import Stall, Watchdog

log = logging.getLogger("edge_runtime")

SLEEP_TICK_S = 5.0  # while sleeping: how often the watchdog is fed and stats are due


class Clock(Protocol):
    """Wall clock (aware UTC datetimes) and an interruptible sleep."""

    def now(self) -> datetime: ...

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        """Wait `seconds`; False when `stop` was set (meanwhile or before)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        return not stop.wait(seconds)


class WindowEnd:
    """Progress hook in the capture thread: passes progress on to the watchdog, and once the
    clock reaches `until` sets the pipeline's stop event, so the source reads no further
    block (sources check it before every read)."""

    def __init__(self, progress: Progress, clock: Clock, until: datetime | None):
        self.progress, self.clock, self.until = progress, clock, until
        self.stop: threading.Event | None = None  # the pipeline's, set once it exists
        self.reached = False

    def audio_received(self, frames: int) -> None:
        self.progress.audio_received(frames)
        if self.until is not None and not self.reached and self.clock.now() >= self.until:
            self.reached = True
            if self.stop is not None:
                self.stop.set()

    def audio_processed(self, samples: int) -> None:
        self.progress.audio_processed(samples)


class Shifted:
    """One period's view of the run's fan-out: its stream times and audio indices moved by
    the period's offset (model-rate samples since the run's first sample), so every period
    lies on one timeline (clips index their audio by it)."""

    def __init__(self, output: Output, offset: int, sample_rate: int):
        self.output, self.offset, self.sr = output, offset, sample_rate
        self.end = offset  # one past the last sample fed

    def handle(self, detections: list[Detection]) -> None:
        if self.offset:
            s = self.offset / self.sr
            detections = [dataclasses.replace(d, stream_start_s=d.stream_start_s + s,
                                              stream_end_s=d.stream_end_s + s)
                          for d in detections]
        self.output.handle(detections)

    def feed(self, mono: np.ndarray, at: int) -> None:
        self.end = max(self.end, self.offset + at + len(mono))
        self.output.feed(mono, self.offset + at)


def add_stats(total: dict[str, Any], period: dict[str, Any]) -> dict[str, Any]:
    """Pipeline statistics of two stretches of a run as one: counts and seconds add up,
    the buffer high-water mark is the larger, the real-time factor is recomputed."""
    out = dict(total)
    for key, value in period.items():
        if key == "buffer_high_water_s":
            out[key] = max(out.get(key, 0.0), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = round(out.get(key, 0) + value, 5)
        else:
            out.setdefault(key, value)
    audio_s = out.get("audio_s", 0)
    out["real_time_factor"] = round(out.get("busy_s", 0.0) / audio_s, 5) if audio_s else None
    return out


class Recorder:
    """Runs listening periods on one set of sinks and one watchdog (see the module doc)."""

    def __init__(self, cfg: Any, model: TFLiteModel, decoder: DecoderConfig,
                 geometry: WindowGeometry, sinks: FanOut, watchdog: Watchdog,
                 open_source: Callable[[], Source], clock: Clock, stop: threading.Event,
                 start_time: float | None = None, schedule: Schedule | None = None):
        self.cfg, self.model, self.card = cfg, model, model.card
        self.decoder, self.geometry = decoder, geometry
        self.sinks, self.watchdog, self.open_source = sinks, watchdog, open_source
        self.clock, self.stop, self.start_time = clock, stop, start_time
        self.schedule = schedule  # for messages only: run_scheduled decides when to listen
        self.periods = 0
        self.run_start: float | None = None  # Unix time of the first period's first sample
        self.next_index = 0  # model-rate index where the next period may begin
        self.totals: dict[str, Any] = {}
        self.pipeline: Pipeline | None = None  # the current period's
        self.stall: Stall | None = None
        self.error: BaseException | None = None
        self.status_fn: Callable[[], dict[str, Any]] = self.pipeline_stats
        self._next_status = time.monotonic()

    # ------------------------------------------------------------------ statistics
    def pipeline_stats(self) -> dict[str, Any]:
        """The pipeline statistics of the whole run so far (every period)."""
        if self.pipeline is None:
            return add_stats(self.totals, {}) if self.totals else _idle_stats()
        return add_stats(self.totals, self.pipeline.stats())

    def publish_status(self, force: bool = False) -> None:
        if force or time.monotonic() >= self._next_status:
            self.sinks.status(self.status_fn())
            self._next_status = time.monotonic() + self.cfg.mqtt.stats_interval_s

    # ------------------------------------------------------------------ sleeping
    def sleep(self, seconds: float) -> bool:
        """Sleep outside the windows, the input closed; False once asked to stop."""
        if not self.watchdog.sleeping:
            text = (self.schedule.describe(self.clock.now())["state"] if self.schedule
                    else "sleeping")
            log.info("schedule: %s; the audio input is closed", text)
            self.watchdog.sleep(text)
            self.publish_status(force=True)
        remaining = seconds
        while remaining > 0:
            step = min(remaining, SLEEP_TICK_S)
            if not self.clock.sleep(step, self.stop):
                return False
            remaining -= step
            self.watchdog.check()
            self.publish_status()
        return not self.stop.is_set()

    # ------------------------------------------------------------------ listening
    def listen(self, until: datetime | None) -> bool:
        """One period: open the input, detect until `until` (None: until the input ends),
        close it. True: carry on with the schedule; False: the run is over (stop asked, the
        input ended by itself, a stall, an error)."""
        if self.stop.is_set():
            return False
        source = self.open_source()
        if self.watchdog.sleeping:
            self.watchdog.wake()
        card, a = self.card, self.cfg.audio
        conformer = Conformer(source.sample_rate, source.channels, card.sample_rate, a.channel,
                              a.resampler)
        opened = self.clock.now().timestamp()
        start = self.start_time if self.start_time is not None and not self.periods else opened
        if self.run_start is None:
            self.run_start = start
        offset = max(self.next_index, round((start - self.run_start) * card.sample_rate))
        log.info("audio: %s -> %d Hz mono (channel %s); windows of %d samples every %d%s",
                 source.description, card.sample_rate, a.channel, self.geometry.window,
                 self.geometry.hop,
                 f"; recording until {until.isoformat(timespec='minutes')}" if until else "")
        detector = Detector(self.model.window_fn, card, self.geometry, self.decoder,
                            self.cfg.device_id, start)
        guard = WindowEnd(self.watchdog, self.clock, until)
        output = Shifted(self.sinks, offset, card.sample_rate)
        pipeline = Pipeline(source, conformer, detector, output, a.buffer_s, progress=guard,
                            clock=lambda: self.clock.now().timestamp())
        guard.stop = pipeline.stop_event
        self.watchdog.backlog = lambda: pipeline.ring.fill
        self.pipeline = pipeline
        pipeline.start()
        self._supervise(pipeline, until)
        self.totals, self.pipeline = add_stats(self.totals, pipeline.stats()), None
        self.next_index = output.end
        self.periods += 1
        if pipeline.error is not None:
            self.error = pipeline.error
            return False
        if self.stall is not None or self.stop.is_set():
            return False
        # the window closed: sleep until the next; the input ended by itself: the run ends
        return guard.reached or (until is not None and self.clock.now() >= until)

    def _supervise(self, pipeline: Pipeline, until: datetime | None) -> None:
        """The main loop while a period runs: watchdog, stop requests, window end, stats."""
        stopping = False
        while not pipeline.done:
            stalled = self.watchdog.check()
            closed = until is not None and self.clock.now() >= until
            if (self.stop.is_set() or stalled or closed) and not stopping:
                stopping = True
                pipeline.stop()
                if stalled:  # inference may be hung: do not wait for it without a limit
                    self.stall = stalled
                    pipeline.join(5.0)
                    return
            self.publish_status()
            pipeline.join(0.1)  # returns at once when the input ends


def _idle_stats() -> dict[str, Any]:
    """Pipeline statistics before the first period (a recorder that starts asleep)."""
    return {"audio_s": 0.0, "busy_s": 0.0, "real_time_factor": None, "dropped_audio_s": 0.0,
            "overruns": 0, "buffer_high_water_s": 0.0, "nonfinite_samples": 0, "segments": 1,
            "clock_reanchors": 0, "detections": 0}
