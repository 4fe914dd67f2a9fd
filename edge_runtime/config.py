"""Runtime configuration: one dataclass per TOML section, every option also a CLI flag.

Precedence: built-in defaults < TOML file (`--config`) < command-line flags. A flag is
`--<section>-<key>` with `_` written as `-` (`--mqtt-host`, `--model-threads`); a few common
ones also have short aliases (`--input`, `--model`, `--threads`, `--realtime`, `--mic-device`).
Each field declares its help, range and choices (`edge_runtime.contract.settings`): the flags'
help and the one-line errors come from there. Unknown sections or keys are errors with a "did
you mean" suggestion and the line they are on: a typo must never silently fall back to a
default on a device nobody watches.

Secrets never live in the config: the MQTT password comes from `mqtt.password_file` or the
environment variable named by `mqtt.password_env`. Paths may use `$VARS` (e.g.
`$STATE_DIRECTORY`, `$CREDENTIALS_DIRECTORY` under systemd); one left unexpanded (unset) is
an error, never a directory named `${STATE_DIRECTORY}`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_runtime.contract.errors import UserError
from edge_runtime.contract.settings import (
    add_flags,
    flag_name,
    flag_values,
    from_mapping,
    settable,
    setting,
    suggest,
)
from edge_runtime.mqtt_client import MqttConfig, read_password  # the [mqtt] section lives there
from edge_runtime.schedule import POLAR_RULES, Schedule

__all__ = ["RuntimeConfig", "add_config_flags", "describe", "flag_name", "flag_overrides",
           "load_config", "make_schedule", "read_password", "suggest", "validate"]

STDIN_FORMATS = ("s16le", "s32le", "f32le")
LOG_LEVELS = ("debug", "info", "warning", "error")
RESAMPLERS = ("auto", "soxr", "numpy")
STDIN_PACES = ("auto", "block", "realtime")
MAX_THREADS = 64  # more interpreter threads than any recorder has cores is a typo


@dataclass
class DeviceConfig:
    id: str = setting("", help="device id in MQTT topics and event ids; \"\" = this machine's "
                               "hostname")
    site: str = setting("", help="free text copied into every detection")
    lat: float | None = setting(None, help="latitude in degrees (with lon)", min=-90, max=90)
    lon: float | None = setting(None, help="longitude in degrees (with lat)", min=-180, max=180)


@dataclass
class AudioConfig:
    input: str = setting("mic", help="\"mic\", an audio file (WAV; FLAC, OGG, ... with "
                                     "soundfile), or \"-\" for raw PCM on stdin "
                                     "(see [stdin])")
    mic_device: str = setting("", help="input device index or name substring; \"\" = the "
                                       "system default")
    mic_rate: int = setting(0, help="capture rate; 0 = the model's rate if the device supports "
                                    "it, else the device's", min=0, max=768000, unit="Hz")
    mic_channels: int = setting(1, help="channels to capture", min=1, max=64)
    channel: str = setting("mix", help="\"mix\" (average all channels) or a 0-based channel "
                                       "index to keep")
    realtime: bool = setting(False, help="files: pace reading to real time, as a microphone "
                                         "would deliver")
    start_time: str = setting("now", help="time of the first sample: \"now\", \"filename\" "
                                          "(AudioMoth) or ISO 8601")
    block_s: float = setting(0.1, help="capture block length", min=0.005, max=5.0, unit="s")
    buffer_s: float = setting(30.0, help="ring buffer between capture and inference (at least "
                                         "two blocks); overruns are counted", gt=0, unit="s")
    resampler: str = setting("auto", help="sample-rate converter: auto and soxr are the same "
                                          "(soxr); numpy is deprecated and means soxr",
                             choices=RESAMPLERS)
    # "auto" = block when stdin is a file or a pipe, realtime when it is a socket or
    # character device. Live pipes (`arecord |`): realtime.
    stdin_pace: str = setting("auto", help="stdin (\"-\"): \"block\" waits for inference and "
                                           "loses nothing; \"realtime\" never holds the writer "
                                           "back and drops (and counts) what inference cannot "
                                           "take; \"auto\" picks by the kind of stdin",
                              choices=STDIN_PACES)
    stall_s: float = setting(10.0, help="no live audio or no inference progress for this long "
                                        "= stalled: exit 3", gt=0, unit="s")


@dataclass
class StdinConfig:
    format: str = setting("s16le", help="sample format of raw PCM on stdin, interleaved",
                          choices=STDIN_FORMATS)
    rate: int = setting(16000, help="sample rate of raw PCM on stdin", min=1, max=768000,
                        unit="Hz")
    channels: int = setting(1, help="channels of raw PCM on stdin", min=1, max=64)


@dataclass
class ModelConfig:
    path: str = setting("", help=".tflite model with an embedded (or sidecar) model card")
    threads: int = setting(1, help="TFLite interpreter threads", min=1, max=MAX_THREADS)
    hop_s: float = setting(0.0, help="window hop; 0 = the card's. Smaller = lower latency, more "
                                     "CPU", min=0, unit="s")
    lookahead_s: float | None = setting(
        None, help="right context a frame gets before it is final: events are published about "
                   "hop + this after they end; unset = centred, (window - hop) / 2", min=0,
        unit="s")
    thresholds: dict[str, float] = setting(
        help="per-label detection threshold, overrides the card's (LABEL=VALUE)",
        default_factory=dict, min=0, max=1)
    # Unset = the card's per-label values (cards without them: 0.1, 0, 0); set = every label.
    hysteresis: float | None = setting(None, help="stay on while p >= threshold - hysteresis, "
                                                  "every label; unset = the card's", min=0, max=1)
    min_duration_s: float | None = setting(None, help="drop events shorter than this, every "
                                                      "label; unset = the card's", min=0, unit="s")
    merge_gap_s: float | None = setting(None, help="merge events closer than this, every label; "
                                                   "unset = the card's", min=0, unit="s")
    max_duration_s: float = setting(30.0, help="long sounds are published in chunks of this, "
                                               "never held back forever", gt=0, unit="s")
    emit_undetectable: bool = setting(False, help="also emit the labels the card marks "
                                                  "undetectable")


@dataclass
class OutboxConfig:
    path: str = setting("outbox.sqlite", help="SQLite file holding detections until the broker "
                                              "acknowledges them")
    max_mb: float = setting(50.0, help="disk budget; when full, new detections are refused "
                                       "LOUDLY (see outbox.py)", gt=0, unit="MB")
    drain_timeout_s: float = setting(10.0, help="on exit, wait this long for unsent detections "
                                                "to be acknowledged", min=0, unit="s")


@dataclass
class ClipsConfig:
    dir: str = setting("", help="write a WAV clip per detection here; \"\" = no clips")
    pre_s: float = setting(1.0, help="audio kept before each detection", min=0, unit="s")
    post_s: float = setting(1.0, help="audio kept after each detection", min=0, unit="s")
    max_files: int = setting(500, help="oldest clips are deleted beyond this many", min=1)
    max_mb: float = setting(200.0, help="oldest clips are deleted beyond this size", gt=0,
                            unit="MB")
    mqtt: bool = setting(False, help="also send each clip over MQTT on <prefix>/<device>/"
                                     "clips/<event_id> (after every detection, via the outbox)")
    max_clip_kb: float = setting(256.0, help="clips larger than this are not sent over MQTT "
                                             "(counted as dropped)", gt=0, unit="kB")
    max_kbps: float = setting(64.0, help="mean rate of clips over MQTT; 0 = unlimited",
                              min=0, unit="kbit/s")


@dataclass
class ScheduleConfig:
    # Parsed and checked by edge_runtime.schedule (window syntax, zone, astral for sun windows).
    timezone: str = setting("", help="the site's IANA zone (Europe/Berlin, UTC): windows are "
                                     "local wall-clock times; required with windows")
    windows: tuple[str, ...] = setting(help="when to record: \"21:00-05:00\", "
                                      "\"sunrise-30m..sunrise+2h\" (sun windows use "
                                      "device.lat/lon); [] = always", default_factory=tuple)
    polar: str = setting("skip", help="a day without the sun event a window needs: skip that "
                                      "window, or record all day", choices=POLAR_RULES)
    replay: bool = setting(False, help="also schedule a file or stdin input (normally read "
                                       "start to end): read only inside windows, on from where "
                                       "the last window stopped")


@dataclass
class LabelsConfig:
    # Checked against the model card's labels at start-up (edge_runtime.label_filter).
    allow: tuple[str, ...] = setting(help="report only these labels (a comma list on the "
                                          "command line); [] = every label",
                                     default_factory=tuple)
    deny: tuple[str, ...] = setting(help="never report these labels", default_factory=tuple)


@dataclass
class LogConfig:
    level: str = setting("info", help="log level", choices=LOG_LEVELS)
    health_file: str = setting("", help="JSON health for fleet tools (edge_runtime/watchdog.py); "
                                        "\"\" = $STATE_DIRECTORY/health.json under systemd, "
                                        "none elsewhere")


@dataclass
class RuntimeConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    stdin: StdinConfig = field(default_factory=StdinConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # where the file part came from (for messages); not a setting
    source: str = field(default="defaults", init=False)

    @property
    def device_id(self) -> str:
        return self.device.id or socket.gethostname()


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in settable(RuntimeConfig)}  # type: ignore[misc]
ALIASES: dict[tuple[str, str], tuple[str, ...]] = {
    ("audio", "input"): ("--input", "-i"),
    ("model", "path"): ("--model", "-m"),
    ("model", "threads"): ("--threads",),
    ("audio", "realtime"): ("--realtime",),
    ("audio", "mic_device"): ("--mic-device",),
    ("audio", "start_time"): ("--start-time",),
    ("mqtt", "enabled"): ("--mqtt",),
    ("model", "emit_undetectable"): ("--emit-undetectable",),
}
# Keys holding paths: `$VARS` and `~` are expanded ("-" and "mic" are not paths).
PATH_KEYS = (("audio", "input"), ("model", "path"), ("mqtt", "password_file"),
             ("mqtt", "ca_file"), ("mqtt", "cert_file"), ("mqtt", "key_file"),
             ("outbox", "path"), ("clips", "dir"), ("log", "health_file"))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option (dest `section__key`, default None = "not given"), help from the
    field's declaration."""
    add_flags(parser, SECTIONS, ALIASES)


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config values given on the command line, as {section: {key: raw value}}."""
    return flag_values(args, SECTIONS)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        toml = importlib.import_module("tomllib")
    except ImportError:  # Python 3.10
        try:
            toml = importlib.import_module("tomli")
        except ImportError:
            raise UserError(f"{path}: reading TOML on Python < 3.11 needs `pip install tomli`"
                            ) from None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read config ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: config is not UTF-8 text") from None
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as err:
        raise UserError(f"{path}: invalid TOML ({err})") from None


def validate(cfg: RuntimeConfig) -> None:
    """What the fields' ranges cannot say: values that depend on each other, and formats.
    Needs no model or network (those are `--check`'s job)."""
    problems = []
    a, q = cfg.audio, cfg.mqtt
    if a.channel != "mix" and not a.channel.isdigit():
        problems.append(f"audio.channel must be 'mix' or a channel index, got {a.channel!r}")
    if a.buffer_s < 2 * a.block_s:
        problems.append(f"audio.buffer_s ({a.buffer_s}) must hold at least two blocks")
    if q.enabled and not q.host.strip():
        problems.append("mqtt.host is empty (set the broker, or mqtt.enabled = false to print "
                        "detections instead)")
    if not q.topic_prefix or any(ch in q.topic_prefix for ch in "#+"):
        problems.append(f"mqtt.topic_prefix {q.topic_prefix!r} must be non-empty without # or +")
    if any(ch in cfg.device_id for ch in "#+/"):
        problems.append(f"device.id {cfg.device_id!r} must not contain '/', '#' or '+'")
    if q.reconnect_min_s > q.reconnect_max_s:
        problems.append("need mqtt.reconnect_min_s <= mqtt.reconnect_max_s")
    if bool(q.cert_file) != bool(q.key_file):
        problems.append("mqtt.cert_file and mqtt.key_file go together")
    if (cfg.device.lat is None) != (cfg.device.lon is None):
        problems.append("device.lat and device.lon go together")
    try:
        make_schedule(cfg)
    except UserError as err:
        problems.append(str(err))
    if problems:
        raise UserError(f"{cfg.source}: " + "; ".join(problems))


def make_schedule(cfg: RuntimeConfig) -> Schedule:
    """The `[schedule]` section as a Schedule (sun windows at device.lat/lon); no windows =
    always recording."""
    s = cfg.schedule
    section: dict[str, Any] = {"windows": list(s.windows), "polar": s.polar}
    if s.timezone:
        section["timezone"] = s.timezone
    return Schedule.from_config(section, "schedule", lat=cfg.device.lat, lon=cfg.device.lon)


def load_config(path: str | Path | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> RuntimeConfig:
    """Defaults, then the TOML file, then `overrides` (from `flag_overrides`); validated."""
    cfg = RuntimeConfig()
    if path is not None:
        path = Path(path)
        cfg = from_mapping(RuntimeConfig, _read_toml(path), str(path), path)
    if overrides:
        cfg = from_mapping(RuntimeConfig, overrides, "", base=cfg, flags=True)
    cfg.source = str(path) if path is not None else "command line" if overrides else "defaults"
    _expand_paths(cfg)
    validate(cfg)
    return cfg


_UNEXPANDED = re.compile(r"\$(\{[A-Za-z_][A-Za-z0-9_]*\}|[A-Za-z_][A-Za-z0-9_]*)")


def _expand_paths(cfg: RuntimeConfig) -> None:
    """`$VARS` and `~` in paths; a variable left unset is an error naming it (else the outbox
    would land in a directory literally named `${STATE_DIRECTORY}`)."""
    for section, key in PATH_KEYS:
        target = getattr(cfg, section, None)
        value = getattr(target, key, None)
        if not value or value in ("-", "mic"):
            continue
        expanded = os.path.expanduser(os.path.expandvars(value))
        unset = _UNEXPANDED.search(expanded)
        if unset:
            name = unset.group(1).strip("{}")
            raise UserError(f"{cfg.source}: {section}.{key} = {value!r}: environment variable "
                            f"${name} is not set (systemd sets $STATE_DIRECTORY and "
                            f"$CREDENTIALS_DIRECTORY for the unit; set it, or give a path)")
        setattr(target, key, expanded)


def describe(cfg: RuntimeConfig) -> str:
    """The effective config as TOML (the password itself is never part of it)."""
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for f in fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if value is None:
                lines.append(f"# {f.name} unset")
            elif isinstance(value, dict):
                body = ", ".join(f"{json.dumps(k)} = {v}" for k, v in value.items())
                lines.append(f"{f.name} = {{{body}}}")
            elif isinstance(value, bool):
                lines.append(f"{f.name} = {str(value).lower()}")
            elif isinstance(value, str | list | tuple):
                lines.append(f"{f.name} = {json.dumps(value)}")
            else:
                lines.append(f"{f.name} = {value}")
        lines.append("")
    return "\n".join(lines)
