"""Where detections go. The detector only sees the `Publisher` interface (publish/status/
close); `MqttPublisher` is the field implementation, `PrintPublisher` writes JSON lines to
stdout (for `mqtt.enabled = false`, debugging, piping into other tools).

MQTT (paho-mqtt 2.x, MQTT 3.1.1):
* detections: `<prefix>/<device>/detections`, QoS 1, not retained; each message is first
  stored in the outbox and deleted only when its PUBACK arrives (on_publish, by message id).
  At most `max_inflight` messages are handed to paho at a time, in outbox order; the rest
  wait on disk, so a week without a broker costs disk, not RAM. Messages paho already holds
  are re-sent by paho itself after a reconnect, so nothing is handed over twice.
* clips (optional, `publish_clip`): `<prefix>/<device>/clips/<event_id>`, QoS 1, through the
  same outbox (its own table, at most half its disk budget, evicted before a detection is
  refused). Detections always go first: a clip is handed to paho only when no stored
  detection waits, one at a time, paced to `clip_bytes_per_s`; a clip over `clip_max_bytes`
  or beyond the outbox's clip budget is dropped and counted (`clips_dropped`), never queued
  in front of a detection.
* availability: `<prefix>/<device>/status`, retained, the plain strings "online" (published
  on every connect) and "offline" (the last will, registered before connecting, and
  published explicitly on a clean exit).
* stats: `<prefix>/<device>/status/stats`, retained JSON (schemas/status.schema.json) every
  `stats_interval_s`. Kept off the availability topic so "online"/"offline" stays a plain
  string any dashboard understands; subscribe to `<prefix>/<device>/status/#` for both.
* reconnects: paho's capped exponential backoff (reconnect_min_s .. reconnect_max_s) plus a
  random jitter (edge_runtime/mqtt_client.py, the client factory shared with the server). A
  broker that is down at boot is normal operation: detections queue in the outbox. Each
  distinct connection problem (nothing listening, TLS, refused credentials) is named once at
  WARNING and shown as `connection_problem` in the stats until a connection works again.

Threads: paho's network thread only runs callbacks that put events on a queue (paho holds
its message lock while calling on_publish); one sender thread owns the outbox <-> paho
hand-over, so no lock is ever taken in a callback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from edge_runtime.contract.times import iso_utc
from edge_runtime.message import clip_message, stamp_published
from edge_runtime.mqtt_client import (
    ConnectionMonitor,
    MqttConfig,
    broker_address,
    broker_port,
    closed_during_connect_cause,
    connect_error_cause,
    make_client,
    refusal_cause,
)
from edge_runtime.outbox import FULL, STORED, Outbox

log = logging.getLogger(__name__)

STATUS_SCHEMA = 1
DETECTION, CLIP = "detection", "clip"  # the two kinds of outbox row


class Publisher(Protocol):
    def publish(self, message: dict[str, Any]) -> None:
        """Take a detection message; returns once it is safely stored (or refused loudly)."""

    def status(self, stats: dict[str, Any]) -> None:
        """Periodic runtime statistics."""

    def stats(self) -> dict[str, Any]:
        """The publisher's own counters (outbox depth, lost, published...)."""

    def close(self, timeout_s: float) -> int:
        """Deliver what can be delivered within `timeout_s`; return how many remain unsent."""


class PrintPublisher:
    """Detections as JSON lines on a text stream (not durable: for debugging and pipes)."""

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.published = 0

    def publish(self, message: dict[str, Any]) -> None:
        line = json.dumps({**message, "published_at": iso_utc(time.time())}, sort_keys=True)
        print(line, file=self.out, flush=True)
        self.published += 1

    def status(self, stats: dict[str, Any]) -> None:
        log.debug("status %s", json.dumps(stats, sort_keys=True))

    def stats(self) -> dict[str, Any]:
        return {"outbox_depth": 0, "outbox_bytes": 0, "outbox_full": False, "events_lost": 0,
                "published": self.published, "connected": None, "connection_problem": None}

    def close(self, timeout_s: float) -> int:
        return 0


def topics(cfg: MqttConfig, device_id: str) -> dict[str, str]:
    base = f"{cfg.topic_prefix}/{device_id}"
    return {"detections": f"{base}/detections", "status": f"{base}/status",
            "stats": f"{base}/status/stats", "clips": f"{base}/clips"}


def clip_topic(cfg: MqttConfig, device_id: str, event_id: str) -> str:
    """Where the clip of `event_id` is published."""
    return f"{topics(cfg, device_id)['clips']}/{event_id}"


def device_client(cfg: MqttConfig, device_id: str, password: str | None, suffix: str = ""):
    """The device's paho client: its client id and the retained "offline" last will."""
    client = make_client(cfg, (cfg.client_id or f"edge-runtime-{device_id}") + suffix, password,
                         will=(topics(cfg, device_id)["status"], "offline"))
    client.max_inflight_messages_set(cfg.max_inflight)
    return client


class MqttPublisher:
    """Outbox-backed MQTT publisher (see the module docstring)."""

    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox,
                 password: str | None = None, clip_max_bytes: int = 256 * 1024,
                 clip_bytes_per_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        """`clip_max_bytes`: larger clip files are not sent; `clip_bytes_per_s`: clips are
        paced to this mean rate (0 = unpaced); `clock` (monotonic seconds) paces them."""
        self.cfg, self.device_id, self.outbox = cfg, device_id, outbox
        self.clip_max_bytes, self.clip_bytes_per_s, self.clock = (clip_max_bytes,
                                                                   clip_bytes_per_s, clock)
        self.topics = topics(cfg, device_id)
        self.address = broker_address(cfg)
        self.client = device_client(cfg, device_id, password)
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self.connection = ConnectionMonitor(
            cfg, self.client, self._stop, on_connected=lambda client: self._events.put(
                ("connected", None)), on_lost=self._on_lost,
            consequence="detections are kept in the outbox")
        self.client.on_publish = self._on_publish
        self._inflight: dict[int, tuple[str, int]] = {}  # paho mid -> (DETECTION|CLIP, seq)
        self._last_seq = 0  # highest outbox seq handed to paho by this process
        self._last_clip_seq = 0  # the same for clips
        self._next_clip_at = 0.0  # clock time before which no clip is handed over (pacing)
        self._connected = False  # as the sender thread sees it (events in order)
        self._last_stats: dict[str, Any] | None = None
        self.published = 0  # acknowledged by the broker
        self.connects = 0
        self.stored = 0
        self.clips_sent = 0  # acknowledged by the broker
        self.clips_too_large = 0
        self._sender = threading.Thread(target=self._sender_main, name="mqtt-sender", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        log.info("MQTT: connecting to %s as %s (TLS %s, user %s); %d detection(s) wait in the "
                 "outbox", self.address, self.device_id, "on" if self.cfg.tls else "off",
                 self.cfg.username or "-", self.outbox.depth)
        self.client.connect_async(self.cfg.host, broker_port(self.cfg), self.cfg.keepalive_s)
        self.client.loop_start()
        self._sender.start()

    def close(self, timeout_s: float) -> int:
        """Deliver detections, then clips, within `timeout_s`; the detections left over."""
        deadline = time.monotonic() + timeout_s
        while (self.outbox.depth or self.outbox.clip_depth) and time.monotonic() < deadline:
            self._events.put(("poke", None))
            time.sleep(0.05)
        remaining = self.outbox.depth
        self._events.put(("stop", None))  # the sender handles what is queued (final stats) first
        self._sender.join(timeout=5.0)
        self._stop.set()
        if self._connected:
            info = self.client.publish(self.topics["status"], "offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()
        if remaining:
            log.warning("%d detection(s) not yet acknowledged by %s stay in the outbox (%s) "
                        "and are sent on the next start", remaining, self.address,
                        self.outbox.path)
        if self.outbox.clip_depth:
            log.info("%d clip(s) not yet sent stay in the outbox for the next start",
                     self.outbox.clip_depth)
        return remaining

    # ---------------------------------------------------------------- detector side
    def publish(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message, sort_keys=True)
        result = self.outbox.add(message["event_id"], self.topics["detections"], payload)
        if result == STORED:
            self.stored += 1
            self._events.put(("new", None))
        elif result == FULL:
            self._events.put(("full", None))  # tell the world now, not at the next interval
        else:
            log.info("detection %s was already stored or acknowledged: not sent again",
                     message["event_id"])

    def publish_clip(self, event_id: str, file: str, data: bytes, fmt: str = "wav") -> str:
        """Queue a clip file's bytes behind every detection: STORED, DUPLICATE or FULL
        (dropped: too large, or no room in the outbox's clip budget)."""
        if len(data) > self.clip_max_bytes:
            self.clips_too_large += 1
            log.warning("clip %s not sent: %.0f kB is over clips.max_clip_kb (%.0f kB)", file,
                        len(data) / 1024, self.clip_max_bytes / 1024)
            return FULL
        message = clip_message(event_id, self.device_id, file, data, fmt)
        result = self.outbox.add_clip(event_id, clip_topic(self.cfg, self.device_id, event_id),
                                      json.dumps(message, sort_keys=True))
        if result == STORED:
            self._events.put(("new", None))
        return result

    def status(self, stats: dict[str, Any]) -> None:
        self._events.put(("stats", stats))

    def stats(self) -> dict[str, Any]:
        return {"outbox_depth": self.outbox.depth, "outbox_bytes": self.outbox.bytes_used,
                "outbox_full": self.outbox.full, "events_lost": self.outbox.lost,
                "published": self.published, "connected": self._connected,
                "connects": self.connects, "connection_problem": self.connection.problem,
                "clips_waiting": self.outbox.clip_depth, "clips_sent": self.clips_sent,
                "clips_dropped": self.outbox.clips_dropped + self.clips_too_large}

    # ---------------------------------------------------------------- paho callbacks (network thread)
    def _on_lost(self, reason_code) -> None:
        self._events.put(("disconnected", None))
        log.warning("MQTT: lost connection to %s (%s); detections queue in the outbox",
                    self.address, reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._events.put(("ack", mid))

    # ---------------------------------------------------------------- sender thread
    def _sender_main(self) -> None:
        while True:
            try:
                events = [self._events.get(timeout=0.5)]
            except queue.Empty:
                events = []
            while True:
                try:
                    events.append(self._events.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(events)
            except Exception:  # a bug here must not stop delivery silently
                log.exception("MQTT sender: unexpected error (continuing)")
            if any(kind == "stop" for kind, _ in events):
                return

    def _handle(self, events: list[tuple[str, Any]]) -> None:
        for kind, value in events:
            if kind == "ack":
                what, seq = self._inflight.pop(value, ("", 0))
                if what == DETECTION:
                    self.outbox.ack(seq)
                    self.published += 1
                elif what == CLIP:
                    self.outbox.ack_clip(seq)
                    self.clips_sent += 1
            elif kind == "connected":
                self._connected = True
                self.connects += 1
                log.info("MQTT: connected to %s (connection %d); %d detection(s) to send",
                         self.address, self.connects, self.outbox.depth)
                self.client.publish(self.topics["status"], "online", qos=1, retain=True)
                if self._last_stats is not None:
                    self._publish_stats(self._last_stats)
            elif kind == "disconnected":
                self._connected = False
            elif kind == "stats":
                self._last_stats = value
                if self._connected:
                    self._publish_stats(value)
            elif kind == "full" and self._connected and self._last_stats is not None:
                self._publish_stats({**self._last_stats, **self.stats()})
        self._fill()

    def _publish_stats(self, stats: dict[str, Any]) -> None:
        body = {"schema": STATUS_SCHEMA, "state": "online", "device_id": self.device_id,
                "time": iso_utc(time.time()), **stats, **self.stats()}
        self.client.publish(self.topics["stats"], json.dumps(body, sort_keys=True), qos=1,
                            retain=True)

    def _fill(self) -> None:
        """Hand the next outbox rows to paho, in order, up to max_inflight at a time; a clip
        only once every stored detection has been handed over."""
        if self._fill_detections():
            self._fill_clip()

    def _fill_detections(self) -> bool:
        """True when no stored detection is left to hand over."""
        while self._connected and len(self._inflight) < self.cfg.max_inflight:
            rows = self.outbox.pending(self._last_seq, self.cfg.max_inflight - len(self._inflight))
            if not rows:
                return True
            for seq, topic, payload in rows:
                if not self._hand_over(DETECTION, seq, topic, payload):
                    return False
                self._last_seq = seq
        return False

    def _fill_clip(self) -> None:
        """One clip at a time, paced: a large clip never sits in front of many detections."""
        if (not self._connected or len(self._inflight) >= self.cfg.max_inflight
                or any(what == CLIP for what, _ in self._inflight.values())
                or self.clock() < self._next_clip_at):
            return
        rows = self.outbox.pending_clips(self._last_clip_seq, 1)
        if rows and self._hand_over(CLIP, *rows[0]):
            self._last_clip_seq = rows[0][0]
            if self.clip_bytes_per_s > 0:
                self._next_clip_at = self.clock() + len(rows[0][2]) / self.clip_bytes_per_s

    def _hand_over(self, what: str, seq: int, topic: str, payload: str) -> bool:
        from paho.mqtt.client import MQTTErrorCode

        info = self.client.publish(topic, stamp_published(payload, time.time()), qos=1,
                                   retain=False)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log.warning("MQTT: publish of outbox %s %d failed (%s); retrying later", what, seq,
                        info.rc)
            return False
        # NO_CONN: paho keeps the message and sends it after the reconnect
        self._inflight[info.mid] = (what, seq)
        return True


def check_broker(cfg: MqttConfig, device_id: str, password: str | None,
                 timeout_s: float = 5.0) -> tuple[bool, str]:
    """Connect once, synchronously: (ok, what happened) for `edge-runtime --check`."""
    address = broker_address(cfg)
    # Its own client id (the same id would kick a running runtime off the broker) and no
    # "offline" will: a failed check must not mark a running device offline.
    client = device_client(cfg, device_id, password, suffix="-check")
    client.will_clear()
    result: dict[str, Any] = {}
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc)
    client.on_disconnect = lambda c, u, f, rc, p: result.setdefault("closed", rc)
    client.connect_timeout = timeout_s
    try:
        client.connect(cfg.host, broker_port(cfg), keepalive=max(5, cfg.keepalive_s))
    except OSError as err:  # ssl.SSLError is one
        return False, f"{address}: cannot connect: {connect_error_cause(cfg, err)}"
    deadline = time.monotonic() + timeout_s
    while not result and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    if "rc" in result and result["rc"].is_failure:
        return False, f"{address}: broker {refusal_cause(result['rc'])}"
    if "rc" not in result:
        return False, (f"{address}: {closed_during_connect_cause(cfg)}" if "closed" in result
                       else f"{address}: no answer to CONNECT within {timeout_s:g} s")
    return True, (f"{address}: connected (TLS {'on' if cfg.tls else 'off'}, user "
                  f"{cfg.username or '-'})")
