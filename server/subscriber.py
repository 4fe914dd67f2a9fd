"""`meerkit subscribe`: the reference central-server subscriber. MQTT detections in, validated
and de-duplicated rows in SQLite (default, WAL) or PostgreSQL out.

* Topic `<prefix>/+/detections`, QoS 1. With a group name, `$share/<group>/<prefix>/+/detections`:
  an MQTT shared subscription, so N subscribers in one group split the stream between them
  (each message goes to one member) — horizontal scaling without coordination. mosquitto 2,
  EMQX, HiveMQ and VerneMQ accept it from MQTT 3.1.1 clients, which is what this one is.
* Each payload is checked against schemas/detection.schema.json, and its device_id against the
  topic; anything else is rejected, counted by reason and logged in one line (never the whole
  payload). Payloads over 64 KiB are rejected unparsed (a detection is < 1 KiB).
* Delivery is at least once, so rows are keyed by event_id (stable across resends):
  `INSERT ... ON CONFLICT DO NOTHING`; a duplicate is counted, not stored twice.
* A message is acknowledged (PUBACK, manual ack) only after its row is committed, so a crash or
  a database outage never loses an acknowledged detection. With `client_id` set the session is
  persistent (clean_session false): the broker keeps QoS 1 messages while the subscriber is down.
* Runs until SIGINT/SIGTERM, `timeout_s`, or `max_messages` new detections stored. Counts
  (received, stored, duplicates, rejected) are logged every `stats_interval_s` and on exit.

Stores: one small interface (`Store.add(row) -> stored?`, `count()`, `close()`) with two
implementations; psycopg and jsonschema are imported only when needed (the `server` extra).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import ssl
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TextIO

import edge_runtime.contract
from edge_runtime.contract.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_PATH = Path(edge_runtime.contract.__file__).resolve().parent / "schemas" / "detection.schema.json"
MAX_PAYLOAD = 64 * 1024
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SubscriberConfig:
    host: str = "localhost"
    port: int = 0  # 0 = 1883, or 8883 with TLS
    tls: bool = False  # implied by ca_file / cert_file
    ca_file: str = ""  # "" with tls = the system CA store
    cert_file: str = ""  # client certificate (mutual TLS)
    key_file: str = ""
    username: str = ""
    password_file: str = ""
    password_env: str = "MEERKIT_MQTT_PASSWORD"
    topic_prefix: str = "meerkit"
    group: str = ""  # shared-subscription group; "" = receive everything
    client_id: str = ""  # "" = a random id and a clean session
    db: str = "sqlite:///detections.sqlite"  # or postgresql://user@host/db
    table: str = "detections"
    max_messages: int = 0  # stop after this many new detections are stored; 0 = never
    timeout_s: float = 0.0  # stop after this many seconds; 0 = never
    print_format: str = ""  # "" | "text" | "json": one line per stored detection on stdout
    stats_interval_s: float = 60.0
    keepalive_s: int = 30

    @property
    def use_tls(self) -> bool:
        return self.tls or bool(self.ca_file or self.cert_file)

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.use_tls else 1883)

    @property
    def topic(self) -> str:
        topic = f"{self.topic_prefix}/+/detections"
        return f"$share/{self.group}/{topic}" if self.group else topic


# ------------------------------------------------------------------------- rows and stores
@dataclass(frozen=True)
class Row:
    event_id: str
    device_id: str
    label: str
    start_utc: str
    end_utc: str
    duration_s: float
    confidence_max: float
    confidence_mean: float
    model_name: str
    model_version: str
    model_sha256: str
    lat: float | None
    lon: float | None
    site: str
    published_at: str
    received_at: str
    payload: str  # the message as received (JSON text)

    @classmethod
    def from_message(cls, msg: dict[str, Any], payload: str, received_at: str) -> Row:
        loc = msg.get("location") or {}
        return cls(msg["event_id"], msg["device_id"], msg["label"], msg["start"], msg["end"],
                   float(msg["duration_s"]), float(msg["confidence"]["max"]),
                   float(msg["confidence"]["mean"]), msg["model"]["name"],
                   msg["model"]["version"], msg["model"]["sha256"], loc.get("lat"),
                   loc.get("lon"), msg.get("site", ""), msg["published_at"], received_at,
                   payload)


COLUMNS = tuple(Row.__dataclass_fields__)


class Store(Protocol):
    def add(self, row: Row) -> bool:
        """Insert and commit; False if a row with this event_id already exists."""

    def count(self) -> int:
        """Rows stored."""

    def close(self) -> None: ...


def _table(name: str) -> str:
    if not _IDENT.match(name):
        raise UserError(f"--table {name!r}: letters, digits and _ only")
    return name


class SQLiteStore:
    """SQLite in WAL mode; several subscribers may share the file (busy timeout)."""

    def __init__(self, path: str | Path, table: str = "detections"):
        self.path, self.table = Path(path), _table(table)
        if self.path.parent and not self.path.parent.is_dir():
            raise UserError(f"--db {self.path}: folder {self.path.parent} does not exist")
        try:
            # The paho network thread writes; nothing else touches the connection meanwhile.
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row survives power loss, and only then is it acknowledged.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(f"""
                CREATE TABLE IF NOT EXISTS {self.table} (
                    event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, label TEXT NOT NULL,
                    start_utc TEXT NOT NULL, end_utc TEXT NOT NULL, duration_s REAL NOT NULL,
                    confidence_max REAL NOT NULL, confidence_mean REAL NOT NULL,
                    model_name TEXT NOT NULL, model_version TEXT NOT NULL,
                    model_sha256 TEXT NOT NULL, lat REAL, lon REAL, site TEXT NOT NULL,
                    published_at TEXT NOT NULL, received_at TEXT NOT NULL,
                    payload TEXT NOT NULL);
                CREATE INDEX IF NOT EXISTS {self.table}_device_start
                    ON {self.table} (device_id, start_utc);
                CREATE INDEX IF NOT EXISTS {self.table}_label_start
                    ON {self.table} (label, start_utc);
            """)
        except sqlite3.Error as err:
            raise UserError(f"--db {self.path}: cannot open the SQLite database ({err})") from None
        self._insert = (f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))}) ON CONFLICT (event_id) DO NOTHING")

    def add(self, row: Row) -> bool:
        cur = self.db.execute(self._insert, tuple(getattr(row, c) for c in COLUMNS))
        return cur.rowcount == 1

    def count(self) -> int:
        return self.db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def close(self) -> None:
        self.db.close()


class PostgresStore:
    """PostgreSQL via psycopg 3 (autocommit: each insert is its own transaction)."""

    def __init__(self, url: str, table: str = "detections"):
        try:
            psycopg = importlib.import_module("psycopg")
        except ImportError:
            raise UserError("--db postgresql://... needs psycopg 3: "
                            "`pip install 'meerkit[server]'`") from None
        self.table = _table(table)
        try:
            self.db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as err:
            raise UserError(f"--db: cannot connect to PostgreSQL ({_redact(url)}): "
                            f"{str(err).strip()}") from None
        self.db.execute(f"""
            CREATE TABLE IF NOT EXISTS {self.table} (
                event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, label TEXT NOT NULL,
                start_utc TIMESTAMPTZ NOT NULL, end_utc TIMESTAMPTZ NOT NULL,
                duration_s DOUBLE PRECISION NOT NULL, confidence_max DOUBLE PRECISION NOT NULL,
                confidence_mean DOUBLE PRECISION NOT NULL, model_name TEXT NOT NULL,
                model_version TEXT NOT NULL, model_sha256 TEXT NOT NULL,
                lat DOUBLE PRECISION, lon DOUBLE PRECISION, site TEXT NOT NULL,
                published_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ NOT NULL,
                payload JSONB NOT NULL)""")
        for cols in ("device_id, start_utc", "label, start_utc"):
            name = f"{self.table}_{cols.split(',')[0]}_start"
            self.db.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {self.table} ({cols})")
        self._insert = (f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (event_id) DO NOTHING")

    def add(self, row: Row) -> bool:
        cur = self.db.execute(self._insert, tuple(getattr(row, c) for c in COLUMNS))
        return cur.rowcount == 1

    def count(self) -> int:
        return self.db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def close(self) -> None:
        self.db.close()


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def open_store(url: str, table: str = "detections") -> Store:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, a plain path, or postgresql://..."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, table)
    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):], table)
    if "://" in url:
        raise UserError(f"--db {_redact(url)}: expected sqlite:///FILE or postgresql://...")
    return SQLiteStore(url, table)


# ------------------------------------------------------------------------- validation
class Validator:
    """Payload bytes -> (message, "") if valid, else (None, reason)."""

    def __init__(self) -> None:
        try:
            jsonschema = importlib.import_module("jsonschema")
        except ImportError:
            raise UserError("meerkit subscribe validates with jsonschema: "
                            "`pip install 'meerkit[server]'`") from None
        schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
        self._validator = jsonschema.Draft202012Validator(schema)
        self._best_match = jsonschema.exceptions.best_match

    def check(self, topic: str, payload: bytes) -> tuple[dict[str, Any] | None, str, str]:
        """(message, reason, detail); reason is "" for a valid message."""
        if len(payload) > MAX_PAYLOAD:
            return None, "too_large", f"{len(payload)} bytes (limit {MAX_PAYLOAD})"
        try:
            msg = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return None, "invalid_json", str(err)
        error = self._best_match(self._validator.iter_errors(msg))
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "(message)"
            return None, "schema", f"{where}: {_short(error.message)}"
        parts = topic.split("/")
        if len(parts) < 3 or parts[-2] != msg["device_id"]:
            return None, "topic_mismatch", (f"device_id {_short(msg['device_id'])!r} published on "
                                            f"{_short(topic)}")
        return msg, "", ""


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())  # one log line, whatever the driver's message holds
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


# ------------------------------------------------------------------------- the subscriber
@dataclass
class Counts:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)

    def line(self) -> str:
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.reasons.items()))
        return (f"received {self.received}, stored {self.stored}, duplicates {self.duplicates}, "
                f"rejected {self.rejected}{f' ({why})' if why else ''}")


def _now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_detection(msg: dict[str, Any]) -> str:
    """One human-readable line per detection (`--print`)."""
    return (f"{msg['start']}  {msg['device_id']}  {msg['label']}  "
            f"conf {msg['confidence']['max']:.2f}  {msg['duration_s']:.2f} s  "
            f"id {msg['event_id']}")


class Subscriber:
    """Validates, stores and counts messages; `run()` connects to the broker and loops."""

    def __init__(self, cfg: SubscriberConfig, store: Store, out: TextIO | None = None):
        self.cfg, self.store = cfg, store
        self.out = out or sys.stdout
        self.validator = Validator()
        self.counts = Counts()
        self.stop = threading.Event()
        self.subscribed = threading.Event()  # the broker granted the subscription
        self.fatal: Exception | None = None
        self._lock = threading.Lock()

    def handle(self, topic: str, payload: bytes) -> str:
        """One message: "stored", "duplicate" or "rejected". Store errors propagate."""
        msg, reason, detail = self.validator.check(topic, payload)
        with self._lock:
            self.counts.received += 1
            if msg is None:
                self.counts.rejected += 1
                self.counts.reasons[reason] += 1
                log.warning("rejected message on %s (%s): %s", _short(topic, 100), reason, detail)
                return "rejected"
        stored = self.store.add(Row.from_message(msg, payload.decode("utf-8"), _now_utc()))
        with self._lock:
            if not stored:
                self.counts.duplicates += 1
                return "duplicate"
            self.counts.stored += 1
        if self.cfg.print_format:
            line = (json.dumps(msg, separators=(",", ":")) if self.cfg.print_format == "json"
                    else format_detection(msg))
            print(line, file=self.out, flush=True)
        if self.cfg.max_messages and self.counts.stored >= self.cfg.max_messages:
            self.stop.set()
        return "stored"

    # ----------------------------------------------------------------- MQTT callbacks
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._fail(UserError(f"MQTT broker {self.cfg.host}:{self.cfg.broker_port} refused "
                                 f"the connection: {reason_code}"))
            return
        log.info("connected to %s:%d; subscribing to %s", self.cfg.host, self.cfg.broker_port,
                 self.cfg.topic)
        client.subscribe(self.cfg.topic, qos=1)  # again on every reconnect (clean sessions)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            self._fail(UserError(f"the broker refused the subscription to {self.cfg.topic} "
                                 f"({', '.join(map(str, reason_codes))}); check its ACL"
                                 f"{' and shared-subscription support' if self.cfg.group else ''}"))
            return
        log.info("subscribed to %s", self.cfg.topic)
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.stop.is_set():
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message) -> None:
        if self.stop.is_set() and self.fatal is not None:
            return  # not acknowledged: the broker redelivers it
        try:
            self.handle(message.topic, message.payload)
        except Exception as err:  # the database: stop without acknowledging
            self._fail(UserError(f"storing a detection failed ({type(err).__name__}: "
                                 f"{_short(str(err))}); unacknowledged messages will be "
                                 "redelivered by the broker"))
            return
        client.ack(message.mid, message.qos)

    def _fail(self, err: Exception) -> None:
        if self.fatal is None:
            self.fatal = err
        self.stop.set()

    # ----------------------------------------------------------------- main loop
    def _client(self):
        mqtt = importlib.import_module("paho.mqtt.client")
        cfg = self.cfg
        # Random suffix: containers of one deployment may share hostname and pid, and a
        # second client with the same id would make the broker drop the first.
        client_id = cfg.client_id or f"meerkit-sub-{socket.gethostname()}-{os.urandom(4).hex()}"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=not cfg.client_id,
                             manual_ack=True)
        password = read_password(cfg)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        elif password:
            raise UserError("an MQTT password is set (file or environment) but --username is not")
        if cfg.use_tls:
            for path, flag in ((cfg.ca_file, "--tls-ca"), (cfg.cert_file, "--tls-cert"),
                               (cfg.key_file, "--tls-key")):
                if path and not os.path.isfile(path):
                    raise UserError(f"{flag} {path}: file not found")
            try:
                client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                               keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (ssl.SSLError, OSError, ValueError) as err:
                raise UserError(f"TLS files cannot be loaded: {err}") from None
        client.reconnect_delay_set(1, 30)
        client.on_connect, client.on_subscribe = self._on_connect, self._on_subscribe
        client.on_disconnect, client.on_message = self._on_disconnect, self._on_message
        return client

    def run(self) -> int:
        """Until stopped (signal, timeout, max_messages, fatal error). Returns the exit code:
        0, or 1 when max_messages was set and not reached."""
        cfg = self.cfg
        client = self._client()
        try:
            client.connect(cfg.host, cfg.broker_port, keepalive=cfg.keepalive_s)
        except (OSError, ssl.SSLError) as err:
            raise UserError(f"cannot connect to the MQTT broker {cfg.host}:{cfg.broker_port}: "
                            f"{err}") from None
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


def read_password(cfg: SubscriberConfig) -> str | None:
    """From --password-file, else the environment variable (never from the command line)."""
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise UserError(f"--password-file {cfg.password_file}: cannot read "
                            f"({err.strerror})") from None
    return os.environ.get(cfg.password_env) if cfg.password_env else None


def validate(cfg: SubscriberConfig) -> None:
    if cfg.print_format not in ("", "text", "json"):
        raise UserError(f"--print {cfg.print_format!r}: text or json")
    for name, value in (("--max-messages", cfg.max_messages), ("--timeout", cfg.timeout_s)):
        if value < 0:
            raise UserError(f"{name} {value}: must be >= 0 (0 = no limit)")
    if not cfg.stats_interval_s > 0:
        raise UserError(f"--stats-interval {cfg.stats_interval_s}: must be > 0")
    if any(c in cfg.group for c in "+#/"):
        raise UserError(f"--group {cfg.group!r}: a group name has no '/', '+' or '#'")
    if not cfg.topic_prefix or any(c in cfg.topic_prefix for c in "+#"):
        raise UserError(f"--topic-prefix {cfg.topic_prefix!r}: non-empty, no '+' or '#'")


def subscribe(cfg: SubscriberConfig, out: TextIO | None = None) -> tuple[int, Counts]:
    """Open the store, run the subscriber, close the store: (exit code, counts)."""
    validate(cfg)
    store = open_store(cfg.db, cfg.table)
    try:
        sub = Subscriber(cfg, store, out)
        return sub.run(), sub.counts
    finally:
        store.close()
