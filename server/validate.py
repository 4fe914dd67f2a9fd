"""Is a payload a detection the server stores? Structural and semantic checks, identical for
every store (so PostgreSQL accepts exactly what SQLite accepts), that never raise.

In order, a payload must be: at most 64 KiB; UTF-8 (`json.loads(bytes)` would also take
UTF-16/32); one JSON value without NaN/Infinity, numbers that overflow a double, or a key
given twice; strings without NUL or lone surrogates (PostgreSQL cannot store them) and of
bounded length; valid against schemas/detection.schema.json; real calendar times (the
schema's pattern admits 2025-02-30); end >= start; duration_s within 1 ms (the times'
rounding) of end - start and at most a day; published by the device its topic names.
Detections of schema 1 and 2 (2 may name a clip) pass the same checks.

A clip message (`check_clip`, schemas/clip.schema.json, on `<prefix>/<device>/clips/<id>`)
goes through the same parse and string checks (its base64 `data` may be long), its schema,
its topic (device and event id), strict base64, and the sha256 of the decoded bytes, within
`max_clip_bytes` of payload. Whether its detection exists is the subscriber's question.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import edge_runtime.contract
from edge_runtime.contract.errors import UserError

SCHEMAS = Path(edge_runtime.contract.__file__).resolve().parent / "schemas"
SCHEMA_PATH = SCHEMAS / "detection.schema.json"
CLIP_SCHEMA_PATH = SCHEMAS / "clip.schema.json"
MAX_PAYLOAD = 64 * 1024  # a detection is < 1 KiB
MAX_CLIP_PAYLOAD = 4 * 1024 * 1024  # default; base64 makes a clip a third larger
MAX_STRING = 1024  # any string value or key
MAX_KEY_STRING = 128  # device_id and label: indexed, shown in every listing
MAX_DURATION_S = 86400.0  # the runtime publishes long sounds in chunks (model.max_duration_s)
# start and end are each rounded to the millisecond: end - start is off by up to 1 ms.
DURATION_TOLERANCE_S = 0.001 + 1e-9
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_EVENT_ID = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Verdict:
    """`message` for a payload to store; else `reason` (a short key, counted) and `detail`."""

    message: dict[str, Any] | None
    reason: str = ""
    detail: str = ""
    event_id: str | None = None  # when one could be read, also from a rejected payload
    data: bytes = b""  # a clip's decoded bytes

    @property
    def ok(self) -> bool:
        return self.message is not None


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


class Validator:
    """Payload bytes -> `Verdict`. Needs jsonschema (the `server` extra)."""

    def __init__(self, max_clip_bytes: int = MAX_CLIP_PAYLOAD) -> None:
        self.max_clip_bytes = max_clip_bytes
        try:
            jsonschema = importlib.import_module("jsonschema")
        except ImportError:
            raise UserError("meerkit subscribe validates with jsonschema: "
                            "`pip install 'meerkit[server]'`") from None
        self._validator, self._clip_validator = (
            jsonschema.Draft202012Validator(json.loads(path.read_text(encoding="utf-8")))
            for path in (SCHEMA_PATH, CLIP_SCHEMA_PATH))
        self._best_match = jsonschema.exceptions.best_match

    def check(self, topic: str, payload: bytes) -> Verdict:
        msg: Any = None
        try:
            msg = parse(payload)
            check_strings(msg)
            self._check_schema(msg)
            check_times(msg)
            check_topic(topic, msg)
        except _Reject as bad:
            return Verdict(None, bad.reason, short(bad.detail), _event_id_of(msg))
        except Exception as err:  # a check that trips over hostile input: still a rejection
            return Verdict(None, "invalid", short(f"{type(err).__name__}: {err}"),
                           _event_id_of(msg))
        return Verdict(msg, event_id=msg["event_id"])

    def check_clip(self, topic: str, payload: bytes) -> Verdict:
        """A clip message: its `Verdict` carries the decoded bytes (`data`)."""
        msg: Any = None
        try:
            msg = parse(payload, self.max_clip_bytes)
            check_strings(msg, long_ok=("data",))
            self._check_schema(msg, self._clip_validator)
            utc_time_or_reject("published_at", msg["published_at"])
            check_clip_topic(topic, msg)
            data = decode_clip(msg)
        except _Reject as bad:
            return Verdict(None, bad.reason, short(bad.detail), _event_id_of(msg))
        except Exception as err:  # a check that trips over hostile input: still a rejection
            return Verdict(None, "invalid", short(f"{type(err).__name__}: {err}"),
                           _event_id_of(msg))
        return Verdict(msg, event_id=msg["event_id"], data=data)

    def _check_schema(self, msg: Any, validator: Any = None) -> None:
        error = self._best_match((validator or self._validator).iter_errors(msg))
        if error is not None:
            where = "/".join(map(str, error.absolute_path)) or "(message)"
            raise _Reject("schema", f"{where}: {error.message}")


def parse(payload: bytes, limit: int = MAX_PAYLOAD) -> Any:
    """Strict JSON from strict UTF-8, at most `limit` bytes."""
    if len(payload) > limit:
        raise _Reject("too_large", f"{len(payload)} bytes (limit {limit})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Reject("not_utf8", f"byte {err.start}: {err.reason}") from None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except (RecursionError, ValueError) as err:  # JSONDecodeError; ints over 4300 digits
        raise _Reject("invalid_json", f"{type(err).__name__}: {err}") from None


def _no_constant(name: str) -> Any:
    raise _Reject("non_finite", f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Reject("non_finite", f"{text[:40]} overflows a double")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Reject("duplicate_key", f"key {key[:40]!r} given twice")
        out[key] = value
    return out


def check_strings(value: Any, path: str = "", long_ok: tuple[str, ...] = ()) -> None:
    """No NUL, no lone surrogate, bounded length, in every key and string value (but the
    top-level keys `long_ok` may hold strings of any length)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, f"{path}/{key[:40]}" if path else key[:40])
            if not (key in long_ok and not path and isinstance(item, str)):
                check_strings(item, f"{path}/{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_strings(item, f"{path}/{i}")
    elif isinstance(value, str):
        limit = MAX_KEY_STRING if path in ("device_id", "label") else MAX_STRING
        _check_text(value, path or "(message)", limit)


def _check_text(text: str, where: str, limit: int = MAX_STRING) -> None:
    if len(text) > limit:
        raise _Reject("too_long", f"{where}: {len(text)} characters (limit {limit})")
    if "\x00" in text:
        raise _Reject("bad_string", f"{where}: contains NUL")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Reject("bad_string", f"{where}: a lone UTF-16 surrogate") from None


def utc_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


def utc_time_or_reject(key: str, text: str) -> datetime:
    try:
        return utc_time(text)
    except ValueError as err:
        raise _Reject("bad_time", f"{key} {text!r}: {err}") from None


def check_times(msg: dict[str, Any]) -> None:
    times = {key: utc_time_or_reject(key, msg[key]) for key in ("start", "end", "published_at")}
    span = (times["end"] - times["start"]).total_seconds()
    if span < 0:
        raise _Reject("end_before_start", f"end {msg['end']} is before start {msg['start']}")
    duration = msg["duration_s"]
    if duration > MAX_DURATION_S:
        raise _Reject("out_of_range", f"duration_s {str(duration)[:24]} (limit "
                                      f"{MAX_DURATION_S:g})")
    if abs(duration - span) > DURATION_TOLERANCE_S:
        raise _Reject("duration_mismatch", f"duration_s {duration:.6g} but end - start = "
                                           f"{span:.3f} s")


def check_topic(topic: str, msg: dict[str, Any]) -> None:
    parts = topic.split("/")
    if len(parts) < 3 or parts[-2] != msg["device_id"]:
        raise _Reject("topic_mismatch", f"device_id {msg['device_id']!r} published on {topic}")


def check_clip_topic(topic: str, msg: dict[str, Any]) -> None:
    parts = topic.split("/")
    if len(parts) < 4 or parts[-3] != msg["device_id"] or parts[-1] != msg["event_id"]:
        raise _Reject("topic_mismatch", f"clip {msg['event_id']} of {msg['device_id']!r} "
                                        f"published on {topic}")


def decode_clip(msg: dict[str, Any]) -> bytes:
    """The clip's bytes, strict base64, matching the sha256 the message gives."""
    try:
        data = base64.b64decode(msg["data"], validate=True)
    except (binascii.Error, ValueError) as err:
        raise _Reject("bad_base64", f"data: {err}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != msg["sha256"]:
        raise _Reject("sha256_mismatch", f"{len(data)} bytes hash to {digest}, the message "
                                         f"says {msg['sha256']}")
    return data


def _event_id_of(msg: Any) -> str | None:
    event_id = msg.get("event_id") if isinstance(msg, dict) else None
    return event_id if isinstance(event_id, str) and _EVENT_ID.match(event_id) else None


def short(text: str, limit: int = 160) -> str:
    """One printable log line, whatever a payload or a driver's message holds."""
    text = " ".join(str(text).split()).replace("\x00", "\\x00")
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"
