"""Detections to the broker: each becomes its wire message (`edge_runtime.message`) and goes
to `edge_runtime.publish.MqttPublisher`, which stores it in the outbox before it is sent.
With `clips.mqtt`, `send_clip` is the clip recorder's `on_written`: each clip file follows
its detection through the same outbox, behind every detection (publish.py)."""

from __future__ import annotations

from typing import Any

from edge_runtime.config import RuntimeConfig, read_password
from edge_runtime.detect import Detection
from edge_runtime.message import ToMessage
from edge_runtime.outbox import Outbox
from edge_runtime.publish import MqttPublisher, Publisher


class MqttSink:
    essential = True  # an outbox that cannot store must stop the runtime, not lose silently

    def __init__(self, publisher: Publisher, to_message: ToMessage):
        self.publisher, self.to_message = publisher, to_message

    def handle(self, detections: list[Detection]) -> None:
        for d in detections:
            self.publisher.publish(self.to_message(d))

    def send_clip(self, d: Detection, file: str, data: bytes) -> None:
        """A clip written for `d` (`ClipRecorder.on_written`): queued behind the detections."""
        self.publisher.publish_clip(d.event_id, file, data)  # type: ignore[attr-defined]

    def status(self, stats: dict[str, Any]) -> None:
        self.publisher.status(stats)

    def close(self, timeout_s: float) -> int:
        return self.publisher.close(timeout_s)


def open_mqtt_sink(cfg: RuntimeConfig, to_message: ToMessage) -> MqttSink:
    """The outbox opened and the publisher connecting (in the background) as `cfg` says."""
    outbox = Outbox(cfg.outbox.path, int(cfg.outbox.max_mb * 1024 * 1024))
    publisher = MqttPublisher(cfg.mqtt, cfg.device_id, outbox, read_password(cfg.mqtt),
                              clip_max_bytes=int(cfg.clips.max_clip_kb * 1024),
                              clip_bytes_per_s=cfg.clips.max_kbps * 1000 / 8)
    publisher.start()
    return MqttSink(publisher, to_message)
