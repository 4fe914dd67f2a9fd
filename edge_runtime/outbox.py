"""The durable outbox: every detection is on disk (SQLite, WAL, synchronous=FULL) before it is
handed to the network, and leaves only when the broker acknowledged it (PUBACK).

* Order: rows carry an increasing `seq`; the publisher drains them in that order.
* Crash safety: a committed row survives kill -9 and power loss (FULL syncs the WAL on every
  commit; detections are rare enough that this costs nothing measurable).
* Duplicates: the ids of the last `ACKED_KEEP` acknowledged detections are remembered, so a
  restart that re-processes the same audio (same start time -> same event ids) does not send
  them again. A detection that is still unacknowledged is simply kept once.
* Privacy: a new outbox file is created 0600 (SQLite gives its -wal/-shm files the same
  mode) and missing folders 0700, whatever the umask.
* Disk budget (`max_bytes`, payloads plus a per-row overhead estimate): when the outbox is
  full, NEW detections are refused, counted in `lost` and logged at ERROR level; status shows
  `outbox_full`. The backlog is never dropped to make room: it is the oldest, already-promised
  data, and a refused tail is easy to reason about ("everything after T was lost"), while
  silently deleting old rows would hide a gap in the middle of the record.
* Clips (optional, `add_clip`): their own table, sent only when no detection waits. They
  share the disk budget but may hold at most `CLIP_SHARE` of it, and detections come first:
  a clip that does not fit is dropped (counted in `clips_dropped`), and a detection that does
  not fit evicts the oldest clips before it is ever refused. A clip is remembered as sent
  under `<event_id>/clip`, so a re-run does not send it again either.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.private_files import private_file, private_folder

log = logging.getLogger(__name__)

ROW_OVERHEAD = 128  # bytes per row beyond its payload (ids, index entries, page slack)
ACKED_KEEP = 10000
CLIP_SHARE = 0.5  # of max_bytes that clips may occupy: the rest is kept for detections
STORED, DUPLICATE, FULL = "stored", "duplicate", "full"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS clips (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE TABLE IF NOT EXISTS acked (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE
);
"""


class Outbox:
    """Thread-safe SQLite outbox (one connection, one lock: writes are few and small)."""

    def __init__(self, path: str | Path, max_bytes: int = 50 * 1024 * 1024):
        self.path = str(path)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                private_folder(Path(self.path).parent)
                private_file(self.path)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                       timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            depth, used = self._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
            clips, clip_used = self._db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM clips").fetchone()
        except sqlite3.DatabaseError as err:
            raise UserError(f"outbox {self.path}: cannot open ({err}); move the file aside "
                            "to start a new outbox") from None
        except OSError as err:
            raise UserError(f"outbox {self.path}: cannot create ({err.strerror})") from None
        self._depth = int(depth)
        self._clip_depth = int(clips)
        self._clip_bytes = int(clip_used) + ROW_OVERHEAD * self._clip_depth
        self._bytes = int(used) + ROW_OVERHEAD * self._depth + self._clip_bytes
        self.lost = 0  # refused because the outbox was full
        self.full = False
        self.clips_dropped = 0  # refused or evicted for lack of budget

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def bytes_used(self) -> int:
        """Detections and clips."""
        return self._bytes

    @property
    def clip_depth(self) -> int:
        return self._clip_depth

    def add(self, event_id: str, topic: str, payload: str) -> str:
        """Store a message; STORED, DUPLICATE (already stored or acknowledged) or FULL."""
        size = len(payload.encode()) + ROW_OVERHEAD
        with self._lock:
            if self._db.execute("SELECT 1 FROM acked WHERE event_id = ?", (event_id,)).fetchone():
                return DUPLICATE
            self._evict_clips(self._bytes + size - self.max_bytes)
            if self._bytes + size > self.max_bytes:
                if not self.full:
                    log.error("OUTBOX FULL (%.1f of %.1f MB, %d detections waiting): new "
                              "detections are refused and counted as lost until the broker "
                              "takes the backlog", self._bytes / 1e6, self.max_bytes / 1e6,
                              self._depth)
                self.full = True
                self.lost += 1
                log.error("detection %s LOST: outbox full (%d lost so far)", event_id, self.lost)
                return FULL
            cur = self._db.execute(
                "INSERT OR IGNORE INTO outbox (event_id, topic, payload) VALUES (?, ?, ?)",
                (event_id, topic, payload))
            if cur.rowcount == 0:
                return DUPLICATE
            self._depth += 1
            self._bytes += size
            return STORED

    def add_clip(self, event_id: str, topic: str, payload: str) -> str:
        """Store a clip message; STORED, DUPLICATE, or FULL (dropped: no room within the
        clips' share of the budget)."""
        size = len(payload.encode()) + ROW_OVERHEAD
        key = clip_key(event_id)
        with self._lock:
            if self._db.execute("SELECT 1 FROM acked WHERE event_id = ?", (key,)).fetchone():
                return DUPLICATE
            if (self._clip_bytes + size > CLIP_SHARE * self.max_bytes
                    or self._bytes + size > self.max_bytes):
                self.clips_dropped += 1
                log.warning("clip %s dropped: %.0f kB do not fit the outbox's clip budget "
                            "(%.1f of %.1f MB used; %d clip(s) dropped so far)", event_id,
                            size / 1e3, self._bytes / 1e6, self.max_bytes / 1e6,
                            self.clips_dropped)
                return FULL
            cur = self._db.execute(
                "INSERT OR IGNORE INTO clips (event_id, topic, payload) VALUES (?, ?, ?)",
                (event_id, topic, payload))
            if cur.rowcount == 0:
                return DUPLICATE
            self._clip_depth += 1
            self._clip_bytes += size
            self._bytes += size
            return STORED

    def pending_clips(self, after_seq: int = 0, limit: int = 1) -> list[tuple[int, str, str]]:
        """Up to `limit` stored clips (seq, topic, payload) with seq > after_seq, in order."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, topic, payload FROM clips WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()

    def ack_clip(self, seq: int) -> None:
        """The broker has the clip: delete it, remember it as sent."""
        with self._lock:
            row = self._db.execute("SELECT event_id, payload FROM clips WHERE seq = ?",
                                   (seq,)).fetchone()
            if row is None:  # evicted while in flight
                return
            self._delete("clips", seq, clip_key(row[0]))
            self._forget_clip(len(row[1].encode()) + ROW_OVERHEAD)

    def _evict_clips(self, need: int) -> None:
        """Free at least `need` bytes by deleting the oldest clips (lock held)."""
        while need > 0 and self._clip_depth:
            seq, payload = self._db.execute(
                "SELECT seq, payload FROM clips ORDER BY seq LIMIT 1").fetchone()
            self._db.execute("DELETE FROM clips WHERE seq = ?", (seq,))
            size = len(payload.encode()) + ROW_OVERHEAD
            self._forget_clip(size)
            need -= size
            self.clips_dropped += 1
            log.warning("a clip was dropped to make room for a detection (%d clip(s) dropped "
                        "so far)", self.clips_dropped)

    def _forget_clip(self, size: int) -> None:
        self._clip_depth -= 1
        self._clip_bytes -= size
        self._bytes -= size

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[tuple[int, str, str]]:
        """Up to `limit` stored rows (seq, topic, payload) with seq > after_seq, in order."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit)).fetchall()

    def ack(self, seq: int) -> None:
        """The broker has it: delete the row, remember its event id."""
        with self._lock:
            row = self._db.execute("SELECT event_id, payload FROM outbox WHERE seq = ?",
                                   (seq,)).fetchone()
            if row is None:
                return
            self._delete("outbox", seq, row[0])
            self._depth -= 1
            self._bytes -= len(row[1].encode()) + ROW_OVERHEAD
            if self.full and self._bytes < 0.9 * self.max_bytes:
                self.full = False
                log.warning("outbox has room again (%d detections waiting); %d were lost while "
                            "it was full", self._depth, self.lost)

    def _delete(self, table: str, seq: int, acked_key: str) -> None:
        """Delete a sent row and remember its key, in one transaction (lock held)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(f"DELETE FROM {table} WHERE seq = ?", (seq,))
            cur = self._db.execute("INSERT OR IGNORE INTO acked (event_id) VALUES (?)",
                                   (acked_key,))
            if cur.lastrowid and cur.lastrowid % 1000 == 0:
                self._db.execute("DELETE FROM acked WHERE n <= ?", (cur.lastrowid - ACKED_KEEP,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


def clip_key(event_id: str) -> str:
    """A sent clip's entry in `acked` (its detection's is the bare event_id)."""
    return f"{event_id}/clip"
