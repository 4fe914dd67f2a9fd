"""The wire format of a detection (schemas/detection.schema.json): what a `Detection` looks like
to the world, whoever carries it (MQTT, stdout). Nothing here sends anything.

* `event_id`: sha256(device, model sha256, label, absolute onset sample)[:16], stable across
  resends and re-runs of the same recording with the same start time.
* `detection_message`: the JSON object, without `published_at`.
* `stamp_published`: the message as the text that leaves the device, `published_at` set to
  the hand-over time (the outbox stores the message unstamped; each hand-over stamps it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.times import iso_utc

if TYPE_CHECKING:  # detect.py imports event_id from here
    from edge_runtime.detect import Detection

DETECTION_SCHEMA = 1

ToMessage = Callable[["Detection"], dict[str, Any]]


def event_id(device_id: str, model_sha256: str, label: str, onset_sample: int) -> str:
    key = f"{device_id}\n{model_sha256}\n{label}\n{onset_sample}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


def detection_message(d: Detection, card: ModelCard, device_id: str, site: str = "",
                      lat: float | None = None, lon: float | None = None) -> dict[str, Any]:
    """The JSON message of schemas/detection.schema.json (without published_at, which is
    stamped when the message is handed to the broker or printed)."""
    msg: dict[str, Any] = {
        "schema": DETECTION_SCHEMA,
        "event_id": d.event_id,
        "device_id": device_id,
        "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
        "label": d.label,
        "confidence": {"max": round(d.confidence_max, 6), "mean": round(d.confidence_mean, 6)},
        "start": iso_utc(d.start),
        "end": iso_utc(d.end),
        "duration_s": round(d.duration_s, 6),
    }
    if lat is not None and lon is not None:
        msg["location"] = {"lat": lat, "lon": lon}
    if site:
        msg["site"] = site
    return msg


def message_builder(card: ModelCard, device_id: str, site: str = "", lat: float | None = None,
                    lon: float | None = None) -> ToMessage:
    """`detection_message` with this device's fixed fields bound: Detection -> message."""
    return partial(detection_message, card=card, device_id=device_id, site=site, lat=lat,
                   lon=lon)


def stamp_published(message: dict[str, Any] | str, now: float) -> str:
    """The message (a dict, or its JSON text as stored in the outbox) as JSON text with
    `published_at` = `now` (Unix time), keys sorted."""
    body = json.loads(message) if isinstance(message, str) else dict(message)
    body["published_at"] = iso_utc(now)
    return json.dumps(body, sort_keys=True)
