"""Where detections go. The pipeline hands every batch of detections (and its audio) to one
`FanOut`; each `Sink` delivers them its way and the pipeline never knows which sinks exist:
`sinks.mqtt` (outbox + broker), `sinks.print` (JSON lines on stdout), `sinks.clips` (a WAV
per detection, also an `AudioTap`).

Failures: a sink that raises does not keep the detection from the sinks after it (a full
clips disk must not stop MQTT delivery), and is counted (`FanOut.errors`). A failed
`essential` sink (a delivery sink: mqtt, print) is then raised again, which stops the
runtime with exit code 1 (systemd restarts it; what the outbox stored is kept); a sink that
is not essential (clips) is only logged, and the runtime carries on.

A site's label lists (`[labels]`, edge_runtime.label_filter) act here, the one point every
detection passes: a label the site does not report reaches no sink (no message, no clip) and
is only counted (`FanOut.suppressed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edge_runtime.detect import Detection

log = logging.getLogger("edge_runtime.sinks")


class Sink(Protocol):
    essential: bool  # True: a failure stops the runtime after the other sinks were served

    def handle(self, detections: list[Detection]) -> None:
        """Deliver new detections (returns once they are safely stored or sent)."""

    def status(self, stats: dict[str, Any]) -> None:
        """Periodic runtime statistics."""

    def close(self, timeout_s: float) -> int:
        """Finish within `timeout_s`; return how many detections remain undelivered."""


@runtime_checkable
class AudioTap(Protocol):
    def feed(self, mono: np.ndarray, at: int) -> None:
        """Model-rate mono samples whose first one has index `at`."""


class FanOut:
    """Every detection to every sink, once, in the sinks' order; audio to the sinks that are
    also `AudioTap`s. Implements `edge_runtime.detect.Output`."""

    def __init__(self, sinks: Sequence[Sink], keep: Callable[[str], bool] | None = None):
        self.sinks = list(sinks)
        self.taps = [s for s in self.sinks if isinstance(s, AudioTap)]
        self.keep = keep  # label -> reported at this site? (None: every label)
        self.errors: dict[str, int] = {}  # sink name -> failed calls
        self.suppressed = 0  # detections of labels the site does not report

    def handle(self, detections: list[Detection]) -> None:
        if self.keep is not None:
            kept = []
            for d in detections:
                if self.keep(d.label):
                    kept.append(d)
                else:
                    self.suppressed += 1
                    log.debug("not reported at this site ([labels]): %s %.3f-%.3f s", d.label,
                              d.stream_start_s, d.stream_end_s)
            if not kept:
                return
            detections = kept
        self._each(self.sinks, "handle", detections)
        # Logged after the sinks took them (the outbox has committed), so a "detected" line
        # never names an event that a kill -9 between the two could lose.
        for d in detections:  # the one place each detection is logged
            log.info("detected %s %.3f-%.3f s (max %.2f) id %s", d.label, d.stream_start_s,
                     d.stream_end_s, d.confidence_max, d.event_id)

    def feed(self, mono: np.ndarray, at: int) -> None:
        self._each(self.taps, "feed", mono, at)

    def status(self, stats: dict[str, Any]) -> None:
        self._each(self.sinks, "status", stats)

    def close(self, timeout_s: float) -> int:
        """Close every sink (the last first: clips are flushed before the outbox drains);
        the undelivered detections of all of them."""
        remaining = 0
        for sink in reversed(self.sinks):
            try:
                remaining += sink.close(timeout_s)
            except Exception:  # the others still get closed (and the outbox drained)
                self._count(sink)
                log.exception("%s.close failed", type(sink).__name__)
        return remaining

    def _each(self, sinks: list[Any], method: str, *args: Any) -> None:
        fatal: Exception | None = None
        for sink in sinks:
            try:
                getattr(sink, method)(*args)
            except Exception as err:
                n = self._count(sink)
                if getattr(sink, "essential", True):
                    fatal = fatal or err  # reported once, by whoever stops the runtime
                elif n == 1 or n % 100 == 0:  # loud, but a broken disk must not flood the log
                    log.exception("%s.%s failed (%d failure(s) so far); the other outputs "
                                  "carry on", type(sink).__name__, method, n)
        if fatal is not None:
            raise fatal

    def _count(self, sink: Any) -> int:
        name = type(sink).__name__
        self.errors[name] = self.errors.get(name, 0) + 1
        return self.errors[name]
