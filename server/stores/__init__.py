"""Where detections land: one small `Store` interface, two implementations (sqlite.py, the
default; postgres.py, psycopg 3 imported only when asked for), chosen by `open_store(url)`.

Each store keeps three tables: `<table>` (one row per event_id, the message as received),
`<table>_clips` (the clip bytes a detection of schema 2 announced, one per event_id, beside
its row: BLOB in SQLite, BYTEA in PostgreSQL, so a clip lives and is backed up with its row)
and `<table>_dead_letters` (every rejected payload: reason, detail, topic, its first bytes).
Both take only what server/validate.py accepted, so they accept the same things.

Errors: a store raises `StoreUnavailable` for a failure of the store itself (connection lost,
disk full, database locked past its timeout, a corrupt file): the subscriber then stops
without acknowledging, and the broker redelivers. Any other exception is about the row and
the subscriber rejects that one payload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from edge_runtime.contract.errors import UserError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
HEAD_BYTES = 256  # of a rejected payload, kept in the dead-letter table
VOLATILE = ("published_at",)  # stamped per hand-over: a resend may differ here and only here


class StoreUnavailable(Exception):
    """The store itself failed; nothing about the row."""


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
        lat, lon = loc.get("lat"), loc.get("lon")
        return cls(msg["event_id"], msg["device_id"], msg["label"], msg["start"], msg["end"],
                   float(msg["duration_s"]), float(msg["confidence"]["max"]),
                   float(msg["confidence"]["mean"]), msg["model"]["name"],
                   msg["model"]["version"], msg["model"]["sha256"],
                   None if lat is None else float(lat), None if lon is None else float(lon),
                   msg.get("site", ""), msg["published_at"], received_at, payload)


COLUMNS = tuple(Row.__dataclass_fields__)


@dataclass(frozen=True)
class ClipRow:
    event_id: str  # of the detection stored in <table>
    device_id: str
    file: str
    format: str
    sha256: str
    size: int
    published_at: str
    received_at: str
    data: bytes  # the clip file, byte for byte

    @classmethod
    def from_message(cls, msg: dict[str, Any], data: bytes, received_at: str) -> ClipRow:
        return cls(msg["event_id"], msg["device_id"], msg["file"], msg["format"], msg["sha256"],
                   len(data), msg["published_at"], received_at, data)


CLIP_COLUMNS = tuple(ClipRow.__dataclass_fields__)


@dataclass(frozen=True)
class DeadLetter:
    received_at: str
    reason: str
    detail: str
    topic: str
    event_id: str | None
    size: int  # bytes of the whole payload
    head: bytes  # its first HEAD_BYTES bytes (the whole payload for a conflict)


DEAD_COLUMNS = tuple(DeadLetter.__dataclass_fields__)


class Store(Protocol):
    def add(self, row: Row) -> bool:
        """Insert and commit; False if a row with this event_id already exists."""

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored message with this event_id, or None."""

    def add_clip(self, clip: ClipRow) -> bool:
        """Insert and commit; False if this event_id has a clip already."""

    def clip_sha256(self, event_id: str) -> str | None:
        """The sha256 of the clip stored for this event_id, or None."""

    def count_clips(self) -> int: ...

    def dead_letter(self, letter: DeadLetter) -> None:
        """Keep a rejected payload (committed)."""

    def count(self) -> int:
        """Rows stored."""

    def count_dead_letters(self) -> int: ...

    def close(self) -> None: ...


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two messages with one event_id say the same thing (a redelivery, not a conflict)."""
    return differing_fields(a, b) == []


def differing_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    # Python equality, not the JSON text: PostgreSQL's jsonb gives 1e2 back as 100.
    keys = (a.keys() | b.keys()) - set(VOLATILE)
    return sorted(k for k in keys if a.get(k) != b.get(k))


def table_name(name: str) -> str:
    if not _IDENT.match(name):
        raise UserError(f"--table {name!r}: letters, digits and _ only (at most 48)")
    return name


def redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def open_store(url: str, table: str = "detections") -> Store:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, a plain path, or postgresql://..."""
    if url.startswith(("postgresql://", "postgres://")):
        from server.stores.postgres import PostgresStore

        return PostgresStore(url, table)
    from server.stores.sqlite import SQLiteStore

    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///"):], table)
    if "://" in url:
        raise UserError(f"--db {redact(url)}: expected sqlite:///FILE or postgresql://...")
    return SQLiteStore(url, table)
