"""The subscriber never dies of its input: 1,200 generated payloads (hypothesis, derandomized),
valid and hostile, go through the real mosquitto to a running subscriber in one burst. Every
valid detection must be stored exactly once (the first copy), identical redeliveries counted
as duplicates, a reused event_id with other content rejected as a conflict, and every hostile
payload rejected for its reason and kept as a dead letter; the subscriber keeps running.

Hostile payloads go to their own topic `meerkit/h<n>/detections` (the topic is checked last,
so it does not change their reason), which tells the dead letters apart."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, Phase, given, settings  # in [dev]: a missing one must fail
from hypothesis import strategies as st

from server.stores import open_store
from server.subscriber import Subscriber, SubscriberConfig
from tests.test_subscribe import mqtt

EXAMPLES = 1200
BURST = 400
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MIN_MS = int((datetime(1, 1, 1, tzinfo=timezone.utc) - EPOCH).total_seconds() * 1000)
MAX_MS = int((datetime(9999, 12, 30, tzinfo=timezone.utc) - EPOCH).total_seconds() * 1000)
REQUIRED = ("schema", "event_id", "device_id", "model", "label", "confidence", "start", "end",
            "duration_s", "published_at")


def iso(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def ms_of(text: str) -> int:
    when = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (when - EPOCH) // timedelta(milliseconds=1)


# ------------------------------------------------------------------------- valid messages
def text(min_size: int = 0, max_size: int = 30):
    # any Unicode but NUL and lone surrogates (the hostile cases send those on purpose)
    return st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                   min_size=min_size, max_size=max_size)


# Topic levels: what a broker accepts in a topic (no control characters, no wildcards).
devices = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_."),
                  min_size=1, max_size=16)
unit = st.floats(0, 1) | st.sampled_from([0, 1])


@st.composite
def valid_message(draw) -> dict:
    start = draw(st.integers(MIN_MS, MAX_MS - 86_400_000))
    span = draw(st.integers(0, 86_400_000) | st.integers(0, 5000))
    jitter = draw(st.floats(-0.0009, 0.0009))
    msg = {"schema": 1, "event_id": f"{draw(st.integers(0, 2**64 - 1)):016x}",
           "device_id": draw(devices),
           "model": {"name": draw(text()), "version": draw(text()), "sha256": draw(text())},
           "label": draw(text(1, 128)),
           "confidence": {"max": draw(unit), "mean": draw(unit)},
           "start": iso(start), "end": iso(start + span),
           "duration_s": min(86400.0, max(1e-6, span / 1000 + jitter)),
           "published_at": iso(draw(st.integers(MIN_MS, MAX_MS)))}
    if draw(st.booleans()):
        msg["location"] = {"lat": draw(st.floats(-90, 90) | st.integers(-90, 90)),
                           "lon": draw(st.floats(-180, 180) | st.integers(-180, 180))}
    if draw(st.booleans()):
        msg["site"] = draw(text(0, 200))
    version = draw(st.sampled_from([1, 1, 2, 2, 2]))  # 2: a device that records clips
    if version == 2:
        msg["schema"] = 2
        if draw(st.integers(0, 3)):  # v2 may leave the clip out
            msg["clip"] = draw(clip_reference())
    return msg


@st.composite
def clip_reference(draw) -> dict:
    """The `clip` object of a v2 detection."""
    ref = {"file": draw(st.text(st.characters(blacklist_characters="\x00/\\",
                                              blacklist_categories=("Cs",)),
                                min_size=1, max_size=60)),
           "format": draw(st.sampled_from(["wav", "flac"])),
           "offset_s": draw(st.floats(0, 60) | st.integers(0, 60)),
           "duration_s": draw(st.floats(0.001, 120) | st.integers(1, 120))}
    if draw(st.booleans()):
        ref["sha256"] = draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    if draw(st.booleans()):
        ref["topic"] = f"meerkit/x/clips/{draw(st.integers(0, 2**64 - 1)):016x}"
    if draw(st.booleans()):
        ref["url"] = draw(text(1, 100))
    return ref


def json_style(draw) -> dict:
    return {"ensure_ascii": draw(st.booleans()), "sort_keys": draw(st.booleans()),
            "indent": draw(st.sampled_from([None, 1]))}


def encode(msg: dict, draw) -> bytes:
    return json.dumps(msg, **json_style(draw)).encode()


def unique_event_id(i: int) -> str:
    """Hypothesis favours small numbers, so drawn ids collide; valid messages get their own
    (reused ids are what the dup and conflict cases are for)."""
    return f"{(i * 0x9E3779B97F4A7C15) % 2**64:016x}"


# ------------------------------------------------------------------------- cases
@dataclass
class Case:
    kind: str  # "valid", "dup", "conflict" or the hostile kind
    payload: bytes = b""
    message: dict | None = None  # valid and conflict
    reason: tuple[str, ...] = ()  # the possible rejection reasons; () = any
    ref: int = 0  # dup/conflict: which earlier valid message
    style: dict | None = None  # valid: json.dumps options (the event_id is set later)


def with_token(msg: dict, path: tuple[str, ...], token: str) -> bytes:
    """The message as JSON with the value at `path` replaced by a raw JSON token."""
    marker = "\u2603marker\u2603"
    target = msg
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = marker
    return json.dumps(msg).replace(json.dumps(marker), token).encode()


NUMBERS = [("duration_s",), ("confidence", "max"), ("confidence", "mean")]
BAD_DAYS = ["2025-02-30", "2023-02-29", "2025-04-31", "2025-13-01", "2025-00-10", "2025-01-00",
            "0000-06-01"]
BAD_CLOCKS = ["24:00:00.000", "23:60:00.000", "23:59:60.000"]


@st.composite
def case(draw) -> Case:
    kind = draw(st.sampled_from(
        ["valid"] * 8 + ["dup"] * 2 + ["conflict"] * 2 + [
            "random_bytes", "utf16", "bom", "non_finite", "huge_number", "bad_date",
            "end_before_start", "duration_mismatch", "missing", "wrong_type", "extra",
            "too_long", "too_large", "nul", "surrogate", "duplicate_key", "not_object",
            "deep", "topic", "schema_version", "bad_event_id", "v1_with_clip", "bad_clip"]))
    if kind in ("dup", "conflict"):
        return Case(kind, ref=draw(st.integers(0, 10**6)))
    msg = draw(valid_message())
    if kind == "valid":
        return Case(kind, message=msg, style=json_style(draw))
    if kind == "random_bytes":
        return Case(kind, draw(st.binary(max_size=300)))
    if kind == "utf16":  # json.loads(bytes) would accept these
        return Case(kind, json.dumps(msg).encode(draw(st.sampled_from(
            ["utf-16", "utf-16-le", "utf-32", "utf-32-be"]))),
                    reason=("not_utf8", "invalid_json"))  # ASCII in UTF-16 is UTF-8 with NULs
    if kind == "bom":
        return Case(kind, b"\xef\xbb\xbf" + json.dumps(msg).encode(), reason=("invalid_json",))
    if kind == "non_finite":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-2e308"]))
        return Case(kind, with_token(msg, draw(st.sampled_from(NUMBERS)), token),
                    reason=("non_finite",))
    if kind == "huge_number":  # finite but far out of range
        path = draw(st.sampled_from(NUMBERS))
        token = draw(st.sampled_from(["1e300", "1" + "0" * 400, "-1e300", "1e20"]))
        return Case(kind, with_token(msg, path, token))
    if kind == "bad_date":
        field = draw(st.sampled_from(["start", "end", "published_at"]))
        msg[field] = f"{draw(st.sampled_from(BAD_DAYS))}T{msg[field][11:]}"
        if draw(st.booleans()):
            msg[field] = f"{msg[field][:11]}{draw(st.sampled_from(BAD_CLOCKS))}Z"
        return Case(kind, encode(msg, draw), reason=("bad_time",))
    if kind == "end_before_start":
        back, start, end = draw(st.integers(1, 10**6)), ms_of(msg["start"]), ms_of(msg["end"])
        if start - back >= MIN_MS:
            msg["end"] = iso(start - back)
        else:
            msg["start"] = iso(end + back)
        return Case(kind, encode(msg, draw), reason=("end_before_start",))
    if kind == "duration_mismatch":
        span = (ms_of(msg["end"]) - ms_of(msg["start"])) / 1000
        msg["duration_s"] = span + draw(st.sampled_from([-1, 1])) * draw(st.floats(0.0015, 100))
        if not 0 < msg["duration_s"] <= 86400:  # out of range instead: schema or limit
            return Case(kind, encode(msg, draw), reason=("schema", "out_of_range"))
        return Case(kind, encode(msg, draw), reason=("duration_mismatch",))
    if kind == "missing":
        for key in draw(st.lists(st.sampled_from(REQUIRED), min_size=1, unique=True)):
            del msg[key]
        return Case(kind, encode(msg, draw), reason=("schema",))
    if kind == "wrong_type":
        key = draw(st.sampled_from(REQUIRED))
        msg[key] = draw(st.sampled_from([None, True, [], {}, "1", 12345678901234567890]))
        return Case(kind, encode(msg, draw), reason=("schema",))
    if kind == "extra":
        msg[draw(st.sampled_from(["extra", "labels", "Label"]))] = 1
        return Case(kind, encode(msg, draw), reason=("schema",))
    if kind == "too_long":
        field = draw(st.sampled_from(["label", "site", "device_id"]))
        msg[field] = "x" * draw(st.integers(1025, 20000))
        return Case(kind, encode(msg, draw), reason=("too_long",))
    if kind == "too_large":
        msg["site"] = "y" * 70_000
        return Case(kind, encode(msg, draw), reason=("too_large",))
    if kind == "nul":
        msg["label"] = msg["label"][:100] + "\x00"
        return Case(kind, encode(msg, draw), reason=("bad_string",))
    if kind == "surrogate":
        return Case(kind, with_token(msg, ("label",), '"a\\ud800b"'), reason=("bad_string",))
    if kind == "duplicate_key":
        body = json.dumps(msg)
        return Case(kind, ('{"label": "first", ' + body[1:]).encode(), reason=("duplicate_key",))
    if kind == "not_object":
        value = draw(st.recursive(st.none() | st.booleans() | st.integers() | text(0, 10),
                                  lambda inner: st.lists(inner, max_size=3), max_leaves=8))
        return Case(kind, json.dumps(value).encode(), reason=("schema",))
    if kind == "deep":
        depth = draw(st.sampled_from([50, 3000, 30000]))
        return Case(kind, ("[" * depth + "]" * depth).encode())
    if kind == "topic":  # valid, but published on another device's topic
        return Case(kind, encode(msg, draw), reason=("topic_mismatch",))
    if kind == "schema_version":
        msg["schema"] = draw(st.sampled_from([3, 0, "1", True, 1.5, "2"]))
        return Case(kind, encode(msg, draw), reason=("schema",))
    if kind == "v1_with_clip":  # only schema 2 may name a clip
        msg.update(schema=1, clip=draw(clip_reference()))
        return Case(kind, encode(msg, draw), reason=("schema",))
    if kind == "bad_clip":
        ref = draw(clip_reference())
        bad = draw(st.sampled_from(["missing", "extra", "format", "path", "sha", "offset"]))
        if bad == "missing":
            del ref[draw(st.sampled_from(["file", "format", "offset_s", "duration_s"]))]
        elif bad == "extra":
            ref["bytes"] = "AAAA"
        elif bad == "format":
            ref["format"] = draw(st.sampled_from(["mp3", "WAV", "", 1]))
        elif bad == "path":
            ref["file"] = draw(st.sampled_from(["../x.wav", "a/b.wav", "a\\b.wav", ""]))
        elif bad == "sha":
            ref["sha256"] = draw(st.sampled_from(["AB" * 32, "ab" * 31, "g" * 64]))
        else:
            ref["offset_s"] = draw(st.sampled_from([-1, "1", None]))
        msg.update(schema=2, clip=ref)
        return Case(kind, encode(msg, draw), reason=("schema",))
    msg["event_id"] = draw(st.sampled_from(["ABCDEF0123456789", "0123", "g" * 16, ""]))
    return Case(kind, encode(msg, draw), reason=("schema",))


def generate(n: int) -> list[Case]:
    out: list[Case] = []

    @settings(max_examples=n, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case())
    def collect(c: Case) -> None:
        out.append(c)

    collect()
    return out


def conflicting(msg: dict) -> dict:
    other = json.loads(json.dumps(msg))
    other["label"] = msg["label"] + "!" if len(msg["label"]) < 128 else "other"
    return other


# ------------------------------------------------------------------------- the test
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_subscriber_survives_generated_payloads_and_stores_each_valid_one_once(
        kind, broker, tmp_path):
    if kind == "postgresql" and not os.environ.get("MEERKIT_TEST_PG"):
        pytest.skip("set MEERKIT_TEST_PG=postgresql://... to test the PostgreSQL store")
    cases = generate(EXAMPLES)
    assert len(cases) >= 1000

    # Resolve duplicates and conflicts against earlier valid messages; build the oracle.
    items: list[tuple[str, bytes]] = []
    valid: list[dict] = []
    first: dict[str, dict] = {}  # event_id -> the stored content
    expected_reason: dict[str, tuple[str, ...]] = {}  # hostile topic -> possible reasons
    duplicates = conflicts = 0
    for i, c in enumerate(cases):
        if c.kind in ("dup", "conflict") and valid:
            original = valid[c.ref % len(valid)]
            if c.kind == "dup":  # a redelivery: re-stamped, re-encoded, same content
                again = dict(reversed(list(original.items())), published_at=iso(i))
                items.append((f"meerkit/{original['device_id']}/detections",
                              json.dumps(again).encode()))
                duplicates += 1
            else:
                items.append((f"meerkit/{original['device_id']}/detections",
                              json.dumps(conflicting(original)).encode()))
                conflicts += 1
        elif c.kind in ("valid", "dup", "conflict"):
            msg = dict(c.message or generate_fallback(i), event_id=unique_event_id(i))
            items.append((f"meerkit/{msg['device_id']}/detections",
                          json.dumps(msg, **(c.style or {})).encode()))
            valid.append(msg)
            first[msg["event_id"]] = msg
        else:
            hostile_topic = f"meerkit/h{i}/detections"
            items.append((hostile_topic, c.payload))
            expected_reason[hostile_topic] = c.reason
    table = "fuzz_" + uuid.uuid4().hex[:8]
    db = (os.environ["MEERKIT_TEST_PG"] if kind == "postgresql"
          else f"sqlite:///{tmp_path / 'fuzz.sqlite'}")
    store = open_store(db, table)
    sub = Subscriber(SubscriberConfig(mqtt=mqtt(broker), db=db, table=table), store)
    thread = threading.Thread(target=sub.run, daemon=True)
    thread.start()
    try:
        assert sub.subscribed.wait(10)
        # In bursts the broker can queue (mosquitto keeps 1000 messages per client by
        # default and drops QoS 1 beyond that): the subscriber commits each before its PUBACK.
        for n in range(0, len(items), BURST):
            publish_all(broker, items[n:n + BURST])
            deadline = time.monotonic() + 30
            while handled(sub) < min(n + BURST, len(items)) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert thread.is_alive() and sub.fatal is None  # never died of its input
        c = sub.counts
        assert c.received == len(items), c.line()
        assert (c.stored, c.duplicates) == (len(first), duplicates), c.line()
        assert c.rejected == len(expected_reason) + conflicts, c.line()
        assert c.reasons["conflict"] == conflicts
        stored, letters = read_back(store, table)
    finally:
        sub.stop.set()
        thread.join(10)
        if kind == "postgresql":
            store.db.execute(f"DROP TABLE {table}, {table}_dead_letters, {table}_clips")
        store.close()
    # Exactly the valid messages, each once, as first sent (never a conflicting copy).
    assert stored == first
    versions = [m["schema"] for m in first.values()]
    assert versions.count(1) and sum("clip" in m for m in first.values()) > 20  # v1 and v2
    by_topic = {topic: reason for topic, reason in letters if topic in expected_reason}
    assert len(by_topic) == len(expected_reason) == sum(t in expected_reason for t, _ in letters)
    wrong = {t: (by_topic[t], want) for t, want in expected_reason.items()
             if want and by_topic[t] not in want}
    assert not wrong, wrong
    assert sum(reason == "conflict" for _, reason in letters) == conflicts


def handled(sub: Subscriber) -> int:
    """Messages finished with (`received` counts them on arrival, before the store)."""
    return sub.counts.stored + sub.counts.duplicates + sub.counts.rejected


def generate_fallback(i: int) -> dict:
    """A valid message for a dup/conflict drawn before any valid one existed."""
    return {"schema": 1, "event_id": "", "device_id": "fallback",
            "model": {"name": "m", "version": "1", "sha256": "s"}, "label": "l",
            "confidence": {"max": 1, "mean": 0.5}, "start": iso(0), "end": iso(250),
            "duration_s": 0.25, "published_at": iso(0)}


def publish_all(broker, items: list[tuple[str, bytes]]) -> None:
    """Everything in one connection, up to 200 messages in flight; returns when all are
    acknowledged by the broker."""
    from paho.mqtt import client as mqtt_client

    client = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2,
                                client_id=f"fuzz-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


def read_back(store, table: str) -> tuple[dict[str, dict], list[tuple[str, str]]]:
    rows = store.db.execute(f"SELECT event_id, payload FROM {table}").fetchall()
    stored = {event_id: payload if isinstance(payload, dict) else json.loads(payload)
              for event_id, payload in rows}
    letters = store.db.execute(f"SELECT topic, reason FROM {table}_dead_letters").fetchall()
    return stored, [(t, r) for t, r in letters]
