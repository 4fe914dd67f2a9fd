"""The default store: SQLite in WAL mode, synchronous=FULL (a committed row survives power
loss, and only then is the message acknowledged). Several subscribers may share the file
(busy timeout). A new database file is created 0600."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.private_files import private_file
from server.stores import (
    CLIP_COLUMNS,
    COLUMNS,
    DEAD_COLUMNS,
    ClipRow,
    DeadLetter,
    Row,
    StoreUnavailable,
    table_name,
)

# Errors about the row, not the database (NOT NULL, a value sqlite3 cannot bind, ...).
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError,
               sqlite3.InterfaceError)


@contextlib.contextmanager
def _outage_is_unavailable() -> Iterator[None]:
    """Disk full, I/O error, locked past the timeout, corrupt file -> StoreUnavailable."""
    try:
        yield
    except _ROW_ERRORS:
        raise
    except (sqlite3.Error, OSError, MemoryError) as err:
        raise StoreUnavailable(f"SQLite: {err}") from err


class SQLiteStore:
    def __init__(self, path: str | Path, table: str = "detections", busy_timeout_s: float = 30.0):
        self.path, self.table = Path(path), table_name(table)
        self.dead_table = f"{self.table}_dead_letters"
        self.clip_table = f"{self.table}_clips"
        if self.path.parent and not self.path.parent.is_dir():
            raise UserError(f"--db {self.path}: folder {self.path.parent} does not exist")
        try:
            private_file(self.path)
            # The paho network thread writes; nothing else touches the connection meanwhile.
            self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=busy_timeout_s,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
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
                CREATE TABLE IF NOT EXISTS {self.dead_table} (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, received_at TEXT NOT NULL,
                    reason TEXT NOT NULL, detail TEXT NOT NULL, topic TEXT NOT NULL,
                    event_id TEXT, size INTEGER NOT NULL, head BLOB NOT NULL);
                CREATE INDEX IF NOT EXISTS {self.dead_table}_reason
                    ON {self.dead_table} (reason, received_at);
                CREATE TABLE IF NOT EXISTS {self.clip_table} (
                    event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, file TEXT NOT NULL,
                    format TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                    published_at TEXT NOT NULL, received_at TEXT NOT NULL, data BLOB NOT NULL);
            """)
        except (sqlite3.Error, OSError) as err:
            raise UserError(f"--db {self.path}: cannot open the SQLite database ({err})") from None
        self._insert = (f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(COLUMNS))}) ON CONFLICT (event_id) DO NOTHING")
        self._insert_dead = (f"INSERT INTO {self.dead_table} ({', '.join(DEAD_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(DEAD_COLUMNS))})")
        self._insert_clip = (f"INSERT INTO {self.clip_table} ({', '.join(CLIP_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(CLIP_COLUMNS))}) "
                             "ON CONFLICT (event_id) DO NOTHING")

    def add(self, row: Row) -> bool:
        with _outage_is_unavailable():
            cur = self.db.execute(self._insert, tuple(getattr(row, c) for c in COLUMNS))
        return cur.rowcount == 1

    def get(self, event_id: str) -> dict[str, Any] | None:
        with _outage_is_unavailable():
            found = self.db.execute(f"SELECT payload FROM {self.table} WHERE event_id = ?",
                                    (event_id,)).fetchone()
        return None if found is None else json.loads(found[0])

    def add_clip(self, clip: ClipRow) -> bool:
        with _outage_is_unavailable():
            cur = self.db.execute(self._insert_clip, tuple(getattr(clip, c) for c in CLIP_COLUMNS))
        return cur.rowcount == 1

    def clip_sha256(self, event_id: str) -> str | None:
        with _outage_is_unavailable():
            found = self.db.execute(f"SELECT sha256 FROM {self.clip_table} WHERE event_id = ?",
                                    (event_id,)).fetchone()
        return None if found is None else found[0]

    def count_clips(self) -> int:
        with _outage_is_unavailable():
            return self.db.execute(f"SELECT count(*) FROM {self.clip_table}").fetchone()[0]

    def dead_letter(self, letter: DeadLetter) -> None:
        with _outage_is_unavailable():
            self.db.execute(self._insert_dead, tuple(getattr(letter, c) for c in DEAD_COLUMNS))

    def count(self) -> int:
        with _outage_is_unavailable():
            return self.db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def count_dead_letters(self) -> int:
        with _outage_is_unavailable():
            return self.db.execute(f"SELECT count(*) FROM {self.dead_table}").fetchone()[0]

    def close(self) -> None:
        self.db.close()
