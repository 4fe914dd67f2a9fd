"""Shared fixtures for the edge-runtime tests: a real mosquitto on loopback (plain, and TLS +
password), a tiny carded TFLite model with predictable events, WAVs with loud bursts, an MQTT
collector and a runtime started as a subprocess (so it can be SIGTERMed and SIGKILLed).

The helpers are plain functions/classes so benchmarks/runtime_bench.py can use them too.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if os.path.exists("/usr/sbin/mosquitto") else None)
LABELS = ("loud", "very_loud")


# ------------------------------------------------------------------------- test model
def build_energy_tflite(path: Path, sample_rate: int = 16000, window_s: float = 1.0,
                        hop_s: float = 0.2, frame_rate_hz: float = 50.0) -> Path:
    """A carded .tflite mapping a waveform window to per-frame logits from the frame energy:
    'loud' above a mean square of 0.01 (RMS 0.1), 'very_loud' above 0.2. Built with
    tensorflow (tests and benchmarks only; the runtime never imports it)."""
    import tensorflow as tf

    from edge_runtime.contract.card import ModelCard
    from export.card import embed_card_tflite

    window, frames = round(window_s * sample_rate), round(window_s * frame_rate_hz)

    @tf.function(input_signature=[tf.TensorSpec([1, window], tf.float32)])
    def model(x):
        ms = tf.reduce_mean(tf.square(tf.reshape(x, [1, frames, window // frames])), axis=-1)
        level = tf.math.log(ms + 1e-10) / math.log(10.0)  # (1, frames)
        return tf.stack([6.0 * (level + 2.0), 6.0 * (level - math.log10(0.2))], axis=-1)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model)
    flat = converter.convert()
    card = ModelCard(name="energy-test", version="1", sha256=hashlib.sha256(flat).hexdigest(),
                     sample_rate=sample_rate, window_s=window_s, hop_s=hop_s,
                     frame_rate_hz=frame_rate_hz, labels=LABELS, thresholds=(0.5, 0.5),
                     output="logits")
    path = Path(path)
    path.write_bytes(embed_card_tflite(flat, card))
    path.with_name(path.stem + "-nocard.tflite").write_bytes(flat)  # for the refusal tests
    return path


def build_logmel_tflite(path: Path, sample_rate: int = 16000, window_s: float = 1.0) -> Path:
    """A log-mel artifact: (1, frames, n_mels) features -> per-frame logits = mean feature
    (label 'a') and minus it (label 'b'). Exercises the runtime's numpy front end."""
    import tensorflow as tf

    from edge_runtime.contract.card import Frontend, ModelCard
    from export.card import embed_card_tflite

    frontend = Frontend(kind="logmel", n_fft=512, win_length=400, hop_length=320, n_mels=32,
                        fmin=50.0, fmax=8000.0, log_offset=1e-6, mean=-5.0, std=4.0)
    frames = round(window_s * sample_rate) // frontend.hop_length

    @tf.function(input_signature=[tf.TensorSpec([1, frames, frontend.n_mels], tf.float32)])
    def model(x):
        m = tf.reduce_mean(x, axis=-1)
        return tf.stack([m, -m], axis=-1)

    flat = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model).convert()
    card = ModelCard(name="logmel-test", version="1", sha256=hashlib.sha256(flat).hexdigest(),
                     sample_rate=sample_rate, window_s=window_s, hop_s=window_s / 2,
                     frame_rate_hz=sample_rate / frontend.hop_length, labels=("a", "b"),
                     thresholds=(0.5, 0.5), frontend=frontend)
    Path(path).write_bytes(embed_card_tflite(flat, card))
    return Path(path)


def energy_reference(windows: np.ndarray, frames: int = 50) -> np.ndarray:
    """The test model in numpy: (batch, samples) -> (batch, frames, 2) probabilities."""
    ms = np.square(windows.reshape(len(windows), frames, -1).astype(np.float64)).mean(-1)
    level = np.log10(ms + 1e-10)
    logits = np.stack([6.0 * (level + 2.0), 6.0 * (level - math.log10(0.2))], -1)
    return 1.0 / (1.0 + np.exp(-logits))


def burst_audio(duration_s: float, bursts: list[tuple[float, float, float]],
                sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Quiet noise with 1 kHz tone bursts (start_s, length_s, amplitude)."""
    rng = np.random.default_rng(seed)
    n = round(duration_s * sample_rate)
    x = 0.003 * rng.standard_normal(n)
    t = np.arange(n) / sample_rate
    for start, length, amp in bursts:
        a, b = round(start * sample_rate), round((start + length) * sample_rate)
        x[a:b] += amp * np.sin(2 * np.pi * 1000 * t[a:b])
    return x.astype(np.float32)


def regular_bursts(duration_s: float, every_s: float = 1.0, first_s: float = 0.3,
                   length_s: float = 0.3) -> list[tuple[float, float, float]]:
    """Bursts every `every_s`, alternating 'loud' (0.3) and 'very loud' (0.95)."""
    out, k = [], 0
    while first_s + k * every_s + length_s < duration_s - 0.2:
        out.append((first_s + k * every_s, length_s, 0.3 if k % 2 == 0 else 0.95))
        k += 1
    return out


# ------------------------------------------------------------------------- mosquitto
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(directory: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost/127.0.0.1 (openssl CLI, EC keys: fast)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=meerkit test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class Mosquitto:
    """A mosquitto process on 127.0.0.1 that a test can stop, restart and kill.
    Persistence is on, so a persistent subscriber session survives a restart."""

    def __init__(self, workdir: Path, tls: bool = False, users: dict[str, str] | None = None):
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt install mosquitto)")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.certs = make_certs(self.dir / "certs") if tls else None
        lines = [f"listener {self.port} 127.0.0.1", "persistence true",
                 f"persistence_location {self.dir}/", f"log_dest file {self.dir}/mosquitto.log",
                 "log_type error", "log_type warning", "log_type notice",
                 f"user {os.environ.get('USER') or __import__('getpass').getuser()}"]
        if users:
            passwd = self.dir / "passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []),
                                str(passwd), user, password], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.certs:
            lines += [f"cafile {self.certs['ca']}", f"certfile {self.certs['cert']}",
                      f"keyfile {self.certs['key']}", "require_certificate false"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode()}"
                                   f"{self.log()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Collector:
    """Subscriber that records every message with its arrival time. A persistent session
    (clean_session False, fixed client id, QoS 1) keeps messages across broker restarts."""

    def __init__(self, broker: Mosquitto, topic: str = "meerkit/#", username: str = "",
                 password: str = "", client_id: str = ""):
        from paho.mqtt import client as mqtt

        self.messages: list[tuple[str, bytes, float]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"collector-{free_port()}",
                                  clean_session=False)
        if username:
            self.client.username_pw_set(username, password)
        if broker.certs:
            self.client.tls_set(ca_certs=str(broker.certs["ca"]))
        self.connected = threading.Event()
        self.topic = topic

        def on_connect(c, u, f, rc, p):
            if not rc.is_failure:
                c.subscribe(topic, qos=1)
                self.connected.set()

        def on_message(c, u, msg):
            with self._lock:
                self.messages.append((msg.topic, msg.payload, time.time()))

        self.client.on_connect, self.client.on_message = on_connect, on_message
        self.client.reconnect_delay_set(1, 1)
        self.client.connect_async("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "collector could not connect"
        time.sleep(0.1)  # let the SUBACK arrive

    def payloads(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def detections(self) -> list[dict]:
        return [json.loads(p) for p in self.payloads("/detections")]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.05)
        return predicate(self)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------- runtime process
def runtime_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", *args]


def start_runtime(*args: str, env: dict[str, str] | None = None,
                  stdin=subprocess.DEVNULL) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(runtime_command(*args), stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env, cwd=REPO)


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def energy_model(tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow", reason="building the test .tflite needs tensorflow")
    pytest.importorskip("flatbuffers", reason="embedding the card needs flatbuffers")
    return build_energy_tflite(tmp_path_factory.mktemp("model") / "energy.tflite")


@pytest.fixture(scope="session")
def burst_wav(tmp_path_factory) -> tuple[Path, list[tuple[float, float, float]]]:
    from edge_runtime.contract.wav import write_wav

    bursts = regular_bursts(6.0)
    path = tmp_path_factory.mktemp("audio") / "bursts.wav"
    write_wav(path, burst_audio(6.0, bursts), 16000)
    return path, bursts


@pytest.fixture
def broker(tmp_path):
    """A fresh plain broker per test (tests stop, restart and kill it)."""
    b = Mosquitto(tmp_path / "mosquitto").start()
    yield b
    b.kill()


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory):
    b = Mosquitto(tmp_path_factory.mktemp("mosquitto-tls"), tls=True,
                  users={"recorder": "s3cr3t-Pa55word!", "reader": "reader-pw"}).start()
    yield b
    b.kill()
