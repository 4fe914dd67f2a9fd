"""The wire format of a detection (schemas/detection.schema.json) and of its clip
(schemas/clip.schema.json): what a `Detection` looks like to the world, whoever carries it
(MQTT, stdout). Nothing here sends anything.

* `event_id`: sha256(device, model sha256, label, absolute onset sample)[:16], stable across
  resends and re-runs of the same recording with the same start time.
* `detection_message`: the JSON object, without `published_at`.
* `stamp_published`: the message as the text that leaves the device, `published_at` set to
  the hand-over time (the outbox stores the message unstamped; each hand-over stamps it).
* Versions: schema 1 when the device records no clips (byte for byte what it always sent);
  schema 2 when it does, with a `clip` object {file, format, offset_s, duration_s[, topic]}.
* `clip_message`: the clip's bytes (base64) and their sha256, on `<prefix>/<device>/clips/
  <event_id>`.

Why the detection carries no sha256 of its clip: the clip ends `post_s` (1 s by default)
after the event, so its bytes exist only some time after the detection could be sent: post_s
minus the lag the detector already has (its window must pass the call end), plus one audio
block. Measured (energy test model, 1 s window, default pre/post 1 s, real-time replay, local
mosquitto, clip arrival minus its detection's): 0.39 s median / 0.43 s max at hop 0.2 s,
0.51 / 0.52 s at hop 0.5 s, 0.12 / 0.51 s at hop 1 s. Holding every detection for its clip
would add that to call end -> MQTT, which benchmarks/RESULTS.md measures at 0.69 / 1.61 s (hop
1 s) and 1.09 / 1.21 s (hop 0.2 s) against a <= 1 s target: the max would grow to ~2.1 s and
~1.6 s, and one for one with any longer post_s, to attach a hash that only matters once the
clip itself arrives. Instead the detection names the clip by its deterministic file name
(onset, label, event_id: all known when the event closes) with its offset and duration (fixed
by pre_s/post_s); the clip message, sent later, carries the bytes with their sha256, which the
subscriber verifies and stores next to the detection's row.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from edge_runtime.contract.card import ModelCard
from edge_runtime.contract.times import iso_utc

if TYPE_CHECKING:  # detect.py imports event_id from here
    from edge_runtime.detect import Detection

DETECTION_SCHEMA = 1  # no clip: unchanged since the first release
DETECTION_SCHEMA_WITH_CLIP = 2
CLIP_SCHEMA = 1

ToMessage = Callable[["Detection"], dict[str, Any]]
ClipReference = Callable[["Detection"], dict[str, Any]]  # Detection -> the `clip` object


def event_id(device_id: str, model_sha256: str, label: str, onset_sample: int) -> str:
    key = f"{device_id}\n{model_sha256}\n{label}\n{onset_sample}".encode()
    return hashlib.sha256(key).hexdigest()[:16]


def detection_message(d: Detection, card: ModelCard, device_id: str, site: str = "",
                      lat: float | None = None, lon: float | None = None,
                      clip: ClipReference | None = None) -> dict[str, Any]:
    """The JSON message of schemas/detection.schema.json (without published_at, which is
    stamped when the message is handed to the broker or printed): version 1, or version 2
    with `clip(d)` as its `clip` object when the device records clips."""
    msg: dict[str, Any] = {
        "schema": DETECTION_SCHEMA if clip is None else DETECTION_SCHEMA_WITH_CLIP,
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
    if clip is not None:
        msg["clip"] = clip(d)
    return msg


def message_builder(card: ModelCard, device_id: str, site: str = "", lat: float | None = None,
                    lon: float | None = None, clip: ClipReference | None = None) -> ToMessage:
    """`detection_message` with this device's fixed fields bound: Detection -> message."""
    return partial(detection_message, card=card, device_id=device_id, site=site, lat=lat,
                   lon=lon, clip=clip)


def clip_message(event_id: str, device_id: str, file: str, data: bytes,
                 fmt: str = "wav") -> dict[str, Any]:
    """The JSON message of schemas/clip.schema.json (without published_at): the clip file's
    bytes as base64, with their sha256."""
    return {"schema": CLIP_SCHEMA, "event_id": event_id, "device_id": device_id, "file": file,
            "format": fmt, "sha256": hashlib.sha256(data).hexdigest(),
            "data": base64.b64encode(data).decode("ascii")}


def stamp_published(message: dict[str, Any] | str, now: float) -> str:
    """The message (a dict, or its JSON text as stored in the outbox) as JSON text with
    `published_at` = `now` (Unix time), keys sorted."""
    body = json.loads(message) if isinstance(message, str) else dict(message)
    body["published_at"] = iso_utc(now)
    return json.dumps(body, sort_keys=True)
