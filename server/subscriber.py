"""`meerkit subscribe`: the reference central-server subscriber. MQTT detections in, validated
and de-duplicated rows in SQLite (default, WAL) or PostgreSQL out. It never dies of its input.

* Topic `<prefix>/+/detections`, QoS 1. With a group name, `$share/<group>/<prefix>/+/detections`:
  an MQTT shared subscription, so N subscribers in one group split the stream between them
  (each message goes to one member) — horizontal scaling without coordination. mosquitto 2,
  EMQX, HiveMQ and VerneMQ accept it from MQTT 3.1.1 clients, which is what this one is.
* Every payload ends one of three ways: stored (once per event_id), a duplicate (the same
  event_id and content again: QoS 1 is at least once), or rejected — invalid
  (server/validate.py), or a `conflict` (an event_id already stored with other content, never
  merged) — counted by reason, logged in one line (never the whole payload) and kept in the
  dead-letter table with its topic and first bytes.
* A message is acknowledged (PUBACK, manual ack) only after its row or dead letter is
  committed. Only a failure of the store itself (`StoreUnavailable`) stops acknowledgement and
  the subscriber; an exception about one payload is a rejection. With `client_id` set the
  session is persistent (clean_session false): the broker keeps QoS 1 messages meanwhile.
* A broker that is down, refuses the credentials or fails TLS is retried with backoff; each
  distinct cause is logged once (edge_runtime/mqtt_client.py).
* Clips: also `<prefix>/+/clips/+` (the same group). A clip message (schemas/clip.schema.json)
  is stored, bytes and all, next to its detection's row (`<table>_clips`) when its bytes match
  its sha256, its detection is stored and announced exactly this clip (schema 2, same file and
  format, same sha256 if it gave one). Else it is a dead letter like any rejected payload:
  `sha256_mismatch`, `too_large`, `unknown_event` (no such detection: QoS 1 keeps a device's
  order, so its detection came first; a shared group can reorder them), `clip_mismatch`, or a
  `conflict` (another clip for that event_id already stored). The same clip again is a
  duplicate.
* Runs until SIGINT/SIGTERM, `timeout_s`, or `max_messages` new detections stored. Counts are
  logged every `stats_interval_s` and on exit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.times import iso_utc
from edge_runtime.mqtt_client import (
    ConnectionMonitor,
    MqttConfig,
    broker_address,
    broker_port,
    make_client,
    read_password,
)
from server.stores import (
    HEAD_BYTES,
    ClipRow,
    DeadLetter,
    Row,
    Store,
    StoreUnavailable,
    differing_fields,
    open_store,
)
from server.validate import MAX_CLIP_PAYLOAD, MAX_PAYLOAD, Validator, Verdict, short

log = logging.getLogger(__name__)

STORED, DUPLICATE, REJECTED = "stored", "duplicate", "rejected"


@dataclass
class SubscriberConfig:
    mqtt: MqttConfig = field(default_factory=MqttConfig)  # ca_file/cert_file imply TLS here
    group: str = ""  # shared-subscription group; "" = receive everything
    db: str = "sqlite:///detections.sqlite"  # or postgresql://user@host/db
    table: str = "detections"
    max_messages: int = 0  # stop after this many new detections are stored; 0 = never
    timeout_s: float = 0.0  # stop after this many seconds; 0 = never
    print_format: str = ""  # "" | "text" | "json": one line per stored detection on stdout
    stats_interval_s: float = 60.0
    max_clip_bytes: int = MAX_CLIP_PAYLOAD  # a clip message larger than this is rejected

    @property
    def topic(self) -> str:
        return self._shared(f"{self.mqtt.topic_prefix}/+/detections")

    @property
    def clip_topic(self) -> str:
        return self._shared(f"{self.mqtt.topic_prefix}/+/clips/+")

    def _shared(self, topic: str) -> str:
        return f"$share/{self.group}/{topic}" if self.group else topic


@dataclass
class Counts:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    clips: int = 0  # clips stored (beside `stored` detections)

    def line(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        return (f"received {self.received}, stored {self.stored}, duplicates {self.duplicates}, "
                f"rejected {self.rejected}{f' ({why})' if why else ''}"
                f"{f', clips stored {self.clips}' if self.clips else ''}")


def is_clip_topic(topic: str) -> bool:
    parts = topic.split("/")
    return len(parts) >= 4 and parts[-2] == "clips"


def format_detection(msg: dict[str, Any]) -> str:
    """One human-readable line per detection (`--print`)."""
    return (f"{msg['start']}  {msg['device_id']}  {msg['label']}  "
            f"conf {msg['confidence']['max']:.2f}  {msg['duration_s']:.2f} s  "
            f"id {msg['event_id']}")


class Subscriber:
    """Validates, stores and counts messages; `run()` connects to the broker and loops.
    `clock` gives the Unix time recorded as received_at."""

    def __init__(self, cfg: SubscriberConfig, store: Store, out: TextIO | None = None,
                 clock: Callable[[], float] = time.time):
        self.cfg, self.store, self.clock = cfg, store, clock
        self.mqtt = replace(cfg.mqtt, tls=cfg.mqtt.tls or bool(cfg.mqtt.ca_file
                                                               or cfg.mqtt.cert_file))
        self.out = out or sys.stdout
        self.validator = Validator(cfg.max_clip_bytes)
        self.counts = Counts()
        self.stop = threading.Event()
        self.subscribed = threading.Event()  # the broker granted the subscription
        self.fatal: Exception | None = None
        self.connection: ConnectionMonitor | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- one message
    def handle(self, topic: str, payload: bytes) -> str:
        """One message: STORED, DUPLICATE or REJECTED. Raises only StoreUnavailable."""
        received_at = iso_utc(self.clock())
        clip = is_clip_topic(topic)
        verdict = (self.validator.check_clip if clip else self.validator.check)(topic, payload)
        with self._lock:
            self.counts.received += 1
        if verdict.ok:
            try:
                outcome, verdict = (self._store_clip(verdict, received_at) if clip
                                    else self._store(verdict, payload, received_at))
            except StoreUnavailable:
                raise
            except Exception as err:  # about this row (a value the store cannot take)
                verdict = Verdict(None, "store_refused", short(f"{type(err).__name__}: {err}"),
                                  verdict.event_id)
            else:
                if outcome != REJECTED:
                    return outcome
        self._reject(topic, payload, verdict, received_at)
        return REJECTED

    def _store(self, verdict: Verdict, payload: bytes, received_at: str) -> tuple[str, Verdict]:
        msg = verdict.message
        assert msg is not None
        if self.store.add(Row.from_message(msg, payload.decode("utf-8"), received_at)):
            with self._lock:
                self.counts.stored += 1
            self._print(msg)
            if self.cfg.max_messages and self.counts.stored >= self.cfg.max_messages:
                self.stop.set()
            return STORED, verdict
        existing = self.store.get(msg["event_id"])
        changed = differing_fields(existing, msg) if existing is not None else ["(gone)"]
        if not changed:
            with self._lock:
                self.counts.duplicates += 1
            return DUPLICATE, verdict
        return REJECTED, Verdict(None, "conflict", f"event_id {msg['event_id']} is stored with "
                                                   f"other {', '.join(changed)}", msg["event_id"])

    def _store_clip(self, verdict: Verdict, received_at: str) -> tuple[str, Verdict]:
        msg = verdict.message
        assert msg is not None
        event = msg["event_id"]
        why = self._clip_problem(msg)
        if why is not None:
            return REJECTED, Verdict(None, why[0], why[1], event)
        if self.store.add_clip(ClipRow.from_message(msg, verdict.data, received_at)):
            with self._lock:
                self.counts.clips += 1
            return STORED, verdict
        if self.store.clip_sha256(event) == msg["sha256"]:
            with self._lock:
                self.counts.duplicates += 1
            return DUPLICATE, verdict
        return REJECTED, Verdict(None, "conflict", f"event_id {event} has another clip stored",
                                 event)

    def _clip_problem(self, msg: dict[str, Any]) -> tuple[str, str] | None:
        """(reason, detail) when the stored detection did not announce this clip."""
        detection = self.store.get(msg["event_id"])
        if detection is None:
            return "unknown_event", f"no detection {msg['event_id']} is stored"
        ref = detection.get("clip")
        if detection["device_id"] != msg["device_id"] or not isinstance(ref, dict):
            return "clip_mismatch", (f"detection {msg['event_id']} of "
                                     f"{detection['device_id']!r} announced no clip")
        if (ref.get("file"), ref.get("format")) != (msg["file"], msg["format"]):
            return "clip_mismatch", (f"detection {msg['event_id']} announced {ref.get('file')!r}"
                                     f", not {msg['file']!r}")
        if ref.get("sha256", msg["sha256"]) != msg["sha256"]:
            return "sha256_mismatch", (f"detection {msg['event_id']} announced sha256 "
                                       f"{ref['sha256']}")
        return None

    def _reject(self, topic: str, payload: bytes, verdict: Verdict, received_at: str) -> None:
        with self._lock:
            self.counts.rejected += 1
            self.counts.reasons[verdict.reason] += 1
        log.warning("rejected message on %s (%s): %s", short(topic, 100), verdict.reason,
                    verdict.detail)
        whole = verdict.reason == "conflict" and len(payload) <= MAX_PAYLOAD  # not a clip's MBs
        head = payload if whole else payload[:HEAD_BYTES]
        letter = DeadLetter(received_at, verdict.reason, short(verdict.detail, 1000),
                            short(topic, 300), verdict.event_id, len(payload), head)
        try:
            self.store.dead_letter(letter)
        except StoreUnavailable:
            raise
        except Exception as err:  # counted and logged above; the payload is not worth an outage
            log.warning("could not keep the rejected message as a dead letter (%s: %s)",
                        type(err).__name__, short(str(err)))

    def _print(self, msg: dict[str, Any]) -> None:
        if not self.cfg.print_format:
            return
        line = (json.dumps(msg, separators=(",", ":")) if self.cfg.print_format == "json"
                else format_detection(msg))
        try:
            print(line, file=self.out, flush=True)
        except (OSError, ValueError) as err:  # stdout's reader went away: keep storing
            log.warning("--print stopped: cannot write to stdout (%s)", err)
            self.cfg = replace(self.cfg, print_format="")

    # ----------------------------------------------------------------- MQTT callbacks
    def _on_connected(self, client) -> None:
        log.info("connected to %s; subscribing to %s and %s", broker_address(self.mqtt),
                 self.cfg.topic, self.cfg.clip_topic)
        # again on every reconnect (clean sessions)
        client.subscribe([(self.cfg.topic, 1), (self.cfg.clip_topic, 1)])

    def _on_lost(self, reason_code) -> None:
        log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self._fail(UserError(f"the broker refused the subscription to {self.cfg.topic} or "
                                 f"{self.cfg.clip_topic} "
                                 f"({', '.join(map(str, reason_codes))}); check its ACL"
                                 f"{' and shared-subscription support' if self.cfg.group else ''}"))
            return
        log.info("subscribed to %s and %s", self.cfg.topic, self.cfg.clip_topic)
        self.subscribed.set()

    def _on_message(self, client, userdata, message) -> None:
        if self.fatal is not None:
            return  # not acknowledged: the broker redelivers it
        try:
            topic = message.topic
        except UnicodeDecodeError:  # paho decodes the topic on access
            topic = message._topic.decode("utf-8", "backslashreplace")
        try:
            self.handle(topic, message.payload)
        except StoreUnavailable as err:
            self._fail(UserError(f"the database failed ({short(str(err))}); unacknowledged "
                                 "messages will be redelivered by the broker"))
            return
        except Exception:  # a bug; paho would otherwise end its network thread
            log.exception("unexpected error on a message on %s (acknowledged, not stored)",
                          short(topic, 100))
        client.ack(message.mid, message.qos)

    def _fail(self, err: Exception) -> None:
        if self.fatal is None:
            self.fatal = err
        self.stop.set()

    # ----------------------------------------------------------------- main loop
    def _client(self):
        cfg = self.mqtt
        # Random suffix: containers of one deployment may share hostname and pid, and a
        # second client with the same id would make the broker drop the first.
        client_id = cfg.client_id or f"meerkit-sub-{socket.gethostname()}-{os.urandom(4).hex()}"
        client = make_client(cfg, client_id, read_password(cfg), clean_session=not cfg.client_id,
                             manual_ack=True)
        self.connection = ConnectionMonitor(cfg, client, self.stop,
                                            on_connected=self._on_connected, on_lost=self._on_lost)
        client.on_subscribe, client.on_message = self._on_subscribe, self._on_message
        return client

    def run(self) -> int:
        """Until stopped (signal, timeout, max_messages, fatal error). Returns the exit code:
        0, or 1 when max_messages was set and not reached or the broker was never reached."""
        cfg = self.cfg
        client = self._client()
        log.info("connecting to %s (TLS %s, user %s)", broker_address(self.mqtt),
                 "on" if self.mqtt.tls else "off", self.mqtt.username or "-")
        # Asynchronous: a broker that is down at start is retried, not fatal.
        client.connect_async(self.mqtt.host, broker_port(self.mqtt),
                             keepalive=self.mqtt.keepalive_s)
        restore = self._install_signals()
        client.loop_start()
        t0 = time.monotonic()
        next_stats = t0 + cfg.stats_interval_s
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if cfg.timeout_s and now - t0 >= cfg.timeout_s:
                    log.info("--timeout %g s reached", cfg.timeout_s)
                    break
                if now >= next_stats:
                    log.info("subscriber: %s", self.counts.line())
                    next_stats = now + cfg.stats_interval_s
                deadline = min(next_stats, t0 + cfg.timeout_s if cfg.timeout_s else next_stats)
                self.stop.wait(max(0.01, min(0.5, deadline - now)))
        finally:
            self.stop.set()
            client.disconnect()
            client.loop_stop()
            restore()
            log.info("subscriber stopped: %s; %d rows in the database", self.counts.line(),
                     self._safe_count())
        if self.fatal is not None:
            raise self.fatal
        if not self.subscribed.is_set():
            problem = self.connection.problem if self.connection else None
            log.warning("never subscribed to %s: %s", broker_address(self.mqtt),
                        problem or "no answer from the broker")
            return 1
        if cfg.max_messages and self.counts.stored < cfg.max_messages:
            log.warning("stored %d of the %d detections asked for (--max-messages)",
                        self.counts.stored, cfg.max_messages)
            return 1
        return 0

    def _safe_count(self) -> int:
        try:
            return self.store.count()
        except Exception:  # the database may be the reason we stop
            return -1

    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # tests run the subscriber in a thread
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame) -> None:
            log.info("%s: stopping", signal.Signals(signum).name)
            self.stop.set()

        for s in old:
            signal.signal(s, on_signal)
        return lambda: [signal.signal(s, h) for s, h in old.items()]


def validate(cfg: SubscriberConfig) -> None:
    if cfg.print_format not in ("", "text", "json"):
        raise UserError(f"--print {cfg.print_format!r}: text or json")
    for name, value in (("--max-messages", cfg.max_messages), ("--timeout", cfg.timeout_s)):
        if value < 0:
            raise UserError(f"{name} {value}: must be >= 0 (0 = no limit)")
    if not cfg.max_clip_bytes > 0:
        raise UserError(f"--max-clip-kb {cfg.max_clip_bytes / 1024:g}: must be > 0")
    if not cfg.stats_interval_s > 0:
        raise UserError(f"--stats-interval {cfg.stats_interval_s}: must be > 0")
    if any(c in cfg.group for c in "+#/"):
        raise UserError(f"--group {cfg.group!r}: a group name has no '/', '+' or '#'")
    prefix = cfg.mqtt.topic_prefix
    if not prefix or any(c in prefix for c in "+#"):
        raise UserError(f"--mqtt-topic-prefix {prefix!r}: non-empty, no '+' or '#'")


def subscribe(cfg: SubscriberConfig, out: TextIO | None = None) -> tuple[int, Counts]:
    """Open the store, run the subscriber, close the store: (exit code, counts)."""
    validate(cfg)
    store = open_store(cfg.db, cfg.table)
    try:
        sub = Subscriber(cfg, store, out)
        return sub.run(), sub.counts
    finally:
        store.close()
