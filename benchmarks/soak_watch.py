"""What benchmarks/soak.py watches, from outside the runtime: every delivery at a subscriber,
the outbox file (read-only), and the runtime's resident memory.

* `Tally`: a paho subscriber with a persistent session (QoS 1, clean_session False), so the
  broker queues what arrives while it reconnects; it counts each delivery per event_id and
  keeps the first body of each (a later one with other content is a conflict).
* `outbox_*`: read-only SQLite queries on the runtime's outbox (`mode=ro`; WAL readers never
  block the writer). They know two things of edge_runtime/outbox.py's schema: the `outbox`
  table holds the unacknowledged rows (event_id, payload), `acked` one row per acknowledged
  event_id with an AUTOINCREMENT `n` (so max(n) counts acknowledgements even after trimming).
* `Sampler`: a thread that records the outbox depth every 0.1 s and the runtime's VmRSS
  (/proc/PID/status) every second, each against the audio time fed so far.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RSS_FLAT_MB = 5.0  # DESIGN.md: flat RSS over the soak; 5 MB is the tolerance issue 12 sets


class Tally:
    """Every detection delivered on `topic` of the broker at 127.0.0.1:`port`."""

    def __init__(self, port: int, topic: str, client_id: str = "soak-subscriber"):
        from paho.mqtt import client as mqtt

        self.deliveries: Counter[str] = Counter()
        self.first: dict[str, dict] = {}  # event_id -> its first body, published_at removed
        self.conflicts: list[str] = []  # event ids delivered with different content
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1.0)  # back before the runtime's 1 s minimum
        self.topic = topic
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"the soak subscriber could not connect to 127.0.0.1:{port}")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.topic, qos=1)
            self._connected.set()

    def _on_message(self, client, userdata, msg) -> None:
        body = json.loads(msg.payload)
        body.pop("published_at", None)  # stamped at each hand-over: differs between resends
        with self._cond:
            key = body["event_id"]
            if key in self.first and self.first[key] != body and key not in self.conflicts:
                self.conflicts.append(key)
            self.first.setdefault(key, body)
            self.deliveries[key] += 1
            self._cond.notify_all()

    @property
    def delivered(self) -> int:
        return sum(self.deliveries.values())

    @property
    def distinct(self) -> int:
        return len(self.deliveries)

    def messages(self) -> list[dict]:
        """One body per event_id (de-duplicated), in arrival order."""
        with self._cond:
            return list(self.first.values())

    def wait_until(self, predicate: Callable[[Tally], bool], timeout_s: float) -> bool:
        """Wake on each delivery until `predicate(self)` holds or `timeout_s` passes."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------- the outbox file
def _query(path: Path, sql: str) -> list[tuple] | None:
    """Rows of a read-only query, or None when the outbox is not there (yet) or busy."""
    if not path.exists():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None


def outbox_depth(path: Path) -> int | None:
    rows = _query(path, "SELECT count(*) FROM outbox")
    return None if rows is None else int(rows[0][0])


def outbox_messages(path: Path) -> list[dict]:
    """The unacknowledged detections waiting in the outbox."""
    return [json.loads(p) for (p,) in _query(path, "SELECT payload FROM outbox") or []]


def outbox_acknowledged(path: Path) -> int:
    """How many distinct detections the broker has acknowledged (PUBACK) over all runs."""
    rows = _query(path, "SELECT coalesce(max(n), 0) FROM acked")
    return 0 if rows is None else int(rows[0][0])


# ------------------------------------------------------------------------- sampling
def vm_rss_mb(pid: int) -> float | None:
    """VmRSS of `pid` in MB (2^20 bytes), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


class Sampler(threading.Thread):
    """Outbox depth every `interval_s` and the current runtime's RSS every `rss_every` of
    those, each as (wall s since start, audio s fed so far, ...)."""

    def __init__(self, outbox: Path, audio_s: Callable[[], float], interval_s: float = 0.1,
                 rss_every: int = 10):
        super().__init__(name="soak-sampler", daemon=True)
        self.outbox, self.audio_s = outbox, audio_s
        self.interval_s, self.rss_every = interval_s, rss_every
        self.depth: list[tuple[float, float, int]] = []
        self.rss: list[tuple[float, float, int, float]] = []  # (wall, audio, process, MB)
        self.process: tuple[int, int] | None = None  # (process number, pid) being watched
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        tick = 0
        while not self._halt.wait(self.interval_s):  # a period, not a synchronisation
            wall, audio = time.monotonic() - self._t0, self.audio_s()
            depth = outbox_depth(self.outbox)
            if depth is not None:
                self.depth.append((round(wall, 2), round(audio, 2), depth))
            process = self.process
            if tick % self.rss_every == 0 and process is not None:
                mb = vm_rss_mb(process[1])
                if mb is not None:
                    self.rss.append((round(wall, 2), round(audio, 2), process[0], round(mb, 3)))
            tick += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()


def rss_summary(samples: list[tuple[float, float]], warmup_s: float) -> dict[str, Any]:
    """(audio s since this process started, MB) -> start/end/max, slope and the flat verdict.
    `start` is the first sample after `warmup_s` of audio (imports, the interpreter and the
    first outage and reconnect have all happened by then); `first` is the very first one.
    `flat`: end and max within RSS_FLAT_MB of start; None when no sample follows the warm-up."""
    steady = [s for s in samples if s[0] >= warmup_s]
    if not steady:  # too short to tell: no verdict
        return {"samples": len(samples), "flat": None}
    audio_h = np.array([a for a, _ in steady]) / 3600.0
    mb = np.array([m for _, m in steady])
    slope = float(np.polyfit(audio_h, mb, 1)[0]) if len(steady) >= 3 else None
    growth = float(mb[-1] - mb[0])
    return {"samples": len(samples), "first_mb": round(samples[0][1], 2),
            "start_mb": round(float(mb[0]), 2), "end_mb": round(float(mb[-1]), 2),
            "max_mb": round(float(mb.max()), 2), "growth_mb": round(growth, 2),
            "slope_mb_per_audio_h": None if slope is None else round(slope, 2),
            "start_audio_s": round(steady[0][0], 1), "end_audio_s": round(steady[-1][0], 1),
            "flat": abs(growth) <= RSS_FLAT_MB and float(mb.max() - mb[0]) <= RSS_FLAT_MB}
