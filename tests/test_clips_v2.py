"""Clips linked to detections (detection schema 2, clip messages), against a real mosquitto:
the real edge-runtime on a WAV sends v2 detections and their clips, and `meerkit subscribe`
(server.subscriber in-process) stores each clip byte for byte beside its row, its sha256 that
of the file the device wrote; v1 is still accepted; hostile clips are dead letters; clips
never hold back detections (order, outbox budget, size cap, pacing)."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import Collector, start_runtime

from edge_runtime.contract.card import read_card
from edge_runtime.contract.times import iso_utc
from edge_runtime.contract.wav import read_wav
from edge_runtime.detect import Detection
from edge_runtime.message import clip_message, message_builder
from edge_runtime.mqtt_client import MqttConfig
from edge_runtime.outbox import CLIP_SHARE, FULL, ROW_OVERHEAD, STORED, Outbox
from edge_runtime.publish import MqttPublisher, clip_topic
from edge_runtime.sinks.clips import ClipRecorder
from tests.test_sinks import detection as det
from tests.test_subscribe import Running, config, dead_letters, detection, publish, rows, topic

SCHEMAS = Path(__file__).resolve().parents[1] / "edge_runtime" / "contract" / "schemas"
DEVICE = "clip-rec"
SR = 16000
T0 = 1704067200.0


def clips(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return {r["event_id"]: dict(r) for r in con.execute("SELECT * FROM detections_clips")}


# ------------------------------------------------------------------------- end to end
def test_a_v2_detection_and_its_clip_reach_the_subscriber_byte_exact(broker, energy_model,
                                                                      burst_wav, tmp_path):
    db, clips_dir = tmp_path / "server.sqlite", tmp_path / "clips"
    server = Running(config(broker, db))
    v1 = detection(0, device="old-rec")  # a device that records no clips: still accepted
    publish(broker, [(topic("old-rec"), v1)])
    wav, _ = burst_wav
    proc = start_runtime(
        "--model", str(energy_model), "--device-id", DEVICE, "--input", str(wav),
        "--start-time", "2024-01-01T00:00:00Z", "--mqtt-host", "127.0.0.1", "--mqtt-port",
        str(broker.port), "--outbox-path", str(tmp_path / "outbox.sqlite"),
        "--clips-dir", str(clips_dir), "--clips-pre-s", "0.5", "--clips-post-s", "0.5",
        "--clips-mqtt", "--clips-max-kbps", "0", "--outbox-drain-timeout-s", "20")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert server.wait_for(lambda: server.sub.counts.clips >= 9, 20), server.sub.counts.line()
    assert server.stop() == 0
    assert server.sub.counts.rejected == 0, server.sub.counts.line()

    stored, kept = rows(db), clips(db)
    assert json.loads(stored[v1["event_id"]]["payload"]) == v1
    device_rows = {k: json.loads(r["payload"]) for k, r in stored.items() if r["device_id"] == DEVICE}
    assert len(device_rows) == 9 and set(kept) == set(device_rows)
    for eid, msg in device_rows.items():
        ref = msg["clip"]
        assert msg["schema"] == 2 and ref["topic"] == f"meerkit/{DEVICE}/clips/{eid}"
        written = (clips_dir / ref["file"]).read_bytes()  # the file the device wrote
        row = kept[eid]
        assert row["data"] == written and row["size"] == len(written)
        assert row["sha256"] == hashlib.sha256(written).hexdigest()
        assert (row["file"], row["format"], row["device_id"]) == (ref["file"], "wav", DEVICE)
        audio, info = read_wav(clips_dir / ref["file"])
        assert info.sample_rate == SR and len(audio) / SR == pytest.approx(ref["duration_s"], abs=1e-6)
        assert ref["offset_s"] == 0.5
        assert ref["duration_s"] == pytest.approx(msg["duration_s"] + 1.0, abs=0.002)


def test_without_clips_the_device_sends_schema_1_unchanged(energy_model):
    card = read_card(energy_model)
    d = det(0)
    msg = message_builder(card, "dev", site="s")(d)
    assert msg == {"schema": 1, "event_id": d.event_id, "device_id": "dev",
                   "model": {"name": card.name, "version": card.version, "sha256": card.sha256},
                   "label": "loud", "confidence": {"max": 0.9, "mean": 0.8},
                   "start": "2024-01-01T00:00:00.500Z", "end": "2024-01-01T00:00:00.800Z",
                   "duration_s": 0.3, "site": "s"}


def test_schema_2_names_a_clip_and_schema_1_cannot(energy_model, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMAS / "detection.schema.json").read_text())
    card = read_card(energy_model)
    recorder = ClipRecorder(tmp_path, SR, pre_s=0.25, post_s=0.5,
                            topic_for=lambda e: f"meerkit/dev/clips/{e}")
    msg = {**message_builder(card, "dev", clip=recorder.reference)(det(0)),
           "published_at": iso_utc(T0)}
    jsonschema.validate(msg, schema)
    assert msg["schema"] == 2 and msg["clip"] == {
        "file": f"20240101T000000500000Z_loud_{det(0).event_id}.wav", "format": "wav",
        "offset_s": 0.25, "duration_s": 1.05, "topic": f"meerkit/dev/clips/{det(0).event_id}"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**msg, "schema": 1}, schema)
    jsonschema.validate({k: v for k, v in msg.items() if k != "clip"}, schema)  # v2, no clip


def test_the_clip_written_is_the_one_referenced(tmp_path):
    got: list[tuple[Detection, str, bytes]] = []
    recorder = ClipRecorder(tmp_path, SR, pre_s=0.25, post_s=0.5,
                            on_written=lambda d, f, b: got.append((d, f, b)))
    d = det(0)
    recorder.handle([d])
    rng = np.random.default_rng(1)
    for i in range(3):
        recorder.feed(rng.uniform(-0.5, 0.5, SR).astype(np.float32), i * SR)
    ref = recorder.reference(d)
    ((who, name, data),) = got
    assert who == d and name == ref["file"] and data == (tmp_path / name).read_bytes()
    assert len(read_wav(tmp_path / name)[0]) == round(ref["duration_s"] * SR)


# ------------------------------------------------------------------------- hostile clips
def clip_for(msg: dict, clip: bytes, **changes) -> dict:
    body = clip_message(msg["event_id"], msg["device_id"], msg["clip"]["file"], clip)
    return {**body, "published_at": iso_utc(T0 + 9), **changes}


def clip_topic_of(msg: dict) -> str:
    return f"meerkit/{msg['device_id']}/clips/{msg['event_id']}"


def test_hostile_clips_are_dead_letters_and_the_good_one_is_stored(broker, tmp_path):
    db = tmp_path / "s.sqlite"
    cfg = config(broker, db)
    cfg.max_clip_bytes = 8192
    server = Running(cfg)
    ref = {"file": "a.wav", "format": "wav", "offset_s": 1.0, "duration_s": 2.5}
    v2 = [detection(i, schema=2, clip={**ref, "file": f"c{i}.wav"}) for i in range(3)]
    v2[2]["clip"]["sha256"] = "0" * 64  # a producer that knew the hash, and another clip
    v1 = detection(7)
    data = b"RIFF" + bytes(range(256)) * 4
    good = clip_for(v2[0], data)
    stranger = detection(9)  # never published
    stranger["clip"] = ref
    items = [(topic(), m) for m in [*v2, v1]] + [
        (clip_topic_of(v2[0]), good),
        (clip_topic_of(v2[0]), dict(good, published_at=iso_utc(T0 + 50))),  # redelivery
        (clip_topic_of(v2[0]), clip_for(v2[0], data + b"x")),  # another clip for it
        (clip_topic_of(v2[1]), clip_for(v2[1], data, sha256="ab" * 32)),  # wrong sha
        (clip_topic_of(v2[1]), clip_for(v2[1], data * 8)),  # over 8 kB
        (clip_topic_of(stranger), clip_for(stranger, data)),  # unknown event
        (clip_topic_of(v1), clip_for({**v1, "clip": ref}, data)),  # v1 announced no clip
        (clip_topic_of(v2[1]), clip_for(v2[1], data, file="other.wav")),
        (clip_topic_of(v2[2]), clip_for(v2[2], data)),  # not the sha256 announced
        (clip_topic_of(v2[1]), clip_for(v2[1], data, data="not base64!")),
        (f"meerkit/elsewhere/clips/{v2[1]['event_id']}", clip_for(v2[1], data)),
        (clip_topic_of(v2[1]), b"\xff not json"),
    ]
    publish(broker, items)
    assert server.wait_for(lambda: server.sub.counts.received == len(items)), \
        server.sub.counts.line()
    assert server.stop() == 0  # alive to the end
    c = server.sub.counts
    assert (c.stored, c.clips, c.duplicates) == (4, 1, 1)
    assert dict(c.reasons) == {"conflict": 1, "sha256_mismatch": 2, "too_large": 1,
                               "unknown_event": 1, "clip_mismatch": 2, "bad_base64": 1,
                               "topic_mismatch": 1, "not_utf8": 1}
    kept = clips(db)
    assert set(kept) == {v2[0]["event_id"]} and kept[v2[0]["event_id"]]["data"] == data
    letters = dead_letters(db)
    assert len(letters) == c.rejected
    assert all(len(d["head"]) <= 256 for d in letters if d["reason"] != "conflict")
    assert {d["event_id"] for d in letters if d["reason"] == "unknown_event"} == {
        stranger["event_id"]}


# ------------------------------------------------------------------------- device side
class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def publisher(broker, outbox: Outbox, **kw) -> MqttPublisher:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, reconnect_min_s=0.2,
                     reconnect_max_s=1.0)
    return MqttPublisher(cfg, "dev", outbox, **kw)


def detection_message(card, i: int) -> dict:
    return message_builder(card, "dev")(det(i))


def test_detections_go_first_and_paced_clips_wait(broker, energy_model, tmp_path):
    card = read_card(energy_model)
    sub = Collector(broker)
    clock = Clock()
    pub = publisher(broker, Outbox(tmp_path / "o.sqlite"), clip_bytes_per_s=1000.0, clock=clock)
    clip = bytes(3000)
    assert pub.publish_clip(det(0).event_id, "a.wav", clip) == STORED  # before any detection
    assert pub.publish_clip(det(1).event_id, "b.wav", clip) == STORED
    for i in range(5):
        pub.publish(detection_message(card, i))
    pub.start()  # connects with everything stored: detections are handed over first
    assert sub.wait_for(lambda s: len(s.detections()) == 5 and s.payloads(det(0).event_id))
    order = [t.rsplit("/", 2)[-2] for t, _, _ in sub.messages if "/status" not in t]
    assert order == ["dev"] * 5 + ["clips"], order
    time.sleep(1.0)  # two sender wake-ups: the second clip waits for its bandwidth
    assert pub.stats()["clips_waiting"] == 1 and not sub.payloads(det(1).event_id)
    pub.publish(detection_message(card, 7))  # a detection still goes at once
    assert sub.wait_for(lambda s: len(s.detections()) == 6)
    clock.t = 1e6  # the pacing interval has passed
    assert sub.wait_for(lambda s: s.payloads(det(1).event_id))
    (payload,) = sub.payloads(det(0).event_id)
    body = json.loads(payload)
    assert base64.b64decode(body["data"]) == clip and body["sha256"] == hashlib.sha256(
        clip).hexdigest() and body["file"] == "a.wav"
    assert pub.close(10.0) == 0
    assert pub.stats()["clips_sent"] == 2 and pub.stats()["clips_dropped"] == 0
    sub.close()


def test_detections_flow_when_the_clip_budget_is_exhausted(broker, energy_model, tmp_path):
    card = read_card(energy_model)
    sub = Collector(broker)
    budget = 40_000
    pub = publisher(broker, Outbox(tmp_path / "o.sqlite", budget), clip_max_bytes=12_000)
    assert pub.publish_clip(det(0).event_id, "big.wav", bytes(12_001)) == FULL  # size cap
    stored = [pub.publish_clip(det(i).event_id, f"{i}.wav", bytes(9000)) for i in range(1, 5)]
    assert stored.count(STORED) == 1 and stored.count(FULL) == 3  # at most half the budget
    assert pub.outbox.bytes_used <= CLIP_SHARE * budget
    for i in range(70):  # ~470 B each with overhead: more than the half left, so the clip goes
        pub.publish(detection_message(card, i))
    assert pub.outbox.lost == 0 and pub.outbox.depth == 70 and pub.outbox.clip_depth == 0
    pub.start()
    assert sub.wait_for(lambda s: len(s.detections()) == 70)
    assert pub.close(10.0) == 0
    stats = pub.stats()
    assert stats["events_lost"] == 0 and stats["published"] == 70
    assert (stats["clips_sent"], stats["clips_dropped"], stats["clips_waiting"]) == (0, 5, 0)
    assert not [t for t, _, _ in sub.messages if "/clips/" in t]
    sub.close()


def test_a_detection_evicts_clips_before_it_is_refused(tmp_path):
    box = Outbox(tmp_path / "o.sqlite", 10_000)
    assert box.add_clip("c1", "t/clips/c1", "x" * 4000) == STORED
    assert box.add_clip("c2", "t/clips/c2", "x" * 1000) == FULL  # over half the budget
    for i in range(9):
        assert box.add(f"d{i}", "t", "y" * (1000 - ROW_OVERHEAD)) == STORED
    assert box.clip_depth == 0 and box.clips_dropped == 2 and box.lost == 0
    assert box.add("d9", "t", "y" * 2000) == FULL  # detections alone: refused as always
    assert box.add_clip("c3", "t/clips/c3", "z") == STORED
    (row,) = box.pending_clips()
    box.ack_clip(row[0])
    assert box.add_clip("c3", "t/clips/c3", "z") == "duplicate"  # sent once, never again
    assert clip_topic(MqttConfig(), "dev", "abc") == "meerkit/dev/clips/abc"
