"""The runtime as a process against a real mosquitto: schema, offline parity, broker restarts,
kill -9, last will, TLS + password. Exactly-once is checked by counting event ids at a
subscriber that deduplicates nothing."""

import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import Collector, Mosquitto, burst_audio, regular_bursts, start_runtime

from edge_runtime.cli import main
from edge_runtime.contract.events import DecoderConfig
from edge_runtime.contract.model import TFLiteModel, model_geometry
from edge_runtime.contract.wav import read_wav
from edge_runtime.detect import Detector

T0 = "2024-01-01T00:00:00Z"
T0_UNIX = 1704067200.0
DEVICE = "test-rec"
SCHEMAS = Path(__file__).resolve().parents[1] / "edge_runtime" / "contract" / "schemas"
PASSWORD = "s3cr3t-Pa55word!"  # the TLS broker's password for "recorder" (conftest)


class Runtime:
    """edge-runtime as a subprocess; its output is collected by reader threads."""

    def __init__(self, *args: str, env: dict | None = None, stdin: bool = False):
        self.proc = start_runtime(*args, env=env,
                                  stdin=subprocess.PIPE if stdin else subprocess.DEVNULL)
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(
                line.decode(errors="replace") for line in s), daemon=True).start()

    def write(self, audio: np.ndarray) -> None:
        self.proc.stdin.write(np.asarray(audio, "<f4").tobytes())
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        self.proc.stdin.close()

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        time.sleep(0.05)  # let the reader threads catch up
        return "".join(self.err) + "".join(self.out)

    def detected(self) -> list[str]:
        return re.findall(r"detected \S+ .* id ([0-9a-f]{16})", "".join(self.err))

    def wait_detected(self, n: int, timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.detected()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.detected()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def runtime_args(model: Path, broker: Mosquitto, outbox: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--device-id", DEVICE, "--start-time", T0,
            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
            "--outbox-path", str(outbox), "--mqtt-reconnect-min-s", "0.2",
            "--mqtt-reconnect-max-s", "1", "--mqtt-stats-interval-s", "1",
            "--outbox-drain-timeout-s", "10", *extra]


def stdin_args(*extra: str) -> list[str]:
    return ["--input", "-", "--stdin-format", "f32le", "--stdin-rate", "16000", *extra]


def expected(model_path: Path, audio: np.ndarray) -> dict[str, tuple[str, float, float]]:
    """event id -> (label, start, end) as the offline path computes them."""
    model = TFLiteModel(model_path)
    decoder = DecoderConfig(threshold=list(model.card.thresholds), hysteresis=0.1,
                            max_duration_s=30.0)
    det = Detector(model.window_fn, model.card, model_geometry(model.card), decoder, DEVICE,
                   T0_UNIX)
    return {d.event_id: (d.label, d.stream_start_s, d.stream_end_s)
            for d in det.push(audio) + det.flush()}


def ids(collector: Collector) -> Counter:
    return Counter(m["event_id"] for m in collector.detections())


def test_file_replay_publishes_the_offline_events_with_the_schema(broker, energy_model,
                                                                   burst_wav, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    wav, _ = burst_wav
    want = expected(energy_model, read_wav(wav)[0][:, 0])
    assert len(want) == 9
    sub = Collector(broker)
    rt = Runtime(*runtime_args(energy_model, broker, tmp_path / "o.sqlite", "--input", str(wav),
                               "--device-site", "test-site", "--device-lat", "-26.9",
                               "--device-lon", "21.8"))
    assert rt.wait() == 0, rt.log()
    assert sub.wait_for(lambda s: len(s.detections()) >= len(want)), rt.log()
    detection_schema = json.loads((SCHEMAS / "detection.schema.json").read_text())
    messages = sub.detections()
    for m in messages:
        jsonschema.validate(m, detection_schema)
        label, start, end = want[m["event_id"]]
        assert m["label"] == label and m["device_id"] == DEVICE and m["site"] == "test-site"
        assert m["start"] == f"2024-01-01T00:00:{start:06.3f}Z"
        assert m["end"] == f"2024-01-01T00:00:{end:06.3f}Z"
    assert ids(sub) == Counter(list(want))  # every offline event, once
    status = sub.payloads(f"{DEVICE}/status")
    assert status[0] == b"online" and status[-1] == b"offline"  # clean exit says so itself
    stats = [json.loads(p) for p in sub.payloads("/status/stats")]
    status_schema = json.loads((SCHEMAS / "status.schema.json").read_text())
    for s in stats:
        jsonschema.validate(s, status_schema)
    assert stats[-1]["audio_s"] == 6.0 and stats[-1]["detections"] == 9
    assert rt.log().count("detected") == 9
    # A restart that re-processes the same recording (same start time -> same event ids)
    # does not send acknowledged detections again.
    again = Runtime(*runtime_args(energy_model, broker, tmp_path / "o.sqlite", "--input",
                                  str(wav)))
    assert again.wait() == 0
    time.sleep(0.3)
    assert ids(sub) == Counter(list(want))
    assert again.log().count("already stored or acknowledged") == 9
    sub.close()


def test_broker_restart_mid_stream_delivers_every_detection_exactly_once(
        broker, energy_model, tmp_path):
    audio = burst_audio(8.0, regular_bursts(8.0))
    want = expected(energy_model, audio)
    sub = Collector(broker, client_id="restart-collector")  # persistent session
    rt = Runtime(*runtime_args(energy_model, broker, tmp_path / "o.sqlite"), *stdin_args(),
                 stdin=True)
    rt.write(audio[: 16000 * 3])
    assert sub.wait_for(lambda s: len(s.detections()) >= 2), rt.log()
    broker.stop()  # the broker goes away while audio keeps coming
    before = len(rt.detected())
    rt.write(audio[16000 * 3 : 16000 * 6])
    rt.wait_detected(before + 3)
    assert len(rt.detected()) > before  # detections made while the broker was down
    broker.start()
    rt.write(audio[16000 * 6 :])
    rt.close_stdin()
    assert rt.wait() == 0, rt.log()
    assert sub.wait_for(lambda s: sum(ids(s).values()) >= len(want)), (ids(sub), rt.log())
    time.sleep(0.3)  # a late duplicate would show up here
    counts = ids(sub)
    assert set(counts) == set(want), rt.log()
    # QoS 1 is at-least-once: a message the broker took but whose PUBACK died with it is sent
    # again. A resend must be the very same message (same event_id and content), so
    # de-duplicating by event_id yields every detection exactly once.
    by_id: dict[str, list[dict]] = {}
    for m in sub.detections():
        by_id.setdefault(m["event_id"], []).append(m)
    assert all(all(c == copies[0] for c in copies) for copies in by_id.values()), by_id
    assert sum(counts.values()) - len(counts) <= 20, counts  # at most the in-flight window
    assert "lost connection" in rt.log()
    sub.close()


def test_sigkill_with_broker_down_then_restart_drains_the_backlog(energy_model, tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto")  # not started: down at boot is normal
    outbox = tmp_path / "o.sqlite"
    audio = burst_audio(6.0, regular_bursts(6.0))
    rt = Runtime(*runtime_args(energy_model, broker, outbox), *stdin_args(), stdin=True)
    rt.write(audio)
    detected = rt.wait_detected(7)
    assert len(detected) >= 7, rt.log()
    rt.kill()  # SIGKILL mid-stream (stdin still open, events waiting)
    assert "unreachable" in rt.log()
    db = sqlite3.connect(outbox)
    assert sorted(json.loads(p)["event_id"] for (p,) in db.execute("SELECT payload FROM outbox")
                  ) == sorted(detected)
    db.close()
    broker.start()
    try:
        sub = Collector(broker)
        rt2 = Runtime(*runtime_args(energy_model, broker, outbox), *stdin_args(), stdin=True)
        rt2.close_stdin()  # no new audio: only the backlog
        assert rt2.wait() == 0, rt2.log()
        assert sub.wait_for(lambda s: sum(ids(s).values()) >= len(detected)), rt2.log()
        time.sleep(0.2)
        assert ids(sub) == Counter(detected)  # nothing lost, nothing twice
        assert sqlite3.connect(outbox).execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        sub.close()
    finally:
        broker.kill()


def test_status_shows_offline_after_a_kill(broker, energy_model, tmp_path):
    sub = Collector(broker)
    rt = Runtime(*runtime_args(energy_model, broker, tmp_path / "o.sqlite"), *stdin_args(),
                 stdin=True)
    status = f"{DEVICE}/status"
    assert sub.wait_for(lambda s: s.payloads(status) == [b"online"], 10), rt.log()
    rt.kill()
    assert sub.wait_for(lambda s: s.payloads(status)[-1:] == [b"offline"], 10)
    # a new subscriber sees the retained state
    late = Collector(broker, topic=f"meerkit/{DEVICE}/status")
    assert late.wait_for(lambda s: s.payloads(status) == [b"offline"], 5)
    sub.close()
    late.close()


def test_sigterm_flushes_publishes_and_exits_zero(broker, energy_model, tmp_path):
    audio = burst_audio(3.0, regular_bursts(3.0))
    want = expected(energy_model, audio)
    sub = Collector(broker)
    rt = Runtime(*runtime_args(energy_model, broker, tmp_path / "o.sqlite"), *stdin_args(),
                 stdin=True)
    rt.write(audio)
    rt.wait_detected(1)
    time.sleep(0.3)  # let the inference thread take all of it
    rt.proc.send_signal(signal.SIGTERM)
    assert rt.wait(15) == 0, rt.log()
    # the last burst is only final after the flush that SIGTERM triggers
    assert sub.wait_for(lambda s: ids(s) == Counter(list(want)), 5), (ids(sub), want, rt.log())
    assert sub.payloads(f"{DEVICE}/status")[-1] == b"offline"
    sub.close()


# ------------------------------------------------------------------------- TLS + password
def tls_args(broker: Mosquitto, *extra: str) -> list[str]:
    return ["--mqtt-tls", "--mqtt-ca-file", str(broker.certs["ca"]),
            "--mqtt-username", "recorder", *extra]


def test_tls_with_the_right_password_delivers(tls_broker, energy_model, burst_wav, tmp_path):
    wav, _ = burst_wav
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    sub = Collector(tls_broker, username="reader", password="reader-pw")
    rt = Runtime(*runtime_args(energy_model, tls_broker, tmp_path / "o.sqlite", "--input",
                               str(wav), "--log-level", "debug",
                               *tls_args(tls_broker, "--mqtt-password-file", str(pw))))
    assert rt.wait() == 0, rt.log()
    assert sub.wait_for(lambda s: len(s.detections()) >= 9), rt.log()
    assert "TLS on" in rt.log() and PASSWORD not in rt.log()
    sub.close()


def test_tls_with_a_wrong_password_is_refused_loudly_and_keeps_detections(
        tls_broker, energy_model, burst_wav, tmp_path):
    wav, _ = burst_wav
    outbox = tmp_path / "o.sqlite"
    wrong = "not-the-password-123"
    rt = Runtime(*runtime_args(energy_model, tls_broker, outbox, "--input", str(wav),
                               "--outbox-drain-timeout-s", "1.5", "--log-level", "debug",
                               *tls_args(tls_broker)),
                 env={"MEERKIT_MQTT_PASSWORD": wrong})
    assert rt.wait() == 0, rt.log()  # the file is done; the detections wait in the outbox
    log = rt.log()
    assert "refused the connection: Not authorized" in log and "check mqtt.username" in log
    assert log.count("refused the connection") == 1  # retried, but said once
    assert wrong not in log and PASSWORD not in log
    assert "9 detection(s) not yet acknowledged" in log
    assert sqlite3.connect(outbox).execute("SELECT count(*) FROM outbox").fetchone()[0] == 9


def test_check_reports_broker_credentials_and_tls_problems(tls_broker, energy_model, burst_wav,
                                                           tmp_path, capsys, monkeypatch):
    wav, _ = burst_wav
    base = ["--check", "--model", str(energy_model), "--input", str(wav), "--outbox-path",
            str(tmp_path / "o.sqlite"), "--mqtt-host", "127.0.0.1", "--mqtt-port",
            str(tls_broker.port)]
    monkeypatch.setenv("MEERKIT_MQTT_PASSWORD", PASSWORD)
    assert main([*base, *tls_args(tls_broker)]) == 0
    out = capsys.readouterr().out
    assert "[ok] model" in out and "[ok] broker" in out and "all checks passed" in out
    assert "one window ran in" in out and PASSWORD not in out

    monkeypatch.setenv("MEERKIT_MQTT_PASSWORD", "wrong")
    assert main([*base, *tls_args(tls_broker)]) == 1
    assert "[FAIL] broker" in (out := capsys.readouterr().out) and "Not authorized" in out

    assert main([*base, "--mqtt-tls", "--mqtt-username", "recorder"]) == 1  # system CAs only
    assert "TLS certificate not trusted" in capsys.readouterr().out

    assert main([*base[:-1], "1", "--mqtt-username", "recorder"]) == 1  # nothing listens
    assert "cannot connect" in capsys.readouterr().out
