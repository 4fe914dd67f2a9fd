"""PostgreSQL via psycopg 3 (the `server` extra), autocommit: each insert is its own
transaction. Times are TIMESTAMPTZ, the message JSONB."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

from edge_runtime.contract.errors import UserError
from server.stores import (
    CLIP_COLUMNS,
    COLUMNS,
    DEAD_COLUMNS,
    ClipRow,
    DeadLetter,
    Row,
    StoreUnavailable,
    redact,
    table_name,
)


class PostgresStore:
    def __init__(self, url: str, table: str = "detections"):
        try:
            self._psycopg = psycopg = importlib.import_module("psycopg")
        except ImportError:
            raise UserError("--db postgresql://... needs psycopg 3: "
                            "`pip install 'meerkit[server]'`") from None
        self.table = table_name(table)
        self.dead_table = f"{self.table}_dead_letters"
        self.clip_table = f"{self.table}_clips"
        try:
            self.db = psycopg.connect(url, autocommit=True)
        except psycopg.Error as err:
            raise UserError(f"--db: cannot connect to PostgreSQL ({redact(url)}): "
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
        self.db.execute(f"""
            CREATE TABLE IF NOT EXISTS {self.dead_table} (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                received_at TIMESTAMPTZ NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
                topic TEXT NOT NULL, event_id TEXT, size INTEGER NOT NULL, head BYTEA NOT NULL)""")
        self.db.execute(f"CREATE INDEX IF NOT EXISTS {self.dead_table}_reason "
                        f"ON {self.dead_table} (reason, received_at)")
        self.db.execute(f"""
            CREATE TABLE IF NOT EXISTS {self.clip_table} (
                event_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, file TEXT NOT NULL,
                format TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
                published_at TIMESTAMPTZ NOT NULL, received_at TIMESTAMPTZ NOT NULL,
                data BYTEA NOT NULL)""")
        self._insert = (f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES "
                        f"({', '.join(['%s'] * len(COLUMNS))}) ON CONFLICT (event_id) DO NOTHING")
        self._insert_clip = (f"INSERT INTO {self.clip_table} ({', '.join(CLIP_COLUMNS)}) VALUES "
                             f"({', '.join(['%s'] * len(CLIP_COLUMNS))}) "
                             "ON CONFLICT (event_id) DO NOTHING")
        self._insert_dead = (f"INSERT INTO {self.dead_table} ({', '.join(DEAD_COLUMNS)}) "
                             f"VALUES ({', '.join(['%s'] * len(DEAD_COLUMNS))})")

    @contextlib.contextmanager
    def _outage_is_unavailable(self) -> Iterator[None]:
        """Connection lost, server shutting down, disk full (class 53), ... -> StoreUnavailable;
        data and integrity errors stay errors about the row."""
        psycopg = self._psycopg
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError,
                psycopg.errors.InternalError) as err:
            raise StoreUnavailable(f"PostgreSQL: {str(err).strip()}") from err

    def add(self, row: Row) -> bool:
        with self._outage_is_unavailable():
            cur = self.db.execute(self._insert, tuple(getattr(row, c) for c in COLUMNS))
        return cur.rowcount == 1

    def get(self, event_id: str) -> dict[str, Any] | None:
        with self._outage_is_unavailable():
            found = self.db.execute(f"SELECT payload FROM {self.table} WHERE event_id = %s",
                                    (event_id,)).fetchone()
        return None if found is None else found[0]

    def add_clip(self, clip: ClipRow) -> bool:
        with self._outage_is_unavailable():
            cur = self.db.execute(self._insert_clip, tuple(getattr(clip, c) for c in CLIP_COLUMNS))
        return cur.rowcount == 1

    def clip_sha256(self, event_id: str) -> str | None:
        with self._outage_is_unavailable():
            found = self.db.execute(f"SELECT sha256 FROM {self.clip_table} WHERE event_id = %s",
                                    (event_id,)).fetchone()
        return None if found is None else found[0]

    def count_clips(self) -> int:
        with self._outage_is_unavailable():
            return self.db.execute(f"SELECT count(*) FROM {self.clip_table}").fetchone()[0]

    def dead_letter(self, letter: DeadLetter) -> None:
        with self._outage_is_unavailable():
            self.db.execute(self._insert_dead, tuple(getattr(letter, c) for c in DEAD_COLUMNS))

    def count(self) -> int:
        with self._outage_is_unavailable():
            return self.db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]

    def count_dead_letters(self) -> int:
        with self._outage_is_unavailable():
            return self.db.execute(f"SELECT count(*) FROM {self.dead_table}").fetchone()[0]

    def close(self) -> None:
        self.db.close()
