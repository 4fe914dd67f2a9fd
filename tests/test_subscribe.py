"""`meerkit subscribe` against a real mosquitto (conftest fixtures): valid detections are stored
once per event_id, malformed and schema-violating payloads are rejected and counted, a shared
subscription splits the stream between group members, and the CLI stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.times import iso_utc
from edge_runtime.stream import event_id
from server.subscriber import (
    PostgresStore,
    Row,
    SQLiteStore,
    Subscriber,
    SubscriberConfig,
    open_store,
    subscribe,
)
from tests.conftest import REPO

T0 = 1748750400.0  # 2025-06-01T04:00:00Z


def detection(i: int, device: str = "rec-1", **changes) -> dict:
    """A valid message of schemas/detection.schema.json."""
    sha = "ab" * 32
    label = ("loud", "very_loud")[i % 2]
    msg = {"schema": 1, "event_id": event_id(device, sha, label, 16000 * i),
           "device_id": device, "model": {"name": "energy-test", "version": "1", "sha256": sha},
           "label": label, "confidence": {"max": 0.9, "mean": 0.75},
           "start": iso_utc(T0 + i), "end": iso_utc(T0 + i + 0.25), "duration_s": 0.25,
           "location": {"lat": -33.9, "lon": 18.4}, "site": "kraal",
           "published_at": iso_utc(T0 + i + 1)}
    msg.update(changes)
    return msg


def publish(broker, items: list[tuple[str, bytes | dict]]) -> None:
    """Publish (topic, payload) with QoS 1 and wait for every PUBACK."""
    from paho.mqtt import client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for topic, payload in items:
            data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
            client.publish(topic, data, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def topic(device: str = "rec-1") -> str:
    return f"meerkit/{device}/detections"


class Running:
    """A Subscriber.run() in a thread (signals are only for the CLI's main thread)."""

    def __init__(self, cfg: SubscriberConfig):
        self.store = open_store(cfg.db)
        self.sub = Subscriber(cfg, self.store)
        self.code: int | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.sub.subscribed.wait(10) or self.error, "subscriber did not subscribe"

    def _main(self) -> None:
        try:
            self.code = self.sub.run()
        except Exception as err:  # surfaced to the test
            self.error = err
            self.sub.subscribed.set()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not predicate():
            time.sleep(0.02)
        return predicate()

    def stop(self) -> int | None:
        self.sub.stop.set()
        self.thread.join(10)
        self.store.close()
        if self.error:
            raise self.error
        return self.code


def rows(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return {r["event_id"]: dict(r) for r in con.execute("SELECT * FROM detections")}


def config(broker, db: Path, **kw) -> SubscriberConfig:
    return SubscriberConfig(host="127.0.0.1", port=broker.port, db=f"sqlite:///{db}",
                            stats_interval_s=kw.pop("stats_interval_s", 60.0), **kw)


def test_valid_detections_are_stored_once_and_bad_payloads_rejected(broker, tmp_path, caplog):
    db = tmp_path / "detections.sqlite"
    run = Running(config(broker, db))
    good = [detection(i) for i in range(4)] + [detection(9, device="rec-2", site="")]
    del good[-1]["location"]
    huge = json.dumps(detection(5, site="x" * 70_000)).encode()
    bad = [
        (topic(), b"{not json"),
        (topic(), b"\xff\xfe binary"),
        (topic(), {k: v for k, v in detection(5).items() if k != "label"}),  # missing field
        (topic(), detection(5, extra="field")),  # additionalProperties: false
        (topic(), detection(5, event_id="not-hex")),
        (topic(), detection(5, confidence={"max": 1.5, "mean": 0.5})),
        (topic("rec-9"), detection(5)),  # device_id differs from the topic
        (topic(), huge),
    ]
    resend = dict(good[0], published_at=iso_utc(T0 + 99))  # same event_id: a QoS 1 resend
    publish(broker, [(topic(m["device_id"]), m) for m in good[:3]] + bad
            + [(topic(), resend)] + [(topic(m["device_id"]), m) for m in good[3:]])
    total = len(good) + len(bad) + 1
    assert run.wait_for(lambda: run.sub.counts.received == total), run.sub.counts.line()
    assert run.stop() == 0

    c = run.sub.counts
    assert (c.stored, c.duplicates, c.rejected) == (len(good), 1, len(bad))
    assert dict(c.reasons) == {"invalid_json": 2, "schema": 4, "topic_mismatch": 1,
                               "too_large": 1}
    stored = rows(db)
    assert set(stored) == {m["event_id"] for m in good}
    first = stored[good[0]["event_id"]]
    assert json.loads(first["payload"]) == good[0]  # the first copy, not the resend
    assert (first["label"], first["start_utc"], first["end_utc"], first["confidence_max"],
            first["lat"], first["site"], first["model_sha256"]) == (
        "loud", "2025-06-01T04:00:00.000Z", "2025-06-01T04:00:00.250Z", 0.9, -33.9, "kraal",
        "ab" * 32)
    assert stored[good[-1]["event_id"]]["lat"] is None
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rejected = [m for m in caplog.messages if m.startswith("rejected message")]
    assert len(rejected) == len(bad) and max(map(len, rejected)) < 600  # never the payload
    assert any("label" in m and "required" in m for m in rejected)


def test_shared_subscription_splits_messages_between_group_members(broker, tmp_path):
    a = Running(config(broker, tmp_path / "a.sqlite", group="ingest"))
    b = Running(config(broker, tmp_path / "b.sqlite", group="ingest"))
    messages = [detection(i, device=f"rec-{i % 3}") for i in range(24)]
    publish(broker, [(topic(m["device_id"]), m) for m in messages])
    both = lambda: a.sub.counts.stored + b.sub.counts.stored  # noqa: E731
    assert a.wait_for(lambda: both() == len(messages)), (a.sub.counts, b.sub.counts)
    time.sleep(0.3)  # a message delivered twice would arrive by now
    a.stop(), b.stop()
    got_a, got_b = set(rows(tmp_path / "a.sqlite")), set(rows(tmp_path / "b.sqlite"))
    assert got_a and got_b and not got_a & got_b
    assert got_a | got_b == {m["event_id"] for m in messages}
    assert a.sub.counts.duplicates == b.sub.counts.duplicates == 0


def test_tls_and_credentials(tls_broker, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("reader-pw\n")
    cfg = SubscriberConfig(host="localhost", port=tls_broker.port,
                           ca_file=str(tls_broker.certs["ca"]), username="reader",
                           password_file=str(pw), db=str(tmp_path / "d.sqlite"), timeout_s=0.3)
    assert subscribe(cfg)[0] == 0  # connected, subscribed, timed out

    pw.write_text("wrong\n")
    with pytest.raises(UserError, match="refused the connection"):
        subscribe(cfg)
    cfg.ca_file, cfg.tls = "", True  # the system CA store does not know the test CA
    with pytest.raises(UserError, match="cannot connect to the MQTT broker"):
        subscribe(cfg)


def test_cli_prints_stored_detections_and_exits(broker, tmp_path):
    db = tmp_path / "cli.sqlite"
    cmd = [sys.executable, "-m", "meerkit.cli", "subscribe", "--host", "127.0.0.1",
           "--port", str(broker.port), "--db", f"sqlite:///{db}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(*args: str) -> tuple[subprocess.Popen, list[str], threading.Thread]:
        proc = subprocess.Popen([*cmd, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, env=env)
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in proc.stderr:
                lines.append(line)
                if "subscribed to meerkit/+/detections" in line:
                    ready.set()
            ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert ready.wait(20) and proc.poll() is None, "".join(lines)
        return proc, lines, reader

    def finish(proc, lines, reader) -> tuple[str, str]:
        proc.wait(20)
        reader.join(5)
        return proc.stdout.read(), "".join(lines)

    running = start("--print", "--max-messages", "3", "--timeout", "20")
    msgs = [detection(i) for i in range(3)]
    publish(broker, [(topic(), msgs[0]), (topic(), msgs[0]), (topic(), msgs[1]),
                     (topic(), b"[]"), (topic(), msgs[2])])
    out, err = finish(*running)
    assert running[0].returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    assert all(m["event_id"] in line and m["label"] in line for m, line in zip(msgs, lines, strict=True))
    assert "received 5, stored 3, duplicates 1, rejected 1 (schema 1)" in err
    assert len(rows(db)) == 3

    running = start()  # SIGTERM: a clean exit with the counts
    running[0].send_signal(signal.SIGTERM)
    out, err = finish(*running)
    assert running[0].returncode == 0, err
    assert "SIGTERM: stopping" in err and "3 rows in the database" in err

    # --timeout before --max-messages detections: exit status 1
    short = subprocess.run([*cmd, "--max-messages", "1", "--timeout", "0.5"], capture_output=True,
                           text=True, cwd=REPO, env=env, timeout=20)
    assert short.returncode == 1 and "stored 0 of the 1" in short.stderr


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_store_interface(kind, tmp_path):
    if kind == "postgresql" and not os.environ.get("MEERKIT_TEST_PG"):
        pytest.skip("set MEERKIT_TEST_PG=postgresql://... to test the PostgreSQL store")
    table = "meerkit_test_" + uuid.uuid4().hex[:8]
    store = (SQLiteStore(tmp_path / "s.sqlite", table) if kind == "sqlite"
             else PostgresStore(os.environ["MEERKIT_TEST_PG"], table))
    try:
        msgs = [detection(i) for i in range(3)]
        made = [Row.from_message(m, json.dumps(m), iso_utc(T0 + 5)) for m in msgs]
        assert [store.add(r) for r in made] == [True, True, True]
        assert store.add(made[1]) is False  # ON CONFLICT DO NOTHING
        assert store.count() == 3
        if kind == "postgresql":
            got = store.db.execute(f"SELECT label, start_utc, payload FROM {table} "
                                   "WHERE event_id = %s", (msgs[1]["event_id"],)).fetchone()
            assert got[0] == "very_loud" and got[1].timestamp() == T0 + 1 and got[2] == msgs[1]
    finally:
        if kind == "postgresql":
            store.db.execute(f"DROP TABLE {table}")
        store.close()


def test_configuration_errors_are_user_errors(tmp_path):
    for changes, message in [
        ({"db": "mysql://x"}, "expected sqlite:///FILE or postgresql://"),
        ({"db": f"sqlite:///{tmp_path}/no/such/dir/x.db"}, "does not exist"),
        ({"group": "a/b"}, "--group 'a/b'"),
        ({"print_format": "xml"}, "--print 'xml'"),
        ({"timeout_s": -1}, "--timeout -1"),
        ({"table": "x; DROP TABLE y"}, "--table"),
    ]:
        cfg = SubscriberConfig(**{"db": str(tmp_path / "ok.sqlite"), **changes})
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            subscribe(cfg)
    with pytest.raises(UserError, match="cannot connect to the MQTT broker 127.0.0.1:1"):
        subscribe(SubscriberConfig(host="127.0.0.1", port=1, db=str(tmp_path / "ok.sqlite")))
