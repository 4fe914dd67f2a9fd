"""Where detections go. The detector only sees the `Publisher` interface (publish/status/
close); `MqttPublisher` is the field implementation, `PrintPublisher` writes JSON lines to
stdout (for `mqtt.enabled = false`, debugging, piping into other tools).

MQTT (paho-mqtt 2.x, MQTT 3.1.1):
* detections: `<prefix>/<device>/detections`, QoS 1, not retained; each message is first
  stored in the outbox and deleted only when its PUBACK arrives (on_publish, by message id).
  At most `max_inflight` messages are handed to paho at a time, in outbox order; the rest
  wait on disk, so a week without a broker costs disk, not RAM. Messages paho already holds
  are re-sent by paho itself after a reconnect, so nothing is handed over twice.
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
from typing import Any, Protocol, TextIO

from edge_runtime.contract.times import iso_utc
from edge_runtime.message import stamp_published
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
            "stats": f"{base}/status/stats"}


def device_client(cfg: MqttConfig, device_id: str, password: str | None, suffix: str = ""):
    """The device's paho client: its client id and the retained "offline" last will."""
    client = make_client(cfg, (cfg.client_id or f"edge-runtime-{device_id}") + suffix, password,
                         will=(topics(cfg, device_id)["status"], "offline"))
    client.max_inflight_messages_set(cfg.max_inflight)
    return client


class MqttPublisher:
    """Outbox-backed MQTT publisher (see the module docstring)."""

    def __init__(self, cfg: MqttConfig, device_id: str, outbox: Outbox,
                 password: str | None = None):
        self.cfg, self.device_id, self.outbox = cfg, device_id, outbox
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
        self._inflight: dict[int, int] = {}  # paho message id -> outbox seq
        self._last_seq = 0  # highest outbox seq handed to paho by this process
        self._connected = False  # as the sender thread sees it (events in order)
        self._last_stats: dict[str, Any] | None = None
        self.published = 0  # acknowledged by the broker
        self.connects = 0
        self.stored = 0
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
        deadline = time.monotonic() + timeout_s
        while self.outbox.depth and time.monotonic() < deadline:
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

    def status(self, stats: dict[str, Any]) -> None:
        self._events.put(("stats", stats))

    def stats(self) -> dict[str, Any]:
        return {"outbox_depth": self.outbox.depth, "outbox_bytes": self.outbox.bytes_used,
                "outbox_full": self.outbox.full, "events_lost": self.outbox.lost,
                "published": self.published, "connected": self._connected,
                "connects": self.connects, "connection_problem": self.connection.problem}

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
                seq = self._inflight.pop(value, None)
                if seq is not None:
                    self.outbox.ack(seq)
                    self.published += 1
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
        """Hand the next outbox rows to paho, in order, up to max_inflight at a time."""
        from paho.mqtt.client import MQTTErrorCode

        while self._connected and len(self._inflight) < self.cfg.max_inflight:
            rows = self.outbox.pending(self._last_seq, self.cfg.max_inflight - len(self._inflight))
            if not rows:
                return
            for seq, topic, payload in rows:
                stamped = stamp_published(payload, time.time())
                info = self.client.publish(topic, stamped, qos=1, retain=False)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    log.warning("MQTT: publish of outbox row %d failed (%s); retrying later",
                                seq, info.rc)
                    return
                # NO_CONN: paho keeps the message and sends it after the reconnect
                self._inflight[info.mid] = seq
                self._last_seq = seq


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
