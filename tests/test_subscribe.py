"""`meerkit subscribe` against a real mosquitto (conftest fixtures): valid detections are stored
once per event_id, malformed and schema-violating payloads are rejected, counted and kept as
dead letters, a reused event_id with other content is a conflict, a shared subscription splits
the stream between group members, the broker's problems are named and retried, and the CLI
stops cleanly. tests/test_subscribe_fuzz.py throws generated payloads at it."""

from __future__ import annotations

import dataclasses
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
from edge_runtime.message import event_id
from edge_runtime.mqtt_client import MqttConfig
from server.stores import ClipRow, DeadLetter, Row, open_store
from server.stores.postgres import PostgresStore
from server.stores.sqlite import SQLiteStore
from server.subscriber import Subscriber, SubscriberConfig, subscribe
from tests.conftest import REPO, Mosquitto

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


def dead_letters(db: Path) -> list[dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM detections_dead_letters ORDER BY id")]


def mqtt(broker, **kw) -> MqttConfig:
    return MqttConfig(host="127.0.0.1", port=broker.port, reconnect_min_s=0.2,
                      reconnect_max_s=1.0, **kw)


def config(broker, db: Path, **kw) -> SubscriberConfig:
    return SubscriberConfig(mqtt=mqtt(broker), db=f"sqlite:///{db}",
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
        (topic(), json.dumps(detection(5)).encode("utf-16")),  # json.loads(bytes) takes it
        (topic(), {k: v for k, v in detection(5).items() if k != "label"}),  # missing field
        (topic(), detection(5, extra="field")),  # additionalProperties: false
        (topic(), detection(5, event_id="not-hex")),
        (topic(), detection(5, confidence={"max": 1.5, "mean": 0.5})),
        (topic("rec-9"), detection(5)),  # device_id differs from the topic
        (topic(), huge),
        (topic(), json.dumps(detection(5, confidence={"max": float("nan"), "mean": 0.5})
                             ).encode()),  # NaN passes every range check
        (topic(), detection(5, start="2025-02-30T04:00:05.000Z")),  # no such day
        (topic(), detection(5, end=iso_utc(T0 + 4))),  # end before start
        (topic(), detection(5, duration_s=0.5)),  # end - start is 0.25 s
        (topic(), detection(5, label="x\u0000y")),  # NUL: PostgreSQL could not store it
    ]
    resend = dict(good[0], published_at=iso_utc(T0 + 99))  # same event_id: a QoS 1 resend
    conflict = dict(good[1], confidence={"max": 0.5, "mean": 0.4})  # same event_id, other data
    publish(broker, [(topic(m["device_id"]), m) for m in good[:3]] + bad
            + [(topic(), resend), (topic(), conflict)]
            + [(topic(m["device_id"]), m) for m in good[3:]])
    total = len(good) + len(bad) + 2
    assert run.wait_for(lambda: run.sub.counts.received == total), run.sub.counts.line()
    assert run.stop() == 0

    c = run.sub.counts
    assert (c.stored, c.duplicates, c.rejected) == (len(good), 1, len(bad) + 1)
    assert dict(c.reasons) == {"invalid_json": 1, "not_utf8": 2, "schema": 4,
                               "topic_mismatch": 1, "too_large": 1, "non_finite": 1,
                               "bad_time": 1, "end_before_start": 1, "duration_mismatch": 1,
                               "bad_string": 1, "conflict": 1}
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
    assert json.loads(stored[good[1]["event_id"]]["payload"]) == good[1]  # never merged
    rejected = [m for m in caplog.messages if m.startswith("rejected message")]
    assert len(rejected) == c.rejected and max(map(len, rejected)) < 600  # never the payload
    assert any("label" in m and "required" in m for m in rejected)
    letters = dead_letters(db)
    assert [d["reason"] for d in letters].count("conflict") == 1 and len(letters) == c.rejected
    assert all(d["topic"].endswith("/detections") and d["received_at"] for d in letters)
    assert {d["size"] for d in letters if d["reason"] == "too_large"} == {len(huge)}
    assert max(len(d["head"]) for d in letters if d["reason"] != "conflict") == 256
    (kept,) = [d for d in letters if d["reason"] == "conflict"]
    assert json.loads(kept["head"]) == conflict and kept["event_id"] == good[1]["event_id"]
    assert "confidence" in kept["detail"]


def test_a_broker_down_at_start_is_retried_and_named_once(tmp_path, caplog):
    broker = Mosquitto(tmp_path / "mosquitto")  # not started yet
    db = tmp_path / "d.sqlite"
    sub = Subscriber(config(broker, db), open_store(str(db)))
    thread = threading.Thread(target=sub.run, daemon=True)
    thread.start()
    try:
        time.sleep(2.0)  # several attempts with the 0.2..1 s backoff
        assert thread.is_alive() and not sub.subscribed.is_set()
        assert sub.connection.failures >= 2
        named = [m for m in caplog.messages if "nothing listening" in m]
        assert len(named) == 1 and f"127.0.0.1:{broker.port}" in named[0]
        broker.start()
        assert sub.subscribed.wait(10)
        publish(broker, [(topic(), detection(1))])
        deadline = time.monotonic() + 10
        while sub.counts.stored < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sub.counts.stored == 1 and sub.connection.problem is None
    finally:
        sub.stop.set()
        thread.join(10)
        sub.store.close()
        broker.kill()


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


def test_tls_and_credentials_problems_are_named_once_and_retried(tls_broker, tmp_path, caplog):
    pw = tmp_path / "pw"
    pw.write_text("reader-pw\n")
    pw.chmod(0o600)
    good = MqttConfig(host="localhost", port=tls_broker.port, ca_file=str(tls_broker.certs["ca"]),
                      username="reader", password_file=str(pw), reconnect_min_s=0.1,
                      reconnect_max_s=0.2)

    def run(timeout_s: float = 1.5, **changes) -> tuple[int, list[str]]:
        caplog.clear()
        cfg = SubscriberConfig(mqtt=dataclasses.replace(good, **changes),
                               db=str(tmp_path / "d.sqlite"), timeout_s=timeout_s)
        code = subscribe(cfg)[0]
        return code, [m for m in caplog.messages if m.startswith("MQTT broker")]

    assert run(timeout_s=3.0) == (0, [])  # ca_file implies TLS; connected, subscribed, timed out
    pw.write_text("wrong\n")
    code, named = run()
    assert code == 1 and len(named) == 1  # retried for 1.5 s, said once
    assert "refused the connection: Not authorized" in named[0] and "--mqtt-username" in named[0]
    pw.write_text("reader-pw\n")
    code, named = run(ca_file="", tls=True)  # the system CA store does not know the test CA
    assert code == 1 and len(named) == 1
    assert "TLS certificate not trusted by the system CA store" in named[0]
    code, named = run(ca_file="", tls=False, host="127.0.0.1")  # plain MQTT to the TLS port
    assert code == 1 and len(named) == 1
    assert (f"closed the connection during CONNECT: is port {tls_broker.port} a TLS listener?"
            in named[0])
    assert any("never subscribed" in m for m in caplog.messages)


def test_cli_prints_stored_detections_and_exits(broker, tmp_path):
    db = tmp_path / "cli.sqlite"
    base = [sys.executable, "-m", "meerkit.cli", "subscribe", "--db", f"sqlite:///{db}"]
    cmd = [*base, "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port)]
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

    # --timeout before --max-messages detections: exit status 1. The old spellings still work,
    # with one warning each.
    short = subprocess.run([*base, "--host", "127.0.0.1", "--port", str(broker.port),
                            "--max-messages", "1", "--timeout", "2"], capture_output=True,
                           text=True, cwd=REPO, env=env, timeout=20)
    assert short.returncode == 1 and "stored 0 of the 1" in short.stderr
    assert short.stderr.count("--host is deprecated; use --mqtt-host") == 1
    assert short.stderr.count("--port is deprecated; use --mqtt-port") == 1


def test_cli_help_lists_the_edge_runtime_flags(capsys):
    from meerkit.cli import main

    with pytest.raises(SystemExit):
        main(["subscribe", "--help"])
    text = capsys.readouterr().out
    for flag in ("--mqtt-host", "--mqtt-port", "--mqtt-tls", "--mqtt-ca-file", "--mqtt-cert-file",
                 "--mqtt-key-file", "--mqtt-username", "--mqtt-password-file",
                 "--mqtt-topic-prefix", "--mqtt-client-id", "--mqtt-keepalive-s"):
        assert f"  {flag} " in text or f"  {flag}," in text, flag
    for old in ("--host", "--tls-ca", "--tls-cert", "--tls-key", "--username", "--password-file",
                "--topic-prefix", "--client-id"):
        assert f"  {old} " not in text and f"[{old} " not in text, old
    assert "--mqtt-password " not in text  # never on the command line


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
        assert store.get(msgs[2]["event_id"]) == msgs[2] and store.get("0" * 16) is None
        store.dead_letter(DeadLetter(iso_utc(T0 + 6), "schema", "label: required", topic(), None,
                                     3000, b"\xff" * 256))
        assert store.count_dead_letters() == 1
        data = bytes(range(256)) * 3  # every byte value, as a clip may hold
        clip = ClipRow.from_message({"event_id": msgs[0]["event_id"], "device_id": "rec-1",
                                     "file": "c.wav", "format": "wav", "sha256": "cd" * 32,
                                     "published_at": iso_utc(T0 + 7)}, data, iso_utc(T0 + 8))
        assert store.add_clip(clip) is True and store.add_clip(clip) is False
        assert store.clip_sha256(msgs[0]["event_id"]) == "cd" * 32
        assert store.clip_sha256(msgs[1]["event_id"]) is None and store.count_clips() == 1
        (kept,) = store.db.execute(f"SELECT data FROM {table}_clips").fetchone()
        assert bytes(kept) == data
        if kind == "postgresql":
            got = store.db.execute(f"SELECT label, start_utc, payload FROM {table} "
                                   "WHERE event_id = %s", (msgs[1]["event_id"],)).fetchone()
            assert got[0] == "very_loud" and got[1].timestamp() == T0 + 1 and got[2] == msgs[1]
    finally:
        if kind == "postgresql":
            store.db.execute(f"DROP TABLE {table}, {table}_dead_letters, {table}_clips")
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
    for args, message in [
        (["--mqtt-port", "70000"], "--mqtt-port 70000 is out of range"),
        (["--mqtt-keepalive-s", "x"], "--mqtt-keepalive-s must be an integer, got 'x'"),
    ]:
        code, err = cli_error(["subscribe", "--db", str(tmp_path / "ok.sqlite"), *args])
        assert code == 2 and message in err and "Traceback" not in err


def cli_error(argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "meerkit.cli", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=30)
    return proc.returncode, proc.stderr


def test_new_database_and_its_wal_are_private(tmp_path):
    db = tmp_path / "new.sqlite"
    store = SQLiteStore(db)
    store.add(Row.from_message(detection(1), json.dumps(detection(1)), iso_utc(T0)))
    try:
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert path.stat().st_mode & 0o777 == 0o600, path
    finally:
        store.close()


def test_only_a_failing_store_stops_acknowledgement(broker, tmp_path):
    """A row the database refuses (here an administrator's CHECK constraint) is a rejection;
    a database locked past its timeout is an outage: stop, do not acknowledge, and the broker
    redelivers to the persistent session once the store works again."""
    db = tmp_path / "d.sqlite"
    with sqlite3.connect(db) as con:  # the administrator's own table, stricter than ours
        con.execute(f"""CREATE TABLE detections ({', '.join(
            f'{c} TEXT' for c in Row.__dataclass_fields__)},
            PRIMARY KEY (event_id), CHECK (label <> 'forbidden'))""")
    cfg = config(broker, db)
    cfg.mqtt.client_id = "persistent-subscriber"
    store = SQLiteStore(db, busy_timeout_s=0.2)
    sub = Subscriber(cfg, store)
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(sub.run())
        except UserError as err:
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert sub.subscribed.wait(10)
    publish(broker, [(topic(), detection(1, label="forbidden")), (topic(), detection(2))])
    deadline = time.monotonic() + 10
    while sub.counts.stored + sub.counts.rejected < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sub.counts.reasons == {"store_refused": 1} and sub.counts.stored == 1
    assert thread.is_alive()

    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the database
    publish(broker, [(topic(), detection(3))])
    thread.join(10)
    assert not thread.is_alive() and "database failed (SQLite: database is locked)" in str(outcome)
    store.close()
    locker.execute("ROLLBACK")
    locker.close()

    again = Running(cfg)  # same client id: the broker kept the unacknowledged message
    assert again.wait_for(lambda: again.sub.counts.stored == 1), again.sub.counts.line()
    assert again.stop() == 0
    assert detection(3)["event_id"] in rows(db)
