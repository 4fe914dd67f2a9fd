"""Detections as JSON lines on a text stream (`mqtt.enabled = false`): for debugging and for
piping into other tools. Not durable."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from edge_runtime.detect import Detection
from edge_runtime.message import ToMessage, stamp_published

log = logging.getLogger(__name__)


class PrintSink:
    essential = True

    def __init__(self, to_message: ToMessage, out: TextIO | None = None,
                 clock: Callable[[], float] = time.time):
        self.to_message, self.out, self.clock = to_message, out or sys.stdout, clock
        self.printed = 0

    def handle(self, detections: list[Detection]) -> None:
        for d in detections:
            print(stamp_published(self.to_message(d), self.clock()), file=self.out, flush=True)
            self.printed += 1

    def status(self, stats: dict[str, Any]) -> None:
        log.debug("status %s", json.dumps(stats, sort_keys=True))

    def close(self, timeout_s: float) -> int:
        return 0
