"""Soak benchmark: an accelerated hour through the real `edge-runtime` with the broker
flapping and one SIGKILL, counting what a subscriber receives (issue 12, item 8).

    python benchmarks/soak.py                          # 60 min of audio at 10x: ~6.5 min wall
    python benchmarks/soak.py --audio-minutes 5 --speed 20 --out /tmp/soak
    python benchmarks/soak.py --model energy.tflite    # skip the tensorflow build (same model)

What runs, all real and on loopback: mosquitto (persistence on) started here; `edge-runtime`
as a subprocess reading s16le PCM on stdin with `--audio-stdin-pace block` (nothing dropped:
the benchmark, not the runtime, sets the pace), its outbox on disk; a paho subscriber with a
persistent QoS 1 session. The audio is synthetic (benchmarks/soak_plan.py): one call a second
at a random onset, 'loud' or 'very loud', so every expected event is known with its time, for
the energy model of tests/conftest.py (built here unless --model is given).

Time. The feeder writes the audio at `--speed` x real time and is the clock of the run: "down
5 s every 60 s" is AUDIO time. The benchmark compresses an hour in the field, so the broker's
schedule is compressed with it: the runtime goes through one outage per audio minute (60 in
the hour, as in the field) and, per outage, at least the detections of 5 s of audio queue in
the outbox. In fact more: paho's reconnect delay (mqtt.reconnect_min_s, 1 s and up) is wall
time and is not compressed, so at 10x each outage keeps ~10-20 s of audio's detections
waiting. Wall time for the period would give only ~6 outages in a 6-minute run; wall time for
the outage would keep the broker down for 50 audio seconds of every 60.

The kill: in the outage nearest `--kill-at` of the audio, once the killed runtime has stored
every call before that point (checked from the subscriber and the outbox file: the broker is
down, so they wait in the outbox), `kill -9`; a new runtime starts on the same outbox (as
systemd's Restart= would), with its stream clock continuing at that point of the audio, and
the feed goes on from there. No call sits within 2 s before or 1 s after the kill point, so
the only way to lose one is for the outbox to lose it.

Reported (table, benchmarks/out/soak/soak.json, soak.png): events expected from the audio,
stored and acknowledged (the outbox's own record), delivered (every copy) and distinct at the
subscriber, lost (calls with no event), duplicates after de-duplication by event_id (a call
with two distinct events), conflicts (an event_id with two contents), unexpected events; the
RSS of each runtime process (VmRSS every second: start after 60 s of audio, end, max, slope,
flat within 5 MB); the outbox depth over time (read-only SQLite every 0.1 s) as a PNG.
"""

# ruff: noqa: E402  (the repository and tests/ go on sys.path before their imports)
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # `benchmarks`; the broker and model helpers

from benchmarks.soak_plan import (
    SAMPLE_RATE,
    Audio,
    Schedule,
    expected_events,
    iso_seconds,
    make_schedule,
    match_events,
    plan_bursts,
)
from benchmarks.soak_report import plot, print_table, summarize
from benchmarks.soak_watch import Sampler, Tally, outbox_acknowledged, outbox_depth, outbox_messages

DEVICE = "soak"
BLOCK_S = 0.5  # audio per write; outage and kill times are whole seconds, so on block edges
WARMUP_AUDIO_S = 60.0  # RSS "start": after this much audio into a process


class SoakError(RuntimeError):
    pass


def start_runtime(model: Path, outbox: Path, port: int, start_unix: int, log: Path
                  ) -> subprocess.Popen:
    """`edge-runtime` on PCM from our pipe; its stream clock starts at `start_unix`."""
    command = [sys.executable, "-m", "edge_runtime.cli", "--model", str(model), "--input", "-",
               "--audio-stdin-pace", "block", "--stdin-format", "s16le",
               "--stdin-rate", str(SAMPLE_RATE), "--stdin-channels", "1",
               "--audio-start-time", iso_seconds(start_unix), "--device-id", DEVICE,
               "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port),
               "--outbox-path", str(outbox), "--outbox-drain-timeout-s", "60",
               "--mqtt-stats-interval-s", "10", "--log-level", "info"]
    with open(log, "ab") as err:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=err, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def log_tail(path: Path, lines: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Soak:
    """One run: feed the audio, flap the broker, kill and restart the runtime once."""

    def __init__(self, schedule: Schedule, seed: int, model: Path, broker, tally: Tally,
                 work: Path, out: Path, speed: float):
        self.schedule, self.model, self.broker, self.tally = schedule, model, broker, tally
        self.out, self.speed = out, speed
        self.bursts = plan_bursts(schedule.duration_s, seed, [schedule.quiet])
        self.expected = expected_events(self.bursts)
        self.audio = Audio(self.bursts, seed)
        self.outbox = work / "outbox.sqlite"
        self.origin = int(time.time())  # Unix time of the first sample
        self.fed_s = 0.0
        self.sampler = Sampler(self.outbox, lambda: self.fed_s)
        self.processes: list[dict] = []
        self.kill: dict = {}
        self.proc: subprocess.Popen | None = None

    # ---------------------------------------------------------------- runtime processes
    def _start(self, at_s: int) -> None:
        number = len(self.processes) + 1
        log = self.out / f"runtime-{number}.log"
        log.unlink(missing_ok=True)
        self.proc = start_runtime(self.model, self.outbox, self.broker.port,
                                  self.origin + at_s, log)
        self.processes.append({"process": number, "pid": self.proc.pid, "from_audio_s": at_s,
                               "log": str(log)})
        self.sampler.process = (number, self.proc.pid)

    def _dead(self, where: str) -> SoakError:
        info = self.processes[-1]
        code = self.proc.wait()
        return SoakError(f"edge-runtime {info['process']} exited {code} {where}; "
                         f"{info['log']} ends:\n{log_tail(Path(info['log']))}")

    def _write(self, pcm: bytes) -> None:
        try:
            self.proc.stdin.write(pcm)
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._dead(f"at {self.fed_s:.1f} s of audio") from None

    def _kill_and_restart(self, at_s: int) -> None:
        """SIGKILL once everything before `at_s` is stored, then a new runtime, same outbox."""
        before = [e for e in self.expected if e.start_s < at_s]
        deadline = time.monotonic() + 60.0
        # Polled: SQLite has no change notification, and the broker is down, so the
        # subscriber has nothing new to wake us with.
        while True:
            seen = {m["event_id"]: m for m in self.tally.messages()}
            seen.update((m["event_id"], m) for m in outbox_messages(self.outbox))
            missing = match_events(before, seen.values(), self.origin).lost
            if not missing:
                break
            if self.proc.poll() is not None:
                raise self._dead("before the kill")
            if time.monotonic() > deadline:
                raise SoakError(f"edge-runtime 1 had not stored {len(missing)} call(s) before "
                                f"{at_s} s of audio after 60 s, e.g. {missing[:3]}")
            time.sleep(0.05)
        depth = outbox_depth(self.outbox)
        self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait()
        self.processes[-1]["exit"] = code
        self.proc.stdin.close()
        self.kill = {"audio_s": at_s, "outbox_depth_at_kill": depth,
                     "wall_s": round(time.monotonic() - self.t0, 1)}
        self._start(at_s)

    # ---------------------------------------------------------------- the run
    def run(self) -> None:
        s = self.schedule
        actions: dict[int, str] = {}
        for down, up in s.outages:
            actions[down * SAMPLE_RATE], actions[up * SAMPLE_RATE] = "down", "up"
        actions[s.kill_s * SAMPLE_RATE] = "kill"
        block, total = round(BLOCK_S * SAMPLE_RATE), round(s.duration_s * SAMPLE_RATE)
        self.t0 = time.monotonic()
        self.sampler.start()
        self._start(0)
        pace_wall, pace_at, pos = time.monotonic(), 0, 0
        try:
            while pos < total:
                action = actions.get(pos)
                if action == "down":
                    self.broker.stop()
                elif action == "up":
                    self.broker.start()
                elif action == "kill":
                    self._kill_and_restart(pos // SAMPLE_RATE)
                # The feeder IS the accelerated clock: this sleep sets the pace. Behind it (a
                # write blocked while a runtime started), it re-anchors rather than rush: a
                # catch-up burst would squeeze the outages that fall into it to nothing.
                now = time.monotonic()
                delay = pace_wall + (pos - pace_at) / SAMPLE_RATE / self.speed - now
                if delay > 0:
                    time.sleep(delay)
                elif delay < -BLOCK_S / self.speed:
                    pace_wall, pace_at = now, pos
                n = min(block, total - pos)
                self._write(self.audio.pcm(pos, n))
                pos += n
                self.fed_s = pos / SAMPLE_RATE
            self.proc.stdin.close()  # end of input: the runtime drains its outbox and exits
            try:
                code = self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                raise SoakError("edge-runtime did not exit within 120 s of the end of its "
                                "input") from None
            self.processes[-1]["exit"] = code
            if code != 0:
                raise self._dead("at the end of its input")
            self.feed_wall_s = time.monotonic() - self.t0
            acked = outbox_acknowledged(self.outbox)
            self.tally.wait_until(lambda t: t.distinct >= acked, 30.0)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.sampler.stop()
        self.wall_s = time.monotonic() - self.t0


def build_model(directory: Path) -> Path:
    from conftest import build_energy_tflite  # tensorflow: benchmark and test machines only

    return build_energy_tflite(directory / "energy.tflite")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audio-minutes", type=float, default=60.0,
                   help="length of the synthetic recording in minutes (default 60)")
    p.add_argument("--speed", type=float, default=10.0,
                   help="audio seconds fed per wall second (default 10: 60 min in ~6 min)")
    p.add_argument("--flap-every-s", type=int, default=60,
                   help="the broker goes down once per this many AUDIO seconds (default 60)")
    p.add_argument("--outage-s", type=int, default=5,
                   help="and stays down this many AUDIO seconds (default 5; >= 2)")
    p.add_argument("--kill-at", type=float, default=0.5,
                   help="SIGKILL the runtime in the outage nearest this fraction of the audio "
                        "(default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calls and the noise")
    p.add_argument("--model", type=Path,
                   help="carded .tflite (default: the energy test model, built with "
                        "tensorflow; the calls are made for it)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "soak",
                   help="folder for soak.json, soak.png and the logs "
                        "(default benchmarks/out/soak)")
    args = p.parse_args(argv)
    if args.speed <= 0 or args.audio_minutes <= 0:
        p.error("--speed and --audio-minutes must be > 0")
    if not 0 <= args.kill_at <= 1:
        p.error("--kill-at is a fraction of the audio, 0..1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from conftest import MOSQUITTO, Mosquitto

    if MOSQUITTO is None:
        raise SystemExit("soak: mosquitto is not installed (apt install mosquitto)")
    try:
        schedule = make_schedule(60.0 * args.audio_minutes, args.flap_every_s, args.outage_s,
                                 args.kill_at)
    except ValueError as err:
        raise SystemExit(f"soak: {err}") from None
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        model = args.model or build_model(work)
        broker = Mosquitto(work / "broker").start()
        tally = Tally(broker.port, f"meerkit/{DEVICE}/detections")
        soak = Soak(schedule, args.seed, model, broker, tally, work, args.out, args.speed)
        try:
            soak.run()
        except SoakError as err:
            print(f"soak: {err}", file=sys.stderr)
            return 1
        finally:
            tally.close()
            broker.stop()
            shutil.copy(broker.dir / "mosquitto.log", args.out / "mosquitto.log")
        from benchmarks import invocation

        report = {"command": invocation(),
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                              "python": platform.python_version(),
                              "load_average": os.getloadavg()},
                  "model": str(args.model or "tests/conftest.py energy model"),
                  **summarize(soak, WARMUP_AUDIO_S)}
        report["png"] = str(plot(soak, args.out / "soak.png"))
    path = args.out / "soak.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print_table(report)
    print(f"\nwrote {path} and {report['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
