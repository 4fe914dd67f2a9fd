"""edge_runtime.watchdog: sd_notify over a real unix datagram socket, stall detection on an
injected clock, the health file, and the systemd unit that relies on them."""

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.audio import Source
from edge_runtime.contract.errors import UserError
from edge_runtime.watchdog import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SOURCE_ENDED,
    EXIT_STALLED,
    SystemdNotifier,
    Watchdog,
    default_health_path,
)

UNIT = Path(__file__).parents[1] / "firmware_configs" / "systemd" / "edge-runtime.service"


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class NotifySocket:
    """What systemd listens on: a unix datagram socket; `messages()` returns what arrived."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    # a socket path must fit in sun_path (108 bytes); pytest's tmp_path may not
    path = f"/tmp/meerkit-notify-{uuid.uuid4().hex[:12]}"
    sock = NotifySocket(path)
    yield sock
    sock.close()
    os.unlink(path)


def make(notify: NotifySocket | None, clock: FakeClock, *, live=True, watchdog_usec=10_000_000,
         **kwargs) -> Watchdog:
    env = {"WATCHDOG_USEC": str(watchdog_usec)}
    if notify is not None:
        env["NOTIFY_SOCKET"] = notify.address
    return Watchdog.from_env(live=live, stall_s=kwargs.pop("stall_s", 10.0), env=env,
                             clock=clock, wall=lambda: 1_700_000_000.0 + clock.t, boot="boot-a",
                             **kwargs)


def test_ready_once_then_watchdog_only_while_audio_is_processed(notify_socket):
    clock = FakeClock()
    wd = make(notify_socket, clock)  # WatchdogSec=10 s: fed at most every 5 s
    assert wd.check() is None and notify_socket.messages() == []  # no audio yet: not ready
    for _ in range(3):  # audio flows and is processed
        wd.audio_received(1600)
        wd.audio_processed(1600)
        clock.advance(2.5)
        assert wd.check() is None
    sent = notify_socket.messages()
    assert sent[0].splitlines() == ["READY=1", "STATUS=listening"]
    assert sent[1:] == ["WATCHDOG=1"]  # 5 s after the start: one feed, not one per check
    wd.audio_received(1600)
    wd.audio_processed(1600)
    clock.advance(5)
    wd.check()
    assert notify_socket.messages() == ["WATCHDOG=1"]
    for _ in range(3):  # no progress: time passes, nothing is fed
        clock.advance(3)
        assert wd.check() is None
    assert all(m != "WATCHDOG=1" and "READY=1" not in m for m in notify_socket.messages())


def test_a_stalled_live_source_is_named_and_never_fed_again(notify_socket):
    clock = FakeClock()
    wd = make(notify_socket, clock, stall_s=10.0)
    wd.audio_received(1600)
    wd.audio_processed(1600)
    clock.advance(5)
    assert wd.check() is None
    clock.advance(9.9)  # 9.9 s without audio: still within audio.stall_s
    assert wd.check() is None
    clock.advance(0.2)
    stall = wd.check()
    assert stall is not None and stall.kind == "no_audio"
    assert "no audio from the live source for 10.1 s" in str(stall)
    notify_socket.messages()
    wd.audio_received(1600)  # too late: a stalled run exits, it is not fed back to life
    wd.audio_processed(1600)
    clock.advance(10)
    assert wd.check() is stall
    assert not any("WATCHDOG=1" in m for m in notify_socket.messages())
    assert wd.finish(signalled=False) == EXIT_STALLED
    assert wd.stats()["stalls"] == 1


class StallingSource(Source):
    """Delivers `blocks` blocks, then nothing until stopped: a USB microphone that hangs."""

    sample_rate, channels, live, description = 16000, 1, True, "stalling mic"

    def __init__(self, blocks: int):
        self.blocks = blocks
        self.delivered = threading.Event()

    def run(self, put, stop) -> None:
        for _ in range(self.blocks):
            put(np.zeros((1600, 1), np.float32))
        self.delivered.set()
        stop.wait()


def test_a_source_thread_that_stops_delivering_is_detected():
    clock = FakeClock()
    wd = make(None, clock, stall_s=10.0)
    source, stop = StallingSource(blocks=5), threading.Event()

    def put(block):  # as the pipeline's capture thread hands blocks on
        wd.audio_received(len(block))
        wd.audio_processed(len(block))

    capture = threading.Thread(target=source.run, args=(put, stop))
    capture.start()
    try:
        assert source.delivered.wait(10)
        assert wd.check() is None and wd.ready_sent
        clock.advance(10)
        stall = wd.check()
        assert stall is not None and stall.kind == "no_audio"
    finally:
        stop.set()
        capture.join(5)


def test_inference_that_stops_with_audio_waiting_is_a_stall():
    clock = FakeClock()
    waiting = [0]
    wd = make(None, clock, live=False, stall_s=10.0, backlog=lambda: waiting[0])
    wd.audio_received(1600)
    wd.audio_processed(1600)
    assert wd.check() is None
    clock.advance(30)  # a file source that is idle (nothing waiting) is not stalled
    assert wd.check() is None
    waiting[0] = 3200  # audio arrives and waits, inference does not move
    assert wd.check() is None
    clock.advance(9.9)
    assert wd.check() is None
    clock.advance(0.2)
    stall = wd.check()
    assert stall is not None and stall.kind == "inference"
    assert "no progress for 40.1 s" in str(stall)


def test_inference_stall_without_a_backlog_probe_uses_the_counters():
    clock = FakeClock()
    wd = make(None, clock, live=True, stall_s=10.0)
    wd.audio_processed(1600)
    wd.check()
    stalls = []
    for _ in range(6):  # the source keeps delivering, nothing is processed
        wd.audio_received(1600)
        clock.advance(2)
        stalls.append(wd.check())
    assert stalls[:-1] == [None] * 5 and stalls[-1].kind == "inference"


@pytest.mark.parametrize("live, signalled, failed, code, status", [
    (True, False, False, EXIT_SOURCE_ENDED, "ended"),  # the microphone went away
    (True, True, False, EXIT_OK, "stopped"),  # systemctl stop
    (False, False, False, EXIT_OK, "stopped"),  # the end of a file
    (True, False, True, EXIT_FAILED, "failed"),
])
def test_exit_codes(notify_socket, tmp_path, live, signalled, failed, code, status):
    clock = FakeClock()
    health = tmp_path / "health.json"
    wd = make(notify_socket, clock, live=live, health_file=str(health))
    wd.audio_received(1)
    wd.audio_processed(1)
    wd.check()
    assert wd.finish(signalled=signalled, failed=failed) == code
    assert json.loads(health.read_text())["status"] == status
    last = notify_socket.messages()[-1].splitlines()
    assert last[0] == "STOPPING=1" and last[1].startswith(f"STATUS={status}")


def test_health_file_is_json_after_every_write_and_counts_restarts(tmp_path):
    health = tmp_path / "health.json"
    clock = FakeClock()
    stats = {"audio_s": 0.0, "detections": 0, "outbox_depth": 2, "connection_problem": "refused",
             "overruns": 0}
    wd = make(None, clock, health_file=str(health), stats=lambda: dict(stats),
              health_interval_s=15)
    first = json.loads(health.read_text())  # written at once: a start that dies still counts
    assert (first["status"], first["restarts"], first["stalls"], first["previous"]) == (
        "starting", 0, 0, None)
    for i in range(1, 8):
        wd.audio_received(1600)
        wd.audio_processed(1600)
        stats["audio_s"], stats["detections"] = i * 0.1 * 50, i
        clock.advance(5)
        wd.check()
        data = json.loads(health.read_text())  # never half a file
        assert data["status"] == "ok" and data["schema"] == 1
    assert data["outbox_depth"] == 2 and data["connection_problem"] == "refused"
    assert data["detections"] >= 5 and data["last_audio_at"].endswith("Z")
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    clock.advance(20)
    wd.check()  # stalled: no audio
    assert json.loads(health.read_text())["status"] == "stalled"
    wd.finish(signalled=False)

    again = make(None, FakeClock(), health_file=str(health))  # same boot: a restart
    data = json.loads(health.read_text())
    assert (again.restarts, data["restarts"], data["stalls"]) == (1, 1, 1)
    assert data["previous"]["status"] == "stalled" and "no audio" in data["previous"]["reason"]
    rebooted = Watchdog.from_env(live=True, health_file=str(health), env={}, boot="boot-b")
    assert rebooted.restarts == 1  # a reboot is not a restart; the count carries over


def test_health_path_defaults_to_the_state_directory_and_bad_paths_are_user_errors(tmp_path):
    assert default_health_path("", {"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path(
        "/var/lib/a/health.json")
    assert default_health_path("", {}) is None  # not a service: no file
    assert default_health_path("/x/h.json", {"STATE_DIRECTORY": "/s"}) == Path("/x/h.json")
    with pytest.raises(UserError, match="log.health_file .*missing.*cannot write"):
        Watchdog.from_env(live=True, health_file=str(tmp_path / "missing" / "h.json"), env={})
    with pytest.raises(UserError, match="audio.stall_s must be > 0"):
        Watchdog.from_env(live=True, stall_s=0, env={})


def test_notifier_env_abstract_socket_and_a_vanished_socket(caplog):
    name = f"@meerkit-test-{uuid.uuid4().hex[:12]}"
    abstract = NotifySocket(name)
    try:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_s == 30.0 and notifier.send("READY=1")
        assert abstract.messages() == ["READY=1"]
    finally:
        abstract.close()
    assert SystemdNotifier.from_env({"WATCHDOG_USEC": "30000000",
                                     "WATCHDOG_PID": str(os.getpid() + 1)}).watchdog_s is None
    assert SystemdNotifier.from_env({"WATCHDOG_USEC": "junk"}).watchdog_s is None
    off = SystemdNotifier.from_env({})
    assert not off.enabled and off.send("READY=1") is False
    gone = SystemdNotifier("/tmp/meerkit-no-such-socket")
    assert gone.send("WATCHDOG=1") is False and gone.send("WATCHDOG=1") is False
    assert caplog.text.count("cannot notify systemd") == 1


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_restarts_forever_and_uses_the_watchdog():
    unit = unit_settings()
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["Restart"] == ["always"] and int(unit["RestartSec"][0]) > 0
    # A USB microphone that appears minutes after boot must never leave the unit failed.
    assert unit["StartLimitIntervalSec"] == ["0"]
    watchdog_s = int(unit["WatchdogSec"][0].rstrip("s"))
    assert watchdog_s > 2 * 10.0  # well above the default audio.stall_s: a named stall first



# ------------------------------------------------------------------------- wired into the CLI
@pytest.mark.parametrize("writer_ends, code, status", [(False, EXIT_STALLED, "stalled"),
                                                       (True, EXIT_SOURCE_ENDED, "ended")])
def test_the_real_runtime_on_a_live_pipe_restarts_on_a_stall_or_an_end(
        energy_model, tmp_path, notify_socket, writer_ends, code, status):
    """edge-runtime on realtime stdin: READY=1 once audio flowed; a writer that stops
    writing but keeps the pipe open is a stall (exit 3); a writer that exits is a live
    source that ended (exit 4). The health file says which. systemd restarts both."""
    health = tmp_path / "health.json"
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime.cli", "--no-mqtt", "--model", str(energy_model),
         "--input", "-", "--stdin-rate", "16000", "--audio-stdin-pace", "realtime",
         "--audio-stall-s", "1", "--log-health-file", str(health)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        proc.stdin.write(np.zeros(16000 * 2, "<i2").tobytes())
        proc.stdin.flush()
        if writer_ends:
            proc.stdin.close()
        # the pipe stays open in the stall case: wait, do not communicate() (it closes stdin)
        proc.wait(timeout=120)  # generous for a loaded CI machine; the stall is 1 s
        err = proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.stdin.close()
    assert proc.returncode == code, err
    report = json.loads(health.read_text())
    assert report["status"] == status and report["audio_s"] >= 1.9
    sent = "\n".join(notify_socket.messages())
    # READY=1 once audio was processed; a writer that ends at once may beat the first check
    assert sent.count("READY=1") in ((0, 1) if writer_ends else (1,))
    assert f"STATUS={status}" in sent
