"""`edge-runtime`: the field-recorder entry point.

    edge-runtime --config firmware_configs/raspberry-pi-4.toml          # run (microphone)
    edge-runtime --model m.tflite --input rec.wav --mqtt-host broker    # replay a file
    arecord -f S16_LE -r 48000 -c 2 -t raw | edge-runtime --model m.tflite --input - \\
        --stdin-rate 48000 --stdin-channels 2 --audio-stdin-pace realtime  # live PCM on stdin
    edge-runtime --config my.toml --check                               # validate everything
    edge-runtime --list-devices

Exit codes: 0 done (end of file, or SIGTERM/SIGINT after a graceful drain), 1 runtime failure
or `--check` found problems, 2 a user mistake (config, model, input), printed without a
traceback, 3 stalled (a live source delivered no audio, or inference made no progress, for
audio.stall_s), 4 a live source (microphone, realtime stdin) ended by itself. 3 and 4 exist so
that systemd's Restart= brings an unattended recorder back (see edge_runtime/watchdog.py).
"""

# ruff: noqa: E402  (the BLAS setting below must precede every numpy import)
from __future__ import annotations

import os

# numpy's BLAS must not run its own thread pool on a recorder: its threads fight capture and
# the interpreter for 2-4 cores. Measured on a loaded 2-core machine: the log-mel front end
# took 36 ms per window with OpenBLAS threads and 1 ms without. An explicit value wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import glob
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_runtime import __version__
from edge_runtime.audio import (
    Conformer,
    MicSource,
    Source,
    StdinSource,
    input_devices,
    list_devices,
    open_file_source,
    parse_start_time,
    select_device,
)
from edge_runtime.config import (
    RuntimeConfig,
    add_config_flags,
    describe,
    flag_overrides,
    load_config,
    make_schedule,
    read_password,
)
from edge_runtime.contract.errors import UserError, quiet_broken_pipe
from edge_runtime.contract.events import DecoderConfig
from edge_runtime.contract.model import TFLiteModel, model_geometry
from edge_runtime.detect import decoder_settings
from edge_runtime.label_filter import LabelFilter
from edge_runtime.message import message_builder
from edge_runtime.recording import Clock, Recorder, SystemClock
from edge_runtime.schedule import Schedule, run_scheduled
from edge_runtime.sinks import FanOut, Sink
from edge_runtime.watchdog import Watchdog

log = logging.getLogger("edge_runtime")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-runtime",
        description="Stream audio, detect bioacoustic events with a TFLite model, publish them "
                    "over MQTT with a durable outbox.",
        epilog="Every option of the TOML config is also a flag: --<section>-<key> "
               "(flags override the file).",
    )
    parser.add_argument("--version", action="version", version=f"edge-runtime {__version__}")
    parser.add_argument("-c", "--config", metavar="TOML", help="config file (see firmware_configs/)")
    parser.add_argument("--check", action="store_true",
                        help="validate config, model (runs one window), audio input, outbox and "
                             "broker; print what was found; exit 1 on problems")
    parser.add_argument("--list-devices", action="store_true", help="list audio input devices")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config (file + flags) as TOML and exit")
    add_config_flags(parser)
    return parser


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    if level != "debug":
        logging.getLogger("paho").setLevel(logging.WARNING)


# ------------------------------------------------------------------------- building blocks
def load_model(cfg: RuntimeConfig) -> TFLiteModel:
    if not cfg.model.path:
        raise UserError("model.path is not set (--model FILE.tflite or [model] path = ...)")
    return TFLiteModel(cfg.model.path, cfg.model.threads)


def decoder_config(cfg: RuntimeConfig, model: TFLiteModel) -> DecoderConfig:
    """The card's per-label decoder settings, overridden by [model]; the labels the card
    marks undetectable are off unless model.emit_undetectable."""
    m = cfg.model
    return decoder_settings(model.card, thresholds=m.thresholds, hysteresis=m.hysteresis,
                            min_duration_s=m.min_duration_s, merge_gap_s=m.merge_gap_s,
                            max_duration_s=m.max_duration_s,
                            emit_undetectable=m.emit_undetectable)


def suppressed_text(cfg: RuntimeConfig, model: TFLiteModel) -> str:
    """Which labels are not emitted and why ("" when none)."""
    off = model.card.suppressed(cfg.model.emit_undetectable)
    return "; ".join(f"{u.label} ({u.reason})" for u in off)


def make_source(cfg: RuntimeConfig, model_rate: int) -> Source:
    a = cfg.audio
    if a.input == "mic":
        return MicSource(a.mic_device, a.mic_rate, a.mic_channels, model_rate, a.block_s)
    if a.input == "-":
        return StdinSource(cfg.stdin.format, cfg.stdin.rate, cfg.stdin.channels, a.block_s,
                           pace=a.stdin_pace)
    return open_file_source(a.input, a.block_s, a.realtime)


def cpu_temperature() -> float | None:
    """CPU temperature in deg C from /sys/class/thermal (None where there is none)."""
    zones = sorted(glob.glob("/sys/class/thermal/thermal_zone*"))
    preferred = []
    for zone in zones:
        try:
            kind = Path(zone, "type").read_text().strip().lower()
        except OSError:
            continue
        preferred.append((0 if any(k in kind for k in ("cpu", "soc", "x86_pkg")) else 1, zone))
    for _, zone in sorted(preferred):
        try:
            return round(int(Path(zone, "temp").read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            continue
    return None


def make_sinks(cfg: RuntimeConfig, model: TFLiteModel,
               keep: Callable[[str], bool] | None = None) -> FanOut:
    """The outputs `cfg` asks for: MQTT (or stdout), then clips; `keep`: the labels this
    site reports (None: every label)."""
    d = cfg.device
    recorder = None
    if cfg.clips.dir:  # first: a clips.dir that cannot be created is a user error before connecting
        from edge_runtime.sinks.clips import clip_recorder

        recorder = clip_recorder(cfg, model.card.sample_rate)
    # with clips, detection schema 2: each message names its clip (edge_runtime/message.py)
    to_message = message_builder(model.card, cfg.device_id, d.site, d.lat, d.lon,
                                 clip=recorder.reference if recorder else None)
    sinks: list[Sink] = [recorder] if recorder else []
    if cfg.mqtt.enabled:
        from edge_runtime.sinks.mqtt import open_mqtt_sink

        mqtt_sink = open_mqtt_sink(cfg, to_message)
        sinks.insert(0, mqtt_sink)
        if recorder and cfg.clips.mqtt:
            recorder.on_written = mqtt_sink.send_clip
    else:
        from edge_runtime.sinks.print import PrintSink

        sinks.insert(0, PrintSink(to_message))
    return FanOut(sinks, keep)


# ------------------------------------------------------------------------- run
def label_filter(cfg: RuntimeConfig, model: TFLiteModel) -> LabelFilter:
    """`[labels]` checked against the card: a name the model does not have is a user error."""
    try:
        return LabelFilter.from_config({"allow": list(cfg.labels.allow),
                                        "deny": list(cfg.labels.deny)}, model.card.labels)
    except UserError as err:  # where the lists came from, as config errors say
        raise UserError(f"{cfg.source}: {err}") from None


def active_schedule(cfg: RuntimeConfig) -> Schedule | None:
    """The schedule this run follows, or None (always listening). It governs the microphone;
    a file or stdin is read from start to end unless schedule.replay asks otherwise (a
    recording replayed is not a recorder that needs sleep)."""
    if not cfg.schedule.windows:
        return None
    if cfg.audio.input != "mic" and not cfg.schedule.replay:
        return None
    return make_schedule(cfg)


def source_opener(cfg: RuntimeConfig, model_rate: int) -> Callable[[], Source]:
    """How each listening period gets its input: the microphone is opened anew (and closed
    at the period's end: nothing holds it between windows); a file or stdin is opened once,
    here, so a bad path is an error at start-up, and each period reads it again (a file from
    its start, stdin on from where the last period stopped)."""
    if cfg.audio.input == "mic":
        return lambda: make_source(cfg, model_rate)
    source = make_source(cfg, model_rate)
    return lambda: source


def run(cfg: RuntimeConfig, report: dict[str, Any] | None = None, *,
        clock: Clock | None = None, open_source: Callable[[], Source] | None = None) -> int:
    """Run until the input ends or SIGTERM/SIGINT; `report` (if given) receives the final
    statistics (the benchmark reads them). Tests inject `clock` (wall clock and sleep) and
    `open_source` (the input of each listening period, as `source_opener` makes it)."""
    clock = clock or SystemClock()
    model = load_model(cfg)
    card = model.card
    geometry = model_geometry(card, cfg.model.hop_s, cfg.model.lookahead_s)
    decoder = decoder_config(cfg, model)
    labels = label_filter(cfg, model)
    schedule = active_schedule(cfg)
    if cfg.schedule.windows and schedule is None:
        log.info("schedule: not applied to a file or stdin input (schedule.replay = true "
                 "applies it); reading it from start to end")
    start_time = parse_start_time(cfg.audio.start_time, cfg.audio.input)
    open_source = open_source or source_opener(cfg, card.sample_rate)
    # A microphone or a live pipe should never end: if it does, or stalls, exit non-zero
    # so that systemd restarts the recorder. A file (even paced in real time) just ends.
    # Opened now: a file or stdin (once for the run), and the microphone of an unscheduled
    # run (a missing device is an error before connecting). A scheduled microphone is opened
    # by each window, never while the recorder sleeps.
    first = None if schedule is not None and cfg.audio.input == "mic" else open_source()
    endless = cfg.audio.input == "mic" or (isinstance(first, StdinSource) and first.live)
    log.info("model: %s", model.describe())
    if suppressed_text(cfg, model):
        log.info("not emitted, the card marks them undetectable (--emit-undetectable emits "
                 "them): %s", suppressed_text(cfg, model))
    if labels.filters:
        log.info("labels: reported at this site: %s; suppressed ([labels]): %s",
                 ", ".join(labels.kept), ", ".join(labels.describe()["suppressed"]))
    if schedule is not None:
        log.info("schedule: windows %s (%s); %s", ", ".join(w.spec for w in schedule.windows),
                 schedule.tz, schedule.describe(clock.now())["state"])
    sinks = make_sinks(cfg, model, labels.keep if labels.filters else None)
    started = time.time()
    stop = threading.Event()
    watchdog = Watchdog.from_env(live=endless, stall_s=cfg.audio.stall_s,
                                 health_file=cfg.log.health_file, stats=lambda: stats())
    pending = [first] if first is not None else []
    recorder = Recorder(cfg, model, decoder, geometry, sinks, watchdog,
                        lambda: pending.pop() if pending else open_source(), clock, stop,
                        start_time, schedule)

    def stats() -> dict[str, Any]:
        out = {"uptime_s": round(time.time() - started, 1), **recorder.pipeline_stats(),
               **watchdog.stats(),
               "invoke_s": round(model.invoke_s, 4), "frontend_s": round(model.frontend_s, 4),
               "cpu_temp_c": cpu_temperature(),
               "model": {"name": card.name, "version": card.version, "sha256": card.sha256}}
        if schedule is not None:
            out["schedule"] = schedule.describe(clock.now())
        if labels.filters:
            out["labels"] = {**labels.describe(), "suppressed_detections": sinks.suppressed}
        return out

    recorder.status_fn = stats

    def on_signal(signum, frame) -> None:
        log.info("received %s: finishing what was captured, then draining the outbox",
                 signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        t0 = time.perf_counter()
        try:
            if schedule is None:
                recorder.listen(None)
            else:
                run_scheduled(schedule, clock.now, recorder.sleep, recorder.listen)
        except BaseException:  # a microphone that fails to open at a window: keep the outbox
            sinks.close(0.0)
            raise
        pipeline_s = time.perf_counter() - t0
        final = stats()
        sinks.status(final)
        remaining = sinks.close(cfg.outbox.drain_timeout_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("done: %.1f s of audio, %d detection(s), real-time factor %s, %.1f s of audio "
             "dropped, %d unsent in the outbox", final["audio_s"], final["detections"],
             final["real_time_factor"], final["dropped_audio_s"], remaining)
    if report is not None:
        report.update(final, pipeline_s=pipeline_s, invoke_s=model.invoke_s,
                      frontend_s=model.frontend_s,
                      invokes=model.invokes, unsent=remaining)
    if recorder.error is not None:
        if isinstance(recorder.error, (UserError, BrokenPipeError)):  # `| head`: quiet
            raise recorder.error
        log.error("runtime failed", exc_info=recorder.error)
    return watchdog.finish(signalled=stop.is_set(), failed=recorder.error is not None)


# ------------------------------------------------------------------------- --check
def schedule_text(cfg: RuntimeConfig, now: datetime) -> str:
    """The schedule as `--check` reports it: windows, state now, today's windows."""
    if not cfg.schedule.windows:
        return "none: listening all the time"
    d = make_schedule(cfg).describe(now)  # valid: load_config checked it
    today = ", ".join(f"{a[11:16]}-{b[11:16]}" for a, b in d["today"]) or "none"
    text = f"{', '.join(d['windows'])} ({d['timezone']}): {d['state']}; today {today}"
    if active_schedule(cfg) is None:
        text += "; not applied to a file or stdin input (schedule.replay = true applies it)"
    return text


def run_check(cfg: RuntimeConfig) -> int:
    problems = 0

    def report(ok: bool, what: str, text: str) -> None:
        nonlocal problems
        problems += not ok
        print(f"[{'ok' if ok else 'FAIL'}] {what}: {text}")

    report(True, "config", f"{cfg.source} (device id {cfg.device_id!r})")
    model = None
    try:
        import numpy as np

        model = load_model(cfg)
        model_geometry(model.card, cfg.model.hop_s, cfg.model.lookahead_s)
        decoder_config(cfg, model)
        t0 = time.perf_counter()
        probs = model.window_fn(np.zeros((1, model.card.window_samples), np.float32))
        ms = (time.perf_counter() - t0) * 1000
        report(True, "model", f"{model.describe()}; one window ran in {ms:.1f} ms -> "
                              f"{tuple(probs.shape)} probabilities")
        off = suppressed_text(cfg, model)
        report(True, "labels", f"not emitted (undetectable; --emit-undetectable emits them): "
                               f"{off}" if off else "every label is emitted")
    except UserError as err:
        report(False, "model", str(err))
    if model is not None:
        try:
            kept = label_filter(cfg, model)
            off = kept.describe()["suppressed"]
            report(True, "label lists", f"reported: {', '.join(kept.kept)}; suppressed by "
                                        f"[labels]: {', '.join(off)}" if off
                   else "[labels] suppresses none")
        except UserError as err:
            report(False, "label lists", str(err))
    report(True, "schedule", schedule_text(cfg, datetime.now(timezone.utc)))
    try:
        a = cfg.audio
        if a.input == "mic":
            from edge_runtime.audio import import_pyaudio

            pa = import_pyaudio().PyAudio()
            try:
                devices = input_devices(pa)
            finally:
                pa.terminate()
            device = select_device(devices, a.mic_device)
            report(True, "audio", f"microphone {device.index}: {device.name} ({device.channels} "
                                  f"ch, default {device.default_rate} Hz)")
        else:
            source = make_source(cfg, model.card.sample_rate if model else 16000)
            if model is not None:
                Conformer(source.sample_rate, source.channels, model.card.sample_rate, a.channel,
                          a.resampler)
            parse_start_time(a.start_time, a.input)
            report(True, "audio", source.description)
    except UserError as err:
        report(False, "audio", str(err))
    if cfg.mqtt.enabled:
        try:
            from edge_runtime.outbox import Outbox

            outbox = Outbox(cfg.outbox.path, int(cfg.outbox.max_mb * 1024 * 1024))
            report(True, "outbox", f"{cfg.outbox.path}: {outbox.depth} detection(s) waiting, "
                                   f"{outbox.bytes_used / 1e6:.2f} of {cfg.outbox.max_mb:g} MB")
            outbox.close()
        except UserError as err:
            report(False, "outbox", str(err))
        try:
            from edge_runtime.publish import check_broker

            ok, text = check_broker(cfg.mqtt, cfg.device_id, read_password(cfg.mqtt))
            report(ok, "broker", text)
        except UserError as err:
            report(False, "broker", str(err))
    else:
        report(True, "broker", "mqtt.enabled = false: detections go to stdout")
    print(f"{problems} problem(s) found" if problems else "all checks passed")
    return 1 if problems else 0


def _list_devices() -> int:
    devices = list_devices()
    if not devices:
        print("no audio input devices found (PortAudio lists none; is a microphone connected? "
              "try `arecord -l`)", file=sys.stderr)
        return 1
    for d in devices:
        print(f"{d.index:3d}  {d.name}  ({d.channels} ch, default {d.default_rate} Hz)")
    return 0


@quiet_broken_pipe()  # `edge-runtime ... | head`: exit 141, no traceback
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.list_devices:
            return _list_devices()
        cfg = load_config(args.config, flag_overrides(args))
        setup_logging(cfg.log.level)
        if args.print_config:
            print(describe(cfg))
            return 0
        if args.check:
            return run_check(cfg)
        return run(cfg)
    except UserError as err:
        print(f"edge-runtime: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("edge-runtime: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
