"""edge-runtime with a recording schedule and per-site label lists, end to end.

The schedule runs on an injected clock (`run(cfg, clock=..., open_source=...)`): a fake
microphone notes the clock at every block it reads and moves the clock on by a block's worth
of simulated time, and the clock's sleep jumps ahead, so whole nights (across midnight, and
across both DST changes of Europe/Berlin) take a moment. The label lists run through
`edge_runtime.cli.main` on a WAV."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import burst_audio, regular_bursts

import edge_runtime.contract
from edge_runtime.audio import Source
from edge_runtime.cli import build_parser, main, run
from edge_runtime.config import flag_overrides, load_config
from edge_runtime.contract.wav import write_wav

pytest.importorskip("astral")

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
BLOCK_ADVANCE_S = 300.0  # simulated time one fake-microphone block stands for


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


class FakeClock:
    """Simulated wall clock. `sleep` jumps ahead; at `end` it sets the stop event, as a
    SIGTERM would. While sleeping it keeps what the health file said."""

    def __init__(self, start: datetime, end: datetime, health=None):
        self.t, self.end, self.health = start, end, health
        self.asleep: list[dict] = []  # health file snapshots taken in the first sleeps
        self.lock = threading.Lock()

    def now(self) -> datetime:
        with self.lock:
            return self.t

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.t += timedelta(seconds=seconds)

    def sleep(self, seconds: float, stop: threading.Event) -> bool:
        if self.health is not None and self.health.exists() and len(self.asleep) < 5:
            self.asleep.append(json.loads(self.health.read_text()))
        self.advance(seconds)
        if self.now() >= self.end:
            stop.set()
        return not stop.is_set()


class FakeMic(Source):
    """A live input that records when it was opened, read and closed."""

    sample_rate, channels, live = 16000, 1, True
    description = "fake microphone"

    def __init__(self, clock: FakeClock, log: dict):
        self.clock, self.log = clock, log

    def run(self, put, stop: threading.Event) -> None:
        self.log["opened"].append(self.clock.now())
        while not stop.is_set():
            read_at = self.clock.now()
            self.clock.advance(BLOCK_ADVANCE_S)  # the block covers the time it took
            self.log["reads"].append(read_at)
            put(np.zeros((1600, 1), np.float32))
        self.log["closed"].append(self.clock.now())


def validate_stats(key: str, value: dict) -> None:
    """`value` against the status schema's description of stats[key]."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(edge_runtime.contract.__file__).parent / "schemas" /
                         "status.schema.json").read_text())
    jsonschema.validate(value, schema["properties"][key])


def config(*flags: str):
    args = build_parser().parse_args(list(flags))
    return load_config(args.config, flag_overrides(args))


def run_schedule(energy_model, tmp_path, windows: str, start: datetime, end: datetime):
    health = tmp_path / "health.json"
    cfg = config("--no-mqtt", "--model", str(energy_model), "--input", "mic",
                 "--schedule-timezone", "Europe/Berlin", "--schedule-windows", windows,
                 "--log-health-file", str(health), "--outbox-path", str(tmp_path / "o.sqlite"))
    clock = FakeClock(start, end, health)
    log = {"opened": [], "reads": [], "closed": []}
    report: dict = {}
    code = run(cfg, report, clock=clock, open_source=lambda: FakeMic(clock, log))
    return code, log, report, clock, json.loads(health.read_text())


def reads_in(start: datetime, end: datetime) -> list[datetime]:
    """What the fake microphone reads in one window: a block every BLOCK_ADVANCE_S."""
    n = int((end - start).total_seconds() // BLOCK_ADVANCE_S)
    return [start + timedelta(seconds=k * BLOCK_ADVANCE_S) for k in range(n)]


def test_no_audio_is_read_outside_windows_across_midnight(energy_model, tmp_path):
    code, log, report, clock, health = run_schedule(
        energy_model, tmp_path, "21:00-05:00", berlin(2025, 6, 3, 18, 0), berlin(2025, 6, 5, 12, 0))
    assert code == 0  # stopped while asleep: a normal end
    nights = [(berlin(2025, 6, 3, 21, 0), berlin(2025, 6, 4, 5, 0)),
              (berlin(2025, 6, 4, 21, 0), berlin(2025, 6, 5, 5, 0))]
    # the input is opened when a window opens and closed when it ends, nothing in between
    assert log["opened"] == [a for a, _ in nights] and log["closed"] == [b for _, b in nights]
    assert log["reads"] == reads_in(*nights[0]) + reads_in(*nights[1])  # 96 reads each
    assert report["audio_s"] == pytest.approx(2 * 96 * 0.1)  # both periods counted
    # while asleep the stats (here: the health file) say so, with the next change
    assert clock.asleep and all(h["status"] == "sleeping" for h in clock.asleep)
    first = clock.asleep[0]["schedule"]
    assert first["active"] is False and first["next_change"] == "2025-06-03T19:00:00Z"
    assert first["state"] == "sleeping until 2025-06-03T21:00+02:00"
    assert health["status"] == "stopped" and health["stalls"] == 0
    assert health["schedule"]["windows"] == ["21:00-05:00"]
    validate_stats("schedule", first)


@pytest.mark.parametrize("start, end, nights", [
    # spring forward (02:00 -> 03:00 on 30 March): the night of the 30th is 2 h long
    (berlin(2025, 3, 29, 12, 0), berlin(2025, 3, 31, 12, 0),
     [(berlin(2025, 3, 30, 1, 0), berlin(2025, 3, 30, 4, 0)),
      (berlin(2025, 3, 31, 1, 0), berlin(2025, 3, 31, 4, 0))]),
    # fall back (03:00 -> 02:00 on 26 October): the night of the 26th is 4 h long
    (berlin(2025, 10, 25, 12, 0), berlin(2025, 10, 27, 12, 0),
     [(berlin(2025, 10, 26, 1, 0), berlin(2025, 10, 26, 4, 0)),
      (berlin(2025, 10, 27, 1, 0), berlin(2025, 10, 27, 4, 0))]),
], ids=["spring-forward", "fall-back"])
def test_windows_follow_the_wall_clock_across_dst(energy_model, tmp_path, start, end, nights):
    code, log, _, _, _ = run_schedule(energy_model, tmp_path, "01:00-04:00", start, end)
    assert code == 0
    assert log["opened"] == [a for a, _ in nights] and log["closed"] == [b for _, b in nights]
    assert log["reads"] == reads_in(*nights[0]) + reads_in(*nights[1])
    lengths = [len(reads_in(a, b)) for a, b in nights]
    assert lengths == ([24, 36] if start.month == 3 else [48, 36])  # 2 h / 4 h, then 3 h


def test_a_file_is_not_scheduled_unless_asked(energy_model, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="edge_runtime")
    wav = tmp_path / "a.wav"
    write_wav(wav, burst_audio(4.0, regular_bursts(4.0)), 16000)
    flags = ["--no-mqtt", "--model", str(energy_model), "--input", str(wav),
             "--schedule-timezone", "Europe/Berlin", "--schedule-windows", "21:00-22:00"]
    clock = FakeClock(berlin(2025, 6, 3, 20, 0), berlin(2025, 6, 4, 0, 0))
    assert run(config(*flags), clock=clock) == 0  # read at once, start to end
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(events) == 6 and events[0]["start"].startswith("2025-06-03T18:00:00")
    assert "not applied to a file or stdin input" in caplog.text
    # asked: the run waits for the window, and the file's times start when it opens
    clock = FakeClock(berlin(2025, 6, 3, 20, 0), berlin(2025, 6, 4, 0, 0))
    assert run(config(*flags, "--schedule-replay"), clock=clock) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(e["start"] for e in events)[0] == "2025-06-03T19:00:00.300Z"  # 21:00 CEST


# ------------------------------------------------------------------------- label lists
@pytest.fixture
def wav(tmp_path):
    path = tmp_path / "a.wav"
    write_wav(path, burst_audio(4.0, regular_bursts(4.0)), 16000)
    return path


def detect(capsys, energy_model, wav, *flags):
    code = main(["--no-mqtt", "--start-time", "2024-01-01T00:00:00Z", "--model",
                 str(energy_model), "--input", str(wav), *flags])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")], err


def test_a_denied_label_never_appears_in_the_output(energy_model, wav, tmp_path, capsys):
    code, events, _ = detect(capsys, energy_model, wav)
    assert code == 0 and sorted({e["label"] for e in events}) == ["loud", "very_loud"]
    health = tmp_path / "health.json"
    code, events, err = detect(capsys, energy_model, wav, "--labels-deny", "very_loud",
                               "--log-health-file", str(health), "--log-level", "info")
    assert code == 0 and len(events) == 4 and {e["label"] for e in events} == {"loud"}
    assert "suppressed ([labels]): very_loud" in err
    stats = json.loads(health.read_text())["labels"]
    assert stats["suppressed"] == ["very_loud"] and stats["suppressed_detections"] == 2
    validate_stats("labels", stats)
    code, events, _ = detect(capsys, energy_model, wav, "--labels-allow", "very_loud")
    assert code == 0 and len(events) == 2 and {e["label"] for e in events} == {"very_loud"}


def test_denied_labels_get_no_clip(energy_model, wav, tmp_path, capsys):
    clips = tmp_path / "clips"
    code, events, _ = detect(capsys, energy_model, wav, "--labels-allow", "loud",
                             "--clips-dir", str(clips))
    assert code == 0 and len(events) == 4
    assert sorted(p.stem.split("_")[-1] for p in clips.glob("*.wav")) == \
        sorted(e["event_id"] for e in events)


@pytest.mark.parametrize("flags, message", [
    (["--labels-deny", "lowd"], "labels.deny: 'lowd' is not a label of the model "
                                "(did you mean 'loud'?)"),
    (["--labels-allow", "loud", "--labels-deny", "loud"], "'loud' is in both"),
])
def test_unknown_labels_are_a_one_line_error_at_start(energy_model, wav, capsys, flags, message):
    code, events, err = detect(capsys, energy_model, wav, *flags)
    assert code == 2 and message in err and not events
    assert err.count("\n") == 1 and "Traceback" not in err


def test_check_reports_schedule_and_label_lists(energy_model, wav, capsys):
    assert main(["--check", "--no-mqtt", "--model", str(energy_model), "--input", str(wav),
                 "--labels-deny", "very_loud", "--schedule-timezone", "UTC",
                 "--schedule-windows", "00:00-00:01"]) == 0
    out = capsys.readouterr().out
    assert "[ok] label lists: reported: loud; suppressed by [labels]: very_loud" in out
    assert "[ok] schedule: 00:00-00:01 (UTC): " in out and "today 00:00-00:01" in out
    assert "not applied to a file or stdin input" in out
    assert main(["--check", "--no-mqtt", "--model", str(energy_model), "--input", str(wav),
                 "--labels-allow", "quiet"]) == 1
    assert "[FAIL] label lists: command line: labels.allow: 'quiet' is not a label" in \
        capsys.readouterr().out


# ------------------------------------------------------------------------- the watchdog asleep
def test_the_watchdog_is_ready_and_fed_while_asleep_and_gives_a_woken_source_time(tmp_path):
    from test_watchdog import FakeClock as Monotonic
    from test_watchdog import NotifySocket, make

    notify = NotifySocket(f"@meerkit-notify-{uuid.uuid4().hex[:12]}")  # abstract: no file
    try:
        clock = Monotonic()
        wd = make(notify, clock, stall_s=10.0)  # live source, WatchdogSec = 10 s
        wd.sleep("sleeping until 21:00")  # started outside a window
        assert notify.messages()[0].splitlines() == ["READY=1", "STATUS=sleeping until 21:00"]
        fed = 0
        for _ in range(200):  # 1000 s without audio: asleep, so no stall, and fed on time
            clock.advance(5)
            assert wd.check() is None
            fed += notify.messages().count("WATCHDOG=1")  # drained: a full socket blocks
        assert fed == 200 and wd.status == "sleeping"
        wd.wake()  # the window opens: the new input gets stall_s to deliver
        clock.advance(9)
        assert wd.check() is None and wd.status == "ok"
        clock.advance(1)
        assert wd.check().kind == "no_audio"  # then silence is a stall again
    finally:
        notify.close()
