"""Runtime configuration: one dataclass per TOML section, every option also a CLI flag.

Precedence: built-in defaults < TOML file (`--config`) < command-line flags. A flag is
`--<section>-<key>` with `_` written as `-` (`--mqtt-host`, `--model-threads`); a few common
ones also have short aliases (`--input`, `--model`, `--threads`, `--realtime`, `--mic-device`).
Unknown sections or keys are errors with a "did you mean" suggestion and the line they are on:
a typo must never silently fall back to a default on a device nobody watches.

Secrets never live in the config: the MQTT password comes from `mqtt.password_file` or the
environment variable named by `mqtt.password_env`. Paths may use `$VARS` (e.g.
`$STATE_DIRECTORY`, `$CREDENTIALS_DIRECTORY` under systemd).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import math
import os
import re
import socket
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_runtime.contract.errors import UserError, location

STDIN_FORMATS = ("s16le", "s32le", "f32le")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class DeviceConfig:
    id: str = ""  # MQTT topic + event ids; "" = this machine's hostname
    site: str = ""  # free text copied into every detection
    lat: float | None = None
    lon: float | None = None


@dataclass
class AudioConfig:
    input: str = "mic"  # "mic", a WAV file, or "-" for raw PCM on stdin (see [stdin])
    mic_device: str = ""  # input device index or name substring; "" = system default
    mic_rate: int = 0  # capture rate in Hz; 0 = the model's rate if supported, else the device's
    mic_channels: int = 1
    channel: str = "mix"  # "mix" (average all channels) or a 0-based channel index to keep
    realtime: bool = False  # files: pace reading to real time (as a microphone would deliver)
    start_time: str = "now"  # time of the first sample: "now", "filename" (AudioMoth) or ISO 8601
    block_s: float = 0.1  # capture block length
    buffer_s: float = 30.0  # ring buffer between capture and inference; overruns are counted
    resampler: str = "auto"  # auto (soxr if installed) | soxr | numpy


@dataclass
class StdinConfig:
    format: str = "s16le"  # s16le | s32le | f32le, interleaved
    rate: int = 16000
    channels: int = 1


@dataclass
class ModelConfig:
    path: str = ""  # .tflite with an embedded (or sidecar) model card
    threads: int = 1
    hop_s: float = 0.0  # window hop; 0 = the card's. Smaller = lower latency, more CPU
    thresholds: dict[str, float] = field(default_factory=dict)  # per label, overrides the card
    # Unset = the card's per-label values (cards without them: 0.1, 0, 0); set = every label.
    hysteresis: float | None = None
    min_duration_s: float | None = None
    merge_gap_s: float | None = None
    max_duration_s: float = 30.0  # long sounds are published in chunks, never held back forever
    emit_undetectable: bool = False  # also emit the labels the card marks undetectable


@dataclass
class MqttConfig:
    enabled: bool = True  # false: print detections as JSON lines on stdout instead
    host: str = "localhost"
    port: int = 0  # 0 = 1883, or 8883 with TLS
    topic_prefix: str = "meerkit"
    client_id: str = ""  # "" = edge-runtime-<device id>
    username: str = ""
    password_file: str = ""
    password_env: str = "MEERKIT_MQTT_PASSWORD"
    tls: bool = False
    ca_file: str = ""  # "" = the system CA store
    cert_file: str = ""  # client certificate (mutual TLS)
    key_file: str = ""
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    stats_interval_s: float = 60.0
    max_inflight: int = 20  # detections handed to the MQTT client at once; the rest wait on disk


@dataclass
class OutboxConfig:
    path: str = "outbox.sqlite"
    max_mb: float = 50.0  # disk budget; when full, new detections are refused LOUDLY (see outbox.py)
    drain_timeout_s: float = 10.0  # on exit, wait this long for unsent detections to be acknowledged


@dataclass
class ClipsConfig:
    dir: str = ""  # "" = no clips; else a WAV per detection is written here
    pre_s: float = 1.0
    post_s: float = 1.0
    max_files: int = 500  # oldest clips are deleted beyond either limit
    max_mb: float = 200.0


@dataclass
class LogConfig:
    level: str = "info"


@dataclass
class RuntimeConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    stdin: StdinConfig = field(default_factory=StdinConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "defaults"  # where the file part came from (for messages)

    @property
    def device_id(self) -> str:
        return self.device.id or socket.gethostname()


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(RuntimeConfig)  # type: ignore[misc]
                             if f.default_factory is not MISSING}
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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flag_name(section: str, key: str) -> str:
    return f"--{section}-{key}".replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option (dest `section__key`), default None = "not given"."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}]")
        hints = _hints(cls)
        for f in fields(cls):
            names = (flag_name(section, f.name), *ALIASES.get((section, f.name), ()))
            kind = hints[f.name]
            default = f.default if f.default is not MISSING else None
            dest = f"{section}__{f.name}"
            if kind is bool:
                group.add_argument(*names, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=None, help=f"(default {default})")
            elif typing.get_origin(kind) is dict:
                group.add_argument(*names, dest=dest, action="append", default=None,
                                   metavar="LABEL=VALUE", help="repeatable")
            else:
                group.add_argument(*names, dest=dest, default=None, metavar=f.name.upper(),
                                   help=f"(default {default!r})")


def flag_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config values given on the command line, as {section: {key: raw value}}."""
    out: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "__" not in dest or value is None:
            continue
        section, key = dest.split("__", 1)
        if section not in SECTIONS:
            continue
        if isinstance(value, list):  # LABEL=VALUE pairs
            table = {}
            for item in value:
                label, sep, number = item.partition("=")
                if not sep:
                    raise UserError(f"{flag_name(section, key)} {item!r}: expected LABEL=VALUE")
                table[label.strip()] = number.strip()
            value = table
        out.setdefault(section, {})[key] = value
    return out


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


def _line_of(path: Path | None, section: str, key: str | None) -> int | None:
    """The 1-based line where `key` (or the section header) is, for error messages."""
    if path is None:
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    in_section = False
    for n, line in enumerate(lines, 1):
        header = re.match(r"\s*\[\s*([^\]]+?)\s*\]", line)
        if header:
            in_section = header.group(1).split(".")[0].strip('"') == section
            if key is None and in_section:
                return n
            continue
        if key is not None and in_section and re.match(rf'\s*"?{re.escape(key)}"?\s*=', line):
            return n
    return None


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, kind: Any, where: str, from_cli: bool = False) -> Any:
    """A TOML value (or a CLI string) as the option's type, or a UserError saying why not."""
    cli_str = from_cli and isinstance(value, str)
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)][0]
        if value is None or (cli_str and value.lower() in ("", "none")):
            return None
        return _coerce(value, inner, where, from_cli)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if cli_str and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where} must be true or false, got {value!r}")
    if kind in (int, float) and isinstance(value, str) and not from_cli:
        raise UserError(f"{where} must be a number, not the string {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise UserError(f"{where} must be an integer, got {value!r}")
        try:
            return int(value) if cli_str else _int_exact(value)
        except (TypeError, ValueError):
            raise UserError(f"{where} must be an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool):
            raise UserError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{where} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return number
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}")
        return value
    if typing.get_origin(kind) is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a table of label = value, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}", from_cli) for k, v in value.items()}
    raise TypeError(f"unsupported option type {kind}")  # pragma: no cover - programming error


def _int_exact(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _apply(cfg: RuntimeConfig, data: dict[str, Any], origin: str, path: Path | None) -> None:
    for section, table in data.items():
        if section not in SECTIONS:
            row = _line_of(path, section, None)
            raise UserError(f"{location(origin, row)}: unknown section [{section}]"
                            f"{suggest(section, SECTIONS)}; sections are {', '.join(SECTIONS)}")
        if not isinstance(table, dict):
            raise UserError(f"{origin}: '{section}' must be a [section] table")
        target = getattr(cfg, section)
        hints = _hints(type(target))
        for key, value in table.items():
            if key not in hints:
                row = _line_of(path, section, key)
                raise UserError(f"{location(origin, row)}: unknown key '{key}' in [{section}]"
                                f"{suggest(key, hints)}")
            where = f"{location(origin, _line_of(path, section, key))}: {section}.{key}"
            setattr(target, key, _coerce(value, hints[key], where))


def validate(cfg: RuntimeConfig) -> None:
    """Range checks that need no model or network (those are `--check`'s job)."""
    problems = []
    a, m, q, o, c = cfg.audio, cfg.model, cfg.mqtt, cfg.outbox, cfg.clips
    if cfg.stdin.format not in STDIN_FORMATS:
        problems.append(f"stdin.format {cfg.stdin.format!r} is not one of {', '.join(STDIN_FORMATS)}")
    if cfg.stdin.rate <= 0 or cfg.stdin.channels <= 0:
        problems.append("stdin.rate and stdin.channels must be > 0")
    if a.channel != "mix" and not a.channel.isdigit():
        problems.append(f"audio.channel must be 'mix' or a channel index, got {a.channel!r}")
    if a.resampler not in ("auto", "soxr", "numpy"):
        problems.append(f"audio.resampler must be auto, soxr or numpy, got {a.resampler!r}")
    if not 0.005 <= a.block_s <= 5.0:
        problems.append(f"audio.block_s must be within [0.005, 5] s, got {a.block_s}")
    if a.buffer_s < 2 * a.block_s:
        problems.append(f"audio.buffer_s ({a.buffer_s}) must hold at least two blocks")
    if a.mic_rate < 0 or a.mic_channels < 1:
        problems.append("audio.mic_rate must be >= 0 and audio.mic_channels >= 1")
    if m.threads < 1:
        problems.append(f"model.threads must be >= 1, got {m.threads}")
    if m.hop_s < 0 or m.max_duration_s <= 0:
        problems.append("model.hop_s must be >= 0 and model.max_duration_s > 0")
    for label, value in m.thresholds.items():
        if not 0.0 <= value <= 1.0:
            problems.append(f"model.thresholds.{label} must be in [0, 1], got {value}")
    for key in ("hysteresis", "min_duration_s", "merge_gap_s"):
        if getattr(m, key) is not None and getattr(m, key) < 0:
            problems.append(f"model.{key} must be >= 0, got {getattr(m, key)}")
    if not 0 <= q.port < 65536:
        problems.append(f"mqtt.port {q.port} is not a TCP port")
    if not q.topic_prefix or any(ch in q.topic_prefix for ch in "#+"):
        problems.append(f"mqtt.topic_prefix {q.topic_prefix!r} must be non-empty without # or +")
    if any(ch in cfg.device_id for ch in "#+/"):
        problems.append(f"device.id {cfg.device_id!r} must not contain '/', '#' or '+'")
    if not 0 < q.reconnect_min_s <= q.reconnect_max_s:
        problems.append("need 0 < mqtt.reconnect_min_s <= mqtt.reconnect_max_s")
    if q.keepalive_s < 5 or q.stats_interval_s <= 0 or q.max_inflight < 1:
        problems.append("mqtt.keepalive_s must be >= 5, stats_interval_s > 0, max_inflight >= 1")
    if bool(q.cert_file) != bool(q.key_file):
        problems.append("mqtt.cert_file and mqtt.key_file go together")
    if o.max_mb <= 0 or o.drain_timeout_s < 0:
        problems.append("outbox.max_mb must be > 0 and outbox.drain_timeout_s >= 0")
    if c.pre_s < 0 or c.post_s < 0 or c.max_files < 1 or c.max_mb <= 0:
        problems.append("clips: pre_s/post_s must be >= 0, max_files >= 1, max_mb > 0")
    if cfg.log.level not in LOG_LEVELS:
        problems.append(f"log.level must be one of {', '.join(LOG_LEVELS)}")
    for lat_lon, limit in ((cfg.device.lat, 90), (cfg.device.lon, 180)):
        if lat_lon is not None and not -limit <= lat_lon <= limit:
            problems.append(f"device lat/lon {lat_lon} out of range")
    if (cfg.device.lat is None) != (cfg.device.lon is None):
        problems.append("device.lat and device.lon go together")
    if problems:
        raise UserError(f"{cfg.source}: " + "; ".join(problems))


def load_config(path: str | Path | None = None,
                overrides: dict[str, dict[str, Any]] | None = None) -> RuntimeConfig:
    """Defaults, then the TOML file, then `overrides` (from `flag_overrides`); validated."""
    cfg = RuntimeConfig()
    if path is not None:
        path = Path(path)
        cfg.source = str(path)
        _apply(cfg, _read_toml(path), str(path), path)
    if overrides:
        for section, table in overrides.items():
            for key, value in table.items():
                hints = _hints(type(getattr(cfg, section)))
                where = f"{flag_name(section, key)}"
                setattr(getattr(cfg, section), key, _coerce(value, hints[key], where, True))
    _expand_paths(cfg)
    validate(cfg)
    return cfg


def _expand_paths(cfg: RuntimeConfig) -> None:
    for section, key in (("audio", "input"), ("model", "path"), ("mqtt", "password_file"),
                         ("mqtt", "ca_file"), ("mqtt", "cert_file"), ("mqtt", "key_file"),
                         ("outbox", "path"), ("clips", "dir")):
        target = getattr(cfg, section)
        value = getattr(target, key)
        if value and value not in ("-", "mic"):
            setattr(target, key, os.path.expanduser(os.path.expandvars(value)))


def read_password(cfg: MqttConfig) -> str | None:
    """The MQTT password from its file or environment variable (never from the config)."""
    if cfg.password_file:
        try:
            return Path(cfg.password_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as err:
            raise UserError(f"mqtt.password_file {cfg.password_file}: cannot read "
                            f"({err.strerror})") from None
    if cfg.password_env and cfg.password_env in os.environ:
        return os.environ[cfg.password_env]
    return None


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
                body = ", ".join(f'"{k}" = {v}' for k, v in value.items())
                lines.append(f"{f.name} = {{{body}}}")
            elif isinstance(value, bool):
                lines.append(f"{f.name} = {str(value).lower()}")
            elif isinstance(value, str):
                lines.append(f"{f.name} = {json.dumps(value)}")
            else:
                lines.append(f"{f.name} = {value}")
        lines.append("")
    return "\n".join(lines)
