"""Unattended recorders: tell systemd we are alive only while audio flows and is processed,
name a stall instead of hanging, and leave a health file a fleet tool can read.

One `Watchdog` per run. Who calls what (counters are plain ints, one writer thread each):

    watchdog = Watchdog.from_env(live=source.live, stall_s=cfg.audio.stall_s,
                                 health_file=cfg.log.health_file, stats=stats,
                                 backlog=lambda: ring.fill)
    watchdog.audio_received(len(block))   # capture thread: every block the source delivers
    watchdog.audio_processed(n)           # inference thread: after each block is processed
    stall = watchdog.check()              # main loop (~10/s): None or a Stall -> stop, exit 3
    code = watchdog.finish(signalled=..., failed=...)   # at the end: the exit code

`check()` sends READY=1 at the first processed audio, then WATCHDOG=1 at half the
WATCHDOG_USEC interval but only when audio was processed since the last one (fed from
progress, never from a timer: a hung pipeline is killed by systemd even if the main loop
lives), STATUS= lines, and rewrites the health file every `health_interval_s`. It names a
stall when a live source delivers nothing for `stall_s` ("no_audio"), or when audio waits
and inference makes no progress for `stall_s` ("inference"). After a stall nothing more is
fed. A live source that ends (a microphone unplugged, arecord killed) is not a normal end:
`finish` returns EXIT_SOURCE_ENDED, and Restart=always starts the recorder again.

Exit codes (the CLI's 0/1/2 stay): EXIT_STALLED = 3, EXIT_SOURCE_ENDED = 4.

A recording schedule closes the input between windows: `sleep(status)` (READY=1 if not yet
sent, then WATCHDOG=1 on time and no stall while sleeping) and `wake()` (the reopened source
gets stall_s to begin) bracket those pauses; one Watchdog still serves the whole run.

The health file (JSON, replaced atomically; `log.health_file`, default
$STATE_DIRECTORY/health.json under systemd) holds `status` (starting, ok, sleeping, stalled,
ended, stopped, failed), `reason`, `last_audio_at`, `stalls` and `restarts` (carried over from the
previous file: a start in the same boot, by /proc boot_id, counts as a restart; a reboot does
not), what the previous run last wrote (`previous`), and every key of the `stats` callable
(the CLI passes its status statistics: audio_s, windows, detections, outbox depth,
connection problem, overruns, ...).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.contract.atomic import write_text_atomic
from edge_runtime.contract.errors import UserError
from edge_runtime.contract.times import iso_utc

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STALLED = 3  # a live source delivered no audio, or inference made no progress, for stall_s
EXIT_SOURCE_ENDED = 4  # a live source ended without being asked to stop

HEALTH_SCHEMA = 1
Clock = Callable[[], float]


# ------------------------------------------------------------------------- sd_notify
class SystemdNotifier:
    """sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET (a path, or an abstract
    socket written "@name"). Without the variable (not under systemd) every send is a no-op."""

    def __init__(self, address: str | None, watchdog_s: float | None = None):
        self.address = address or None
        self.watchdog_s = watchdog_s  # systemd's WatchdogSec; None = no watchdog
        self._warned = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> SystemdNotifier:
        watchdog_s = None
        pid = env.get("WATCHDOG_PID", "")
        if pid in ("", str(os.getpid())):  # the watchdog is ours, not a parent's
            try:
                usec = int(env.get("WATCHDOG_USEC", "0"))
            except ValueError:
                usec = 0
            watchdog_s = usec / 1e6 if usec > 0 else None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(lines).encode())
            return True
        except OSError as err:
            if not self._warned:  # systemd restarted, socket gone: say it once, keep running
                self._warned = True
                log.warning("cannot notify systemd at %s: %s", self.address, err)
            return False


# ------------------------------------------------------------------------- health file
def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def default_health_path(configured: str, env: Mapping[str, str] = os.environ) -> Path | None:
    """`log.health_file`, else $STATE_DIRECTORY/health.json (systemd's StateDirectory=; the
    first one if several), else None: no health file outside a service."""
    if configured:
        return Path(configured)
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "health.json" if state else None


def read_health(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable health file (%s); counting restarts from 0", path, err)
        return None
    return data if isinstance(data, dict) else None


def write_health(path: Path, data: dict[str, Any]) -> None:
    """Write-then-rename: a reader sees the old file or the new one, never half of one.
    No fsync: one small rewrite every few seconds should not wear an SD card."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def _count(health: dict[str, Any], key: str) -> int:
    value = health.get(key, 0)
    return value if isinstance(value, int) and value >= 0 else 0


# ------------------------------------------------------------------------- watchdog
@dataclass(frozen=True)
class Stall:
    kind: str  # "no_audio" | "inference"
    message: str

    def __str__(self) -> str:
        return self.message


class Watchdog:
    """See the module docstring. `clock` is monotonic seconds, `wall` Unix time; both are
    injected so tests step time instead of sleeping."""

    def __init__(self, notifier: SystemdNotifier, *, live: bool, stall_s: float = 10.0,
                 health_path: Path | None = None, stats: Callable[[], dict] | None = None,
                 backlog: Callable[[], int] | None = None, health_interval_s: float = 15.0,
                 clock: Clock = time.monotonic, wall: Clock = time.time, boot: str | None = None):
        if not stall_s > 0:
            raise UserError(f"audio.stall_s must be > 0, got {stall_s}")
        self.notifier, self.live, self.stall_s = notifier, live, stall_s
        self.health_path, self.stats_fn, self.backlog = health_path, stats, backlog
        self.health_interval_s = health_interval_s
        self.clock, self.wall = clock, wall
        self.boot = boot_id() if boot is None else boot
        self._received = 0  # written by the capture thread only
        self._processed = 0  # written by the inference thread only
        self._seen = (0, 0)  # (received, processed) at the last check
        now = clock()
        self.started_at = wall()
        self._last_audio = now  # the start counts as audio: a source gets stall_s to begin
        self._last_audio_wall: float | None = None
        self._last_progress = now
        self._received_at_progress = 0
        self._waiting_since: float | None = None  # audio waiting for inference since
        self._fed_processed = 0  # processed count at the last WATCHDOG=1
        self._last_feed = now
        self._next_health = now + health_interval_s
        self.ready_sent = False
        self.sleeping = False  # outside a recording window (see sleep/wake)
        self.stall: Stall | None = None
        self.status, self.reason = "starting", ""
        self.previous = read_health(health_path) if health_path else None
        prev = self.previous or {}
        same_boot = bool(self.boot) and prev.get("boot_id") == self.boot
        self.restarts = _count(prev, "restarts") + (1 if same_boot else 0)
        self.stalls = _count(prev, "stalls")
        self._health_warned = False
        if health_path is not None:  # at once: a bad path is a config mistake, and a run
            try:  # that dies before READY still counts as a start
                write_health(health_path, self._health(None))
            except OSError as err:
                raise UserError(f"log.health_file {health_path}: cannot write "
                                f"({err.strerror})") from None

    @classmethod
    def from_env(cls, *, live: bool, stall_s: float = 10.0, health_file: str = "",
                 env: Mapping[str, str] = os.environ, **kwargs: Any) -> Watchdog:
        return cls(SystemdNotifier.from_env(env), live=live, stall_s=stall_s,
                   health_path=default_health_path(health_file, env), **kwargs)

    # --- progress, from the pipeline threads
    def audio_received(self, frames: int) -> None:
        self._received += frames

    def audio_processed(self, samples: int) -> None:
        self._processed += samples

    # --- the main loop
    def ready(self, status: str = "listening") -> None:
        """READY=1 (once). `check` sends it by itself at the first processed audio."""
        if not self.ready_sent:
            self.ready_sent = True
            self.status = "ok"
            self.notifier.send("READY=1", f"STATUS={status}")
            self.write_health()

    def sleep(self, status: str) -> None:
        """No audio is expected until `wake` (outside a recording window the input is closed).
        READY=1 goes out now if it has not (systemd must not time out a start that waits for
        its first window); meanwhile `check` names no stall and feeds WATCHDOG=1 on time: the
        main loop calling it is all there is to be alive."""
        self.ready(status)
        self.sleeping = True
        self.status, self.reason = "sleeping", status
        self.notifier.send(f"STATUS=sleeping: {status}")
        self.write_health()

    def wake(self) -> None:
        """Audio is expected again: the reopened source gets stall_s to begin, as at the start."""
        now = self.clock()
        self.sleeping = False
        self._seen = (self._received, self._processed)
        self._last_audio = self._last_progress = now
        self._received_at_progress, self._waiting_since = self._received, None
        self.status, self.reason = "ok", ""

    def check(self) -> Stall | None:
        """Note progress, feed systemd's watchdog while there is some, name a stall."""
        if self.stall is not None:
            return self.stall  # sticky: a stalled run is never fed again
        now = self.clock()
        if self.sleeping:
            every = self.notifier.watchdog_s
            if every is not None and now - self._last_feed >= every / 2:
                self._last_feed = now
                self.notifier.send("WATCHDOG=1")
            if now >= self._next_health:
                self.write_health()
            return None
        received, processed = self._received, self._processed
        if received != self._seen[0]:
            self._last_audio, self._last_audio_wall = now, self.wall()
        progressed = processed != self._seen[1]
        if progressed:
            self._last_progress, self._received_at_progress = now, received
            if not self.ready_sent:
                self.ready()
        self._seen = (received, processed)
        stall = self._stalled(now, received, progressed)
        if stall is not None:
            self._on_stall(stall)
            return stall
        every = self.notifier.watchdog_s
        if (every is not None and processed != self._fed_processed
                and now - self._last_feed >= every / 2):
            self._fed_processed, self._last_feed = processed, now
            self.notifier.send("WATCHDOG=1")
        if now >= self._next_health:
            self.write_health()
        return None

    def _stalled(self, now: float, received: int, progressed: bool) -> Stall | None:
        quiet = now - self._last_audio
        if self.live and quiet >= self.stall_s:
            return Stall("no_audio", f"no audio from the live source for {quiet:.1f} s "
                                     f"(audio.stall_s = {self.stall_s:g})")
        # inference: audio has been waiting, with no progress, for stall_s (an idle file
        # source with nothing waiting is not stalled)
        waiting = (self.backlog() > 0 if self.backlog is not None
                   else received > self._received_at_progress)
        if progressed or not waiting:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = now
        if self._waiting_since is not None and now - self._waiting_since >= self.stall_s:
            return Stall("inference", f"inference made no progress for "
                                      f"{now - self._last_progress:.1f} s with audio waiting "
                                      f"(audio.stall_s = {self.stall_s:g})")
        return None

    def _on_stall(self, stall: Stall) -> None:
        self.stall = stall
        self.stalls += 1
        self.status, self.reason = "stalled", stall.message
        log.error("stalled: %s", stall.message)
        self.notifier.send(f"STATUS=stalled: {stall.message}")
        self.write_health()

    def finish(self, signalled: bool, failed: bool = False) -> int:
        """The exit code, after the last health write and STOPPING=1. `signalled`: a stop was
        asked for (SIGTERM/SIGINT); `failed`: the pipeline raised."""
        if self.stall is not None:
            code = EXIT_STALLED
        elif failed:
            code, self.status, self.reason = EXIT_FAILED, "failed", "the pipeline failed"
        elif self.live and not signalled:
            code, self.status = EXIT_SOURCE_ENDED, "ended"
            self.reason = "the live audio source ended (device gone or writer exited)"
            log.error("%s: exiting with %d so that systemd restarts the recorder", self.reason,
                      code)
        else:
            code, self.status, self.reason = EXIT_OK, "stopped", ""
        self.notifier.send("STOPPING=1", f"STATUS={self.status}"
                                         f"{': ' + self.reason if self.reason else ''}")
        self.write_health()
        return code

    # --- reporting
    def stats(self) -> dict[str, Any]:
        """Keys for the status/stats message."""
        return {"stalls": self.stalls, "restarts": self.restarts,
                "last_audio_age_s": round(self.clock() - self._last_audio, 1)}

    def write_health(self) -> None:
        """Rewrite the health file (and STATUS= while running) now."""
        self._next_health = self.clock() + self.health_interval_s
        extra = self.stats_fn() if self.stats_fn is not None else {}
        if self.status == "ok" and extra:
            self.notifier.send(f"STATUS=ok: {extra.get('audio_s', '?')} s of audio, "
                               f"{extra.get('detections', 0)} detection(s)")
        if self.health_path is None:
            return
        try:
            write_health(self.health_path, self._health(extra))
        except OSError as err:  # a full disk must not stop the recorder: say it once
            if not self._health_warned:
                self._health_warned = True
                log.warning("%s: cannot write the health file (%s)", self.health_path, err)

    def _health(self, extra: dict[str, Any] | None) -> dict[str, Any]:
        prev = self.previous or {}
        return {
            **(extra or {}), **self.stats(),
            "schema": HEALTH_SCHEMA, "status": self.status, "reason": self.reason,
            "pid": os.getpid(), "boot_id": self.boot, "updated_at": iso_utc(self.wall()),
            "started_at": iso_utc(self.started_at),
            "last_audio_at": (iso_utc(self._last_audio_wall)
                              if self._last_audio_wall is not None else None),
            "previous": ({k: prev.get(k) for k in ("status", "reason", "updated_at")}
                         if prev else None),
        }
